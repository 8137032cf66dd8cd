"""SAE file formats: each test writes files in a tool's own layout by hand, loads them with
``load_sae`` and compares ``encode`` / reconstruction with a numpy transcription of that
tool's formula (never with saeserve code). Also: native write -> read round trips, hook
point handling, and the errors. Run: ``pytest tests/sae/test_formats.py -q``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saeserve.errors import InvalidArgument, NotFound
from saeserve.sae.base import Activation, InputNorm, Sae, SaeConfig
from saeserve.sae.formats import load_sae, write_sae

D_IN, D_SAE, K = 16, 64, 8
ATOL = RTOL = 1e-5


# --- independent numpy references ----------------------------------------------------------
def np_topk_relu(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries of each row, ReLU'd; zeros elsewhere."""
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0.0), -1)
    return out


def np_layernorm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenAI sparse_autoencoder LN: (x - mean) / (std + 1e-5), std with Bessel's correction."""
    mu = x.mean(-1, keepdims=True)
    std = (x - mu).std(-1, ddof=1, keepdims=True)
    return (x - mu) / (std + 1e-5), mu, std


def rand(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def inputs(seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    x = (rand(np.random.default_rng(seed), 2, 3, D_IN, scale=2.0) + 0.5).astype(np.float32)
    return x.astype(np.float64), torch.from_numpy(x)


def check(sae: Sae, x: torch.Tensor, latents: np.ndarray, recon: np.ndarray) -> None:
    with torch.no_grad():
        np.testing.assert_allclose(sae.encode(x).numpy(), latents, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(sae(x).numpy(), recon, rtol=RTOL, atol=ATOL)
    assert np.count_nonzero(latents) > 0  # the comparison is not vacuous


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


# --- SAELens -------------------------------------------------------------------------
def saelens_weights(rng: np.random.Generator, *, threshold: bool = False) -> dict[str, np.ndarray]:
    w = {
        "W_enc": rand(rng, D_IN, D_SAE),
        "b_enc": rand(rng, D_SAE, scale=0.1),
        "W_dec": rand(rng, D_SAE, D_IN),
        "b_dec": rand(rng, D_IN),
    }
    if threshold:
        w["threshold"] = np.abs(rand(rng, D_SAE))
    return w


def write_saelens_folder(folder: Path, cfg: dict[str, Any], weights: dict[str, np.ndarray]) -> Path:
    write_json(folder / "cfg.json", cfg)
    save_file(to_torch(weights), str(folder / "sae_weights.safetensors"))
    return folder


def saelens_v6_cfg(architecture: str, **extra: Any) -> dict[str, Any]:
    """cfg.json as SAELens 6 ``save_model`` writes it (metadata nested)."""
    return {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gpt2",
            "hook_name": "blocks.6.hook_resid_post",
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": 128,
            "sae_lens_version": "6.5.1",
            "sae_lens_training_version": "6.5.1",
        },
        "architecture": architecture,
        **extra,
    }


def test_saelens_v6_topk(tmp_path: Path) -> None:
    w = saelens_weights(np.random.default_rng(1))
    folder = write_saelens_folder(
        tmp_path / "blocks.6.hook_resid_post", saelens_v6_cfg("topk", k=K), w
    )
    sae = load_sae(folder)
    xn, x = inputs()
    a = np_topk_relu((xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    check(sae, x, a, a @ w["W_dec"] + w["b_dec"])
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.model) == (Activation.TOPK, K, "gpt2")
    assert sae.cfg.id == "blocks.6.hook_resid_post"


def test_saelens_pre6_topk_keeps_hook_name(tmp_path: Path) -> None:
    """SAELens < 6 wrote flat keys; TopK as architecture standard + activation_fn_str topk."""
    w = saelens_weights(np.random.default_rng(2))
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "model_name": "gpt2-small",
        "hook_name": "blocks.8.hook_resid_pre",
        "hook_layer": 8,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "sae_lens_training_version": "3.13.0",
    }
    sae = load_sae(write_saelens_folder(tmp_path / "l8", cfg, w))
    assert sae.cfg.hook_point == "blocks.8.hook_resid_pre"
    assert (sae.cfg.activation, sae.cfg.k) == (Activation.TOPK, K)
    xn, x = inputs(1)
    a = np_topk_relu((xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    check(sae, x, a, a @ w["W_dec"] + w["b_dec"])


def test_saelens_jumprelu_log_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = saelens_weights(rng)
    threshold = np.abs(rand(rng, D_SAE, scale=0.2)) + 0.01
    w["log_threshold"] = np.log(threshold).astype(np.float32)
    folder = write_saelens_folder(tmp_path / "jr", saelens_v6_cfg("jumprelu"), w)
    sae = load_sae(folder)
    xn, x = inputs(2)
    pre = (xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    a = np.maximum(pre, 0) * (pre > np.exp(w["log_threshold"].astype(np.float64)))
    check(sae, x, a, a @ w["W_dec"] + w["b_dec"])


def test_saelens_topk_rescale_acts_by_decoder_norm(tmp_path: Path) -> None:
    """SAELens 6's TopK training default: encode ranks and returns pre * |W_dec[i]|, decode
    divides the latents by |W_dec[i]| again (sae_lens 6.54.12 saes/topk_sae.py, TopKSAE
    encode/decode and act_times_W_dec)."""
    rng = np.random.default_rng(18)
    w = saelens_weights(rng)
    w["W_dec"] *= np.exp(rng.uniform(-1.5, 1.5, (D_SAE, 1))).astype(np.float32)
    w["W_dec"][5] = 0  # a dead row: SAELens encodes its latent as 0 (its decode divides by 0)
    cfg = saelens_v6_cfg("topk", k=K, rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens_folder(tmp_path / "rescaled", cfg, w))

    xn, x = inputs(9)
    pre = (xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    norms = np.linalg.norm(w["W_dec"].astype(np.float64), axis=-1)
    a = np_topk_relu(pre * norms, K)
    recon = (a / np.where(norms > 0, norms, 1)) @ w["W_dec"] + w["b_dec"]
    check(sae, x, a, recon)
    assert not np.array_equal(a != 0, np_topk_relu(pre, K) != 0)  # the rescale matters here
    row_norms = sae.W_dec.detach().norm(dim=-1).numpy()
    np.testing.assert_allclose(row_norms[norms > 0], 1, rtol=1e-6)
    assert row_norms[5] == 0


def test_saelens_rescale_in_metadata_of_jumprelu_is_ignored(tmp_path: Path) -> None:
    """A BatchTopK SAE is saved as JumpReLU with its training details in metadata; SAELens
    folds the decoder norms before saving it and its JumpReLU config has no such field."""
    w = saelens_weights(np.random.default_rng(19), threshold=True)
    cfg = saelens_v6_cfg("jumprelu")
    cfg["metadata"]["training_architecture_details"] = {"rescale_acts_by_decoder_norm": True}
    cfg["metadata"]["rescale_acts_by_decoder_norm"] = True
    sae = load_sae(write_saelens_folder(tmp_path / "batchtopk", cfg, w))
    xn, x = inputs(10)
    pre = (xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    a = np.maximum(pre, 0) * (pre > w["threshold"])
    check(sae, x, a, a @ w["W_dec"] + w["b_dec"])


def test_saelens_relu_layer_norm(tmp_path: Path) -> None:
    w = saelens_weights(np.random.default_rng(4))
    cfg = saelens_v6_cfg("standard", normalize_activations="layer_norm")
    sae = load_sae(write_saelens_folder(tmp_path / "ln", cfg, w))
    xn, x = inputs(3)
    x_ln, mu, std = np_layernorm(xn)
    a = np.maximum((x_ln - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    check(sae, x, a, (a @ w["W_dec"] + w["b_dec"]) * std + mu)
    assert sae.cfg.input_norm is InputNorm.LAYERNORM


def test_saelens_expected_average_scaling(tmp_path: Path) -> None:
    w = saelens_weights(np.random.default_rng(5))
    s = 0.625
    cfg = saelens_v6_cfg(
        "standard", normalize_activations="expected_average_only_in", norm_scaling_factor=s
    )
    sae = load_sae(write_saelens_folder(tmp_path / "scaled", cfg, w))
    xn, x = inputs(4)
    a = np.maximum((xn * s - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    check(sae, x, a, (a @ w["W_dec"] + w["b_dec"]) / s)


# --- EleutherAI sparsify -------------------------------------------------------------------
def write_sparsify_folder(
    folder: Path, rng: np.random.Generator, **cfg: Any
) -> dict[str, np.ndarray]:
    w = {
        "encoder.weight": rand(rng, D_SAE, D_IN),
        "encoder.bias": rand(rng, D_SAE, scale=0.1),
        "W_dec": rand(rng, D_SAE, D_IN),
        "b_dec": rand(rng, D_IN),
    }
    cfg = {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
        **cfg,
    }
    write_json(folder / "cfg.json", cfg)
    save_file(to_torch(w), str(folder / "sae.safetensors"))
    return w


def test_sparsify_topk(tmp_path: Path) -> None:
    w = write_sparsify_folder(tmp_path / "layers.6", np.random.default_rng(6))
    sae = load_sae(tmp_path / "layers.6")
    xn, x = inputs(5)
    pre = np.maximum((xn - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"], 0)
    idx = np.argsort(-pre, axis=-1)[..., :K]
    vals = np.take_along_axis(pre, idx, -1)
    a = np.zeros_like(pre)
    np.put_along_axis(a, idx, vals, -1)
    recon = np.einsum("...k,...kd->...d", vals, w["W_dec"][idx]) + w["b_dec"]
    check(sae, x, a, recon)
    assert (sae.cfg.d_sae, sae.cfg.k, sae.cfg.hook_point) == (D_SAE, K, "resid_post.6")


@pytest.mark.parametrize(
    ("folder", "hook_point"),
    [("h.3", "resid_post.3"), ("model.layers.2", "resid_post.2"), ("layers.6.mlp", "layers.6.mlp")],
)
def test_sparsify_hookpoint_names(tmp_path: Path, folder: str, hook_point: str) -> None:
    write_sparsify_folder(tmp_path / folder, np.random.default_rng(7), num_latents=D_SAE)
    assert load_sae(tmp_path / folder).cfg.hook_point == hook_point


def test_sparsify_run_folder_needs_layer(tmp_path: Path) -> None:
    for name in ("layers.2", "layers.6"):
        write_sparsify_folder(tmp_path / "run" / name, np.random.default_rng(8))
    sae = load_sae(tmp_path / "run", layer=6)
    assert (sae.cfg.id, sae.cfg.hook_point) == ("layers.6", "resid_post.6")
    with pytest.raises(InvalidArgument, match=r"layers\.2, layers\.6"):
        load_sae(tmp_path / "run")


# --- OpenAI sparse_autoencoder ----------------------------------------------------------------
def openai_state_dict(rng: np.random.Generator, activation: str) -> OrderedDict[str, Any]:
    """What ``Autoencoder.state_dict()`` holds in openai/sparse_autoencoder."""
    sd: OrderedDict[str, Any] = OrderedDict(
        [
            ("pre_bias", torch.from_numpy(rand(rng, D_IN))),
            ("latent_bias", torch.from_numpy(rand(rng, D_SAE, scale=0.1))),
            ("stats_last_nonzero", torch.zeros(D_SAE, dtype=torch.long)),
            ("latents_activation_frequency", torch.ones(D_SAE)),
            ("latents_mean_square", torch.zeros(D_SAE)),
            ("encoder.weight", torch.from_numpy(rand(rng, D_SAE, D_IN))),
            ("decoder.weight", torch.from_numpy(rand(rng, D_IN, D_SAE))),
            ("activation", activation),
        ]
    )
    sd["activation_state_dict"] = {"k": K, "postact_fn": "ReLU"} if activation == "TopK" else {}
    return sd


def test_openai_topk_layernorm(tmp_path: Path) -> None:
    sd = openai_state_dict(np.random.default_rng(9), "TopK")
    file = tmp_path / "resid_post_mlp_v5_32k" / "autoencoders" / "6.pt"
    file.parent.mkdir(parents=True)
    torch.save(sd, file)
    sae = load_sae(file)

    enc, dec = sd["encoder.weight"].double().numpy(), sd["decoder.weight"].double().numpy()
    pre_bias, latent_bias = sd["pre_bias"].double().numpy(), sd["latent_bias"].double().numpy()
    xn, x = inputs(6)
    x_ln, mu, std = np_layernorm(xn)
    a = np_topk_relu((x_ln - pre_bias) @ enc.T + latent_bias, K)
    check(sae, x, a, (a @ dec.T + pre_bias) * std + mu)
    assert (sae.cfg.id, sae.cfg.hook_point, sae.cfg.k) == (
        "resid_post_mlp_v5_32k/6",
        "resid_post.6",
        K,
    )


def test_openai_relu_no_layernorm(tmp_path: Path) -> None:
    sd = openai_state_dict(np.random.default_rng(10), "ReLU")
    file = tmp_path / "resid_delta_mlp" / "autoencoders" / "3.pt"
    file.parent.mkdir(parents=True)
    torch.save(sd, file)
    sae = load_sae(file)

    enc, dec = sd["encoder.weight"].double().numpy(), sd["decoder.weight"].double().numpy()
    pre_bias, latent_bias = sd["pre_bias"].double().numpy(), sd["latent_bias"].double().numpy()
    xn, x = inputs(7)
    a = np.maximum((xn - pre_bias) @ enc.T + latent_bias, 0)
    check(sae, x, a, a @ dec.T + pre_bias)
    assert (sae.cfg.hook_point, sae.cfg.input_norm) == ("mlp_out.3", InputNorm.NONE)


UNPICKLED: list[str] = []


def _mark_unpickled() -> None:
    UNPICKLED.append("ran")


class Payload:
    """An object whose unpickling would run code (here: only append to a list)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_mark_unpickled, ())


def test_openai_refuses_pickled_objects(tmp_path: Path) -> None:
    sd = openai_state_dict(np.random.default_rng(11), "TopK")
    sd["extra"] = Payload()
    torch.save(sd, tmp_path / "0.pt")
    with pytest.raises(InvalidArgument, match="weights_only"):
        load_sae(tmp_path / "0.pt")
    assert UNPICKLED == []


# --- Gemma Scope --------------------------------------------------------------------------
def test_gemmascope_jumprelu(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    p = {
        "W_enc": rand(rng, D_IN, D_SAE),
        "W_dec": rand(rng, D_SAE, D_IN),
        "b_enc": rand(rng, D_SAE, scale=0.1),
        "b_dec": rand(rng, D_IN),
        "threshold": rand(rng, D_SAE, scale=0.2),  # some negative: ReLU still applies
    }
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(
        folder / "params.npz",
        W_enc=p["W_enc"],
        W_dec=p["W_dec"],
        b_enc=p["b_enc"],
        b_dec=p["b_dec"],
        threshold=p["threshold"],
    )
    sae = load_sae(folder)

    xn, x = inputs(8)
    pre = xn @ p["W_enc"] + p["b_enc"]  # no b_dec subtraction
    a = (pre > p["threshold"]) * np.maximum(pre, 0)
    check(sae, x, a, a @ p["W_dec"] + p["b_dec"])
    assert (sae.cfg.id, sae.cfg.hook_point) == ("layer_12/width_16k/average_l0_82", "resid_post.12")
    from_file = load_sae(folder / "params.npz", hook_point="blocks.12.hook_resid_post")
    assert from_file.cfg.hook_point == "blocks.12.hook_resid_post"
    assert from_file.cfg.id == sae.cfg.id


# --- native write -> read --------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("input_norm", list(InputNorm))
def test_native_round_trip(tmp_path: Path, activation: Activation, input_norm: InputNorm) -> None:
    cfg = SaeConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        activation=activation,
        k=K if activation is Activation.TOPK else None,
        hook_point="resid_post.3",
        model="tiny-gpt2",
        input_norm=input_norm,
        norm_scale=0.37 if input_norm is InputNorm.SCALE else 1.0,
        apply_b_dec_to_input=activation is not Activation.JUMPRELU,
        id="rt-sae",
        metadata={"tokens_seen": 12345, "trainer": {"lr": 1e-3}},
    )
    sae = Sae(cfg)
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if activation is not Activation.JUMPRELU:
            sae.threshold.zero_()

    folder = write_sae(sae, tmp_path / "rt-sae")
    back = load_sae(folder)
    written = json.loads((folder / "cfg.json").read_text())
    if input_norm is InputNorm.SCALE:  # folded into the weights: the same SAE on unscaled input
        assert back.cfg == dataclasses.replace(cfg, input_norm=InputNorm.NONE, norm_scale=1.0)
        assert written["saeserve"]["folded_norm_scale"] == cfg.norm_scale
        _, x = inputs(11)
        with torch.no_grad():
            # float32 rounding of the folded weights, on latents and outputs of size ~10
            torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(back(x), sae(x), rtol=1e-4, atol=1e-4)
    else:
        assert back.cfg == sae.cfg
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            assert torch.equal(getattr(back, name), getattr(sae, name)), name

    architecture = {"topk": "topk", "jumprelu": "jumprelu", "relu": "standard"}[activation]
    normalize = {"none": "none", "layernorm": "layer_norm", "scale": "none"}
    assert written["architecture"] == architecture
    assert written["hook_name"] == "blocks.3.hook_resid_post"
    assert written["normalize_activations"] == normalize[input_norm]
    assert "norm_scaling_factor" not in written
    assert written.get("k") == cfg.k
    assert written["d_in"] == D_IN and written["d_sae"] == D_SAE


def test_native_round_trip_keeps_bfloat16(tmp_path: Path) -> None:
    sae = Sae(SaeConfig(d_in=D_IN, d_sae=D_SAE, k=K, id="bf"), dtype=torch.bfloat16)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE))
    back = load_sae(write_sae(sae, tmp_path / "bf"))
    assert back.W_enc.dtype is torch.bfloat16 and torch.equal(back.W_enc, sae.W_enc)
    assert load_sae(tmp_path / "bf", dtype=torch.float32).W_enc.dtype is torch.float32


# --- errors --------------------------------------------------------------------------------
def test_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        load_sae(tmp_path / "nope")


def test_unknown_layout_names_expected_files(tmp_path: Path) -> None:
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(
        InvalidArgument, match=r"sae_weights\.safetensors.*params\.npz.*weights\.bin"
    ):
        load_sae(tmp_path / "weird")


def test_saelens_shape_mismatch_names_tensor(tmp_path: Path) -> None:
    w = saelens_weights(np.random.default_rng(14))
    w["W_dec"] = rand(np.random.default_rng(15), D_SAE, D_IN - 1)
    folder = write_saelens_folder(tmp_path / "bad", saelens_v6_cfg("topk", k=K), w)
    with pytest.raises(InvalidArgument, match=r"W_dec.*\[64, 15\].*\[64, 16\]"):
        load_sae(folder)


def test_sparsify_shape_mismatch_names_tensor(tmp_path: Path) -> None:
    write_sparsify_folder(tmp_path / "layers.1", np.random.default_rng(16), num_latents=2 * D_SAE)
    with pytest.raises(InvalidArgument, match=r"encoder\.weight.*\[16, 64\].*\[16, 128\]"):
        load_sae(tmp_path / "layers.1")


def test_saelens_gated_is_refused(tmp_path: Path) -> None:
    w = saelens_weights(np.random.default_rng(17))
    folder = write_saelens_folder(tmp_path / "gated", saelens_v6_cfg("gated"), w)
    with pytest.raises(InvalidArgument, match="architecture 'gated' is not supported"):
        load_sae(folder)
