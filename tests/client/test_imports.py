"""The client and its CLI import without torch or ray, checked in clean subprocesses.

The client must work with only grpcio, protobuf and numpy installed; importing torch or
ray (even indirectly, through ``saeserve``) would break that and slow every CLI call.
"""

from __future__ import annotations

import subprocess
import sys

from tests.client.fake_server import FakeServer

NO_HEAVY = "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_client_modules_import_without_torch_or_ray() -> None:
    done = python(
        "import sys; import saeserve_client, saeserve_client.cli, saeserve_client.aio; "
        "import saeserve_client.render, saeserve_client.convert; " + NO_HEAVY
    )
    assert done.returncode == 0, done.stderr


def test_client_subcommand_through_saeserve_cli_stays_light(server: FakeServer) -> None:
    done = python(
        "import sys; from saeserve.cli import main; "
        f"rc = main(['search', 'cat', '--target', '{server.address}']); "
        "assert rc == 0, rc; " + NO_HEAVY
    )
    assert done.returncode == 0, done.stderr
    assert "resid_post.0/7" in done.stdout
