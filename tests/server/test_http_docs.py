"""Every runnable example in docs/http.md, run against the live server.

```bash`` blocks run in bash with ``SAESERVE_URL`` and ``SAESERVE_KEY`` set (their curl
calls use ``--fail-with-body``, so an HTTP error fails the block); ``python`` blocks run
in this interpreter. ``sh`` and ``text`` blocks are illustrations, not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KEY, Server

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [(lang, code) for lang, code in BLOCK.findall(DOC.read_text())]


def test_the_doc_has_examples_of_every_endpoint() -> None:
    text = "\n".join(code for _, code in EXAMPLES)
    endpoints = ("models", "completions", "tokenize", "decompose", "generate", "features")
    for path in (*endpoints, "inspect", "contrast", "attribute", "attribute/feature"):
        assert f"/v1/{path}" in text or f'"/v1/{path}' in text, path
    assert any(lang == "python" and "openai" in code for lang, code in EXAMPLES)


@pytest.mark.parametrize(
    ("lang", "code"), EXAMPLES, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(EXAMPLES)]
)
def test_example_runs(server: Server, lang: str, code: str) -> None:
    env = {**os.environ, "SAESERVE_URL": server.http_url, "SAESERVE_KEY": KEY}
    command = (
        ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    )
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.strip()
