"""The committed protobuf code in service/saeserve/v1 is exactly what protos/ generates.

Regenerates with protos/generate.py into a temporary directory and compares byte for
byte, so editing a .proto without running ``python protos/generate.py`` (or editing the
generated code by hand) fails here. Also checks that the generated modules import as a
package and expose the service the design names.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "service" / "saeserve" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _load_generate_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "protos_generate", REPO / "protos" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    _load_generate_script().generate(out)
    return out / "saeserve" / "v1"


def test_generates_something(fresh: Path) -> None:
    assert {"saeserve_pb2.py", "saeserve_pb2.pyi", "saeserve_pb2_grpc.py"} <= _generated_names(
        fresh
    )


def test_same_set_of_files(fresh: Path) -> None:
    assert _generated_names(COMMITTED) == _generated_names(fresh), (
        "generated files differ from the committed ones; run `python protos/generate.py`"
    )


@pytest.mark.parametrize("name", sorted(_generated_names(COMMITTED)))
def test_committed_file_is_fresh(fresh: Path, name: str) -> None:
    committed = (COMMITTED / name).read_bytes()
    regenerated = (fresh / name).read_bytes() if (fresh / name).exists() else b""
    assert committed == regenerated, f"{name} is stale; run `python protos/generate.py`"


def test_imports_as_package_with_the_service() -> None:
    from saeserve.v1 import saeserve_pb2, saeserve_pb2_grpc

    service = saeserve_pb2.DESCRIPTOR.services_by_name["Saeserve"]
    assert service.full_name == "saeserve.v1.Saeserve"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {
        "ListModels",
        "Tokenize",
        "Decompose",
        "Generate",
        "GetFeature",
        "SearchFeatures",
        "Attribute",
        "AttributeFeature",
        "InspectFeatures",
        "ContrastFeatures",
    }
    assert methods["Generate"].server_streaming
    assert not any(m.server_streaming for name, m in methods.items() if name != "Generate")
    assert callable(saeserve_pb2_grpc.add_SaeserveServicer_to_server)
