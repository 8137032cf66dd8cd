"""Generate the Python gRPC code for the saeserve API from protos/saeserve/v1/*.proto.

Run from anywhere: ``python protos/generate.py`` writes ``*_pb2.py``, ``*_pb2.pyi`` and
``*_pb2_grpc.py`` into ``service/saeserve/v1/``; ``--out DIR`` writes under ``DIR``
instead (``DIR/saeserve/v1/``), which tests/protos/test_generated_fresh.py uses to check
that the committed code is current. The protos are compiled with ``protos/`` as the
import root, so the generated modules import each other as ``saeserve.v1.*`` and the
gRPC module imports as ``from saeserve.v1 import saeserve_pb2_grpc`` with no rewriting.
Needs grpcio-tools (the ``dev`` extra); its version pins the generated code.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "service"
PACKAGE_DIR = Path("saeserve") / "v1"


def proto_files() -> list[Path]:
    """The .proto files of the API, relative to the import root, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Compile every API proto into ``out/saeserve/v1``; return the files written."""
    from grpc_tools import protoc  # dev-only dependency, imported on use

    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    files = [str(p) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    written = []
    for proto in proto_files():
        stem = proto.with_suffix("").name
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(out / PACKAGE_DIR / f"{stem}{suffix}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="root to write saeserve/v1/ under (default: service/)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
