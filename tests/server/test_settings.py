"""ServerSettings: defaults, YAML < env < overrides layering, validation, secrets, docs.

Also checks that every "limits.NAME (default N)" the proto documents matches ``Limits``,
so the API contract and the server cannot drift apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from saeserve.server.settings import (
    DEMO_DATA,
    Limits,
    ModelSpec,
    SaeSharding,
    SaeSpec,
    ServerSettings,
    overrides_from_assignments,
)

PROTO = Path(__file__).resolve().parents[2] / "protos" / "saeserve" / "v1" / "saeserve.proto"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAESERVE_"):
            monkeypatch.delenv(name)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_serve_the_demo() -> None:
    s = ServerSettings.load()
    assert s.grpc_port == 9000
    assert s.host == "127.0.0.1"  # loopback unless a config opts in to every interface
    assert [m.name for m in s.models] == ["demo"]
    assert s.models[0].path == DEMO_DATA / "model"
    assert s.api_keys == [] and s.api_keys_file is None
    assert s.limits == Limits()


def test_demo_saes_are_every_folder_under_saes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import saeserve.server.settings as settings

    (tmp_path / "saes" / "b").mkdir(parents=True)
    (tmp_path / "saes" / "a").mkdir()
    (tmp_path / "saes" / "notes.txt").write_text("not an SAE")
    monkeypatch.setattr(settings, "DEMO_DATA", tmp_path)
    (model,) = settings.demo_models()
    assert [s.effective_id for s in model.saes] == ["a", "b"]


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(
        tmp_path / "serve.yaml",
        """
models:
  - name: gpt2
    path: /models/gpt2
    dtype: float32
    saes:
      - {path: /saes/openai/resid_post_mlp_6.pt, id: l6}
      - {path: /saes/res-jb/blocks.8.hook_resid_pre, hook_point: resid_pre.8}
grpc_port: 9100
num_gpus: 0.5
limits: {max_top_k: 32, max_batch_size: 4}
""",
    )
    monkeypatch.setenv("SAESERVE_GRPC_PORT", "9200")
    monkeypatch.setenv("SAESERVE_LIMITS__MAX_BATCH_SIZE", "8")
    s = ServerSettings.load(config, limits={"max_new_tokens": 7})
    assert s.grpc_port == 9200  # env beats file
    assert s.num_gpus == 0.5  # file beats default; fractional GPUs allowed
    assert s.limits.max_top_k == 32  # from the file
    assert s.limits.max_batch_size == 8  # env beats file
    assert s.limits.max_new_tokens == 7  # override beats all, merged not replaced
    assert s.limits.max_texts_per_request == Limits().max_texts_per_request
    (model,) = s.models
    assert model.dtype == "float32"
    assert [sae.effective_id for sae in model.saes] == ["l6", "blocks.8.hook_resid_pre"]
    assert model.saes[1].hook_point == "resid_pre.8"


def test_default_sae_ids_of_published_layouts_do_not_collide() -> None:
    """Gemma Scope folders all end in average_l0_N; OpenAI files are all <layer>.pt."""
    gemma = "/saes/gemma-scope-2b-pt-res/layer_{}/width_16k/average_l0_82"
    openai = "/saes/gpt2-small/resid_post_mlp_v5_{}/autoencoders/8.pt"
    paths = [gemma.format(12), gemma.format(20) + "/params.npz", openai.format("32k")]
    model = ModelSpec(name="m", path=Path("/m"), saes=[SaeSpec(path=Path(p)) for p in paths])
    assert [s.effective_id for s in model.saes] == [
        "layer_12/width_16k/average_l0_82",
        "layer_20/width_16k/average_l0_82",
        "resid_post_mlp_v5_32k/8",
    ]


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(tmp_path / "c.yaml", "replicas: 3\n")
    monkeypatch.setenv("SAESERVE_CONFIG", str(config))
    assert ServerSettings.load().replicas == 3
    assert ServerSettings().replicas == 1  # the file applies through load() only


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        ServerSettings.load(tmp_path / "nope.yaml")


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.yaml", "limits: {max_top_kk: 3}\n")
    with pytest.raises(ValidationError, match="max_top_kk"):
        ServerSettings.load(config)


def test_api_keys_from_env_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAESERVE_API_KEYS", " k-one , k-two,,")
    s = ServerSettings.load()
    assert s.api_key_values() == ["k-one", "k-two"]


def test_api_keys_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAESERVE_API_KEYS", "sekrit-123")
    s = ServerSettings.load()
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "sekrit-123" not in text


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_gpus": -1},
        {"replicas": 0},
        {"grpc_port": 70000},
        {"grpc_port": 8000},  # same as http_port
        {"models": []},
        {"limits": {"max_top_k": 0}},
        {"limits": {"batch_wait_timeout_s": -0.1}},
        {"models": [{"name": "a", "path": "/m"}, {"name": "a", "path": "/n"}]},
        {"models": [{"name": "a", "path": "/m", "device": "gpu0"}]},
        {"models": [{"name": "a b", "path": "/m"}]},
        {"models": [{"name": "a", "path": "/m", "saes": [{"path": "/s/x"}, {"path": "/t/x"}]}]},
    ],
)
def test_invalid_settings_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServerSettings.load(**overrides)


def test_overrides_from_assignments() -> None:
    got = overrides_from_assignments(["limits.max_top_k=8", "num_gpus=0.25", "host=0.0.0.0"])
    assert got == {"limits": {"max_top_k": 8}, "num_gpus": 0.25, "host": "0.0.0.0"}
    s = ServerSettings.load(**got)
    assert (s.limits.max_top_k, s.num_gpus, s.host) == (8, 0.25, "0.0.0.0")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        overrides_from_assignments(["limits.max_top_k"])


@pytest.mark.parametrize("model", [ServerSettings, Limits, ModelSpec, SaeSpec, SaeSharding])
def test_every_field_documented(model: type[BaseModel]) -> None:
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert not missing


def test_proto_documents_the_limit_defaults() -> None:
    text = " ".join(
        line.strip().removeprefix("//").strip() for line in PROTO.read_text().splitlines()
    )
    documented = re.findall(r"limits\.(\w+) \(default ([\d.]+)\)", text)
    assert len(documented) >= 10
    defaults = Limits()
    for name, value in documented:
        assert name in Limits.model_fields, f"proto names unknown limit {name}"
        assert float(getattr(defaults, name)) == float(value), name


def test_sharding_takes_a_count_or_ranges_that_tile_from_zero() -> None:
    assert SaeSharding(shards=3).count == 3
    assert SaeSharding(ranges=[(0, 10), (10, 25)]).count == 2
    for bad, named in (
        ({}, "exactly one"),
        ({"shards": 2, "ranges": [(0, 10)]}, "exactly one"),
        ({"ranges": [(1, 10)]}, r"ranges\[0\]"),
        ({"ranges": [(0, 10), (12, 20)]}, r"ranges\[1\]"),
        ({"ranges": [(0, 10), (10, 10)]}, r"ranges\[1\]"),
    ):
        with pytest.raises(ValueError, match=named):
            SaeSharding(**bad)
    spec = SaeSpec(path=Path("/s"), sharding={"shards": 2, "num_gpus": 1})  # type: ignore[arg-type]
    assert spec.sharding is not None and spec.sharding.num_gpus == 1
