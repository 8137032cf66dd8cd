"""Decomposition: a batch of texts through the model and its SAEs in one forward pass.

The forward stops right after the deepest hooked point (no later blocks, no unembedding).
Texts are right-padded, so every real token sees only real tokens before it and padding
cannot change a result. Per SAE the work stays on the device: top-k per token, the
requested features densely, and the reconstruction error; only those small arrays are
copied to the host, never the [tokens x d_sae] latents.

    result = decompose(served, DecomposeRequest(texts=["Hello world"], top_k=8))
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeserve.engine.padding import pad_token_ids
from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.tokenize import tokenize
from saeserve.engine.types import (
    DecomposeRequest,
    DecomposeResult,
    SaeDecomposition,
    TextDecomposition,
    Tokenization,
)
from saeserve.errors import InvalidArgument
from saeserve.model.hookpoints import HookPoint, forward_until
from saeserve.sae.base import Sae


@dataclass
class _SaeOutput:
    top_ids: Tensor  # [T, top_k] int32, -1 where the slot holds no active feature
    top_values: Tensor  # [T, top_k]
    dense: Tensor  # [T, F]
    sq_err: Tensor | None  # [T] |x - x_hat|^2


def validate_decompose(served: ServedModel, req: DecomposeRequest) -> list[HookedSae]:
    """Check the request's fields against the model and SAEs; returns the SAEs to run."""
    if not req.texts:
        raise InvalidArgument("texts: at least one text is required")
    saes = served.select(req.sae_ids)
    if not saes:
        raise InvalidArgument(f"saes: model {served.name!r} has no SAEs loaded")
    min_d_sae = min(h.sae.d_sae for h in saes)
    if not 1 <= req.top_k <= min_d_sae:
        raise InvalidArgument(f"top_k: {req.top_k} must be in [1, {min_d_sae}] (the SAEs' d_sae)")
    for i, f in enumerate(req.feature_ids):
        if not 0 <= f < min_d_sae:
            raise InvalidArgument(f"feature_ids[{i}]: {f} must be in [0, {min_d_sae}) (d_sae)")
    return saes


def decompose(
    served: ServedModel, req: DecomposeRequest, *, max_tokens: int | None = None
) -> DecomposeResult:
    """Run the request's texts through the model and SAEs; see the module docstring."""
    return decompose_many(served, [req], max_tokens=max_tokens)[0]


def decompose_many(
    served: ServedModel,
    reqs: list[DecomposeRequest],
    *,
    max_tokens: int | None = None,
    max_dense_values: int | None = None,
) -> list[DecomposeResult]:
    """Several requests in one forward pass (dynamic batching); each gets exactly its own answer.

    The pass runs the union of the requests' SAEs with the largest top_k and the union of
    feature ids; each answer is then cut to its request's SAEs, top_k and features (top-k
    columns are sorted, so the first top_k columns of a larger top-k are exact).
    """
    lm = served.lm
    limit = min(max_tokens or lm.max_positions, lm.max_positions)
    sae_sets = [validate_decompose(served, r) for r in reqs]
    toks = [
        tokenize(lm.tokenizer, t, max_tokens=limit, field_name=f"texts[{i}]")
        for r in reqs
        for i, t in enumerate(r.texts)
    ]
    if max_dense_values is not None:
        _check_dense_budget(reqs, sae_sets, toks, max_dense_values)
    saes = list({h.id: h for hs in sae_sets for h in hs}.values())
    feature_ids = sorted({f for r in reqs for f in r.feature_ids})
    top_k = max(r.top_k for r in reqs)
    with_error = any(r.include_reconstruction for r in reqs)
    per_text, sae_seconds = _run_texts(served, toks, saes, top_k, feature_ids, with_error)

    results, offset = [], 0
    total_tokens = sum(len(t.token_ids) for t in toks)
    for r, hs in zip(reqs, sae_sets, strict=True):
        cols = [feature_ids.index(f) for f in r.feature_ids]
        texts = [
            TextDecomposition(toks[j], [_cut(per_text[j][h.id], r, cols) for h in hs])
            for j in range(offset, offset + len(r.texts))
        ]
        offset += len(r.texts)
        n = sum(len(t.tokenization.token_ids) for t in texts)
        results.append(DecomposeResult(texts, n, sae_seconds * n / total_tokens))
    return results


def _check_dense_budget(
    reqs: list[DecomposeRequest],
    sae_sets: list[list[HookedSae]],
    toks: list[Tokenization],
    limit: int,
) -> None:
    offset = 0
    for r, hs in zip(reqs, sae_sets, strict=True):
        n_tokens = sum(len(t.token_ids) for t in toks[offset : offset + len(r.texts)])
        offset += len(r.texts)
        n = n_tokens * len(r.feature_ids) * len(hs)
        if n > limit:
            raise InvalidArgument(
                f"feature_ids: tokens x feature_ids x SAEs = {n_tokens} x {len(r.feature_ids)} x {len(hs)}"
                f" = {n} > limit {limit} dense values"
            )


def _cut(d: SaeDecomposition, r: DecomposeRequest, cols: list[int]) -> SaeDecomposition:
    with_error = r.include_reconstruction
    return SaeDecomposition(
        sae_id=d.sae_id,
        hook_point=d.hook_point,
        top_ids=d.top_ids[:, : r.top_k],
        top_values=d.top_values[:, : r.top_k],
        dense_values=d.dense_values[:, cols],
        token_mse=d.token_mse if with_error else None,
        explained_variance=d.explained_variance if with_error else None,
    )


def forward_saes(
    served: ServedModel,
    token_ids: Sequence[Sequence[int]],
    saes: list[HookedSae],
    read: Callable[[list[HookedSae], Tensor], None],
) -> None:
    """One forward of the texts, right-padded, up to the deepest of the SAEs' hook points;
    at each of their hook points ``read(the SAEs there, x)``, x [T, d] the activations of
    the real tokens, text-major (decomposition, aggregated inspection and contrast)."""
    lm = served.lm
    input_ids, mask = pad_token_ids(token_ids, pad_id=lm.pad_token_id, device=lm.device)
    real = mask.bool()  # [B, N]
    by_point: dict[HookPoint, list[HookedSae]] = defaultdict(list)
    for h in saes:
        by_point[h.hook_point].append(h)

    def capture(hooked: list[HookedSae]) -> Callable[[Tensor], None]:
        return lambda act: read(hooked, act[real])

    fns = {point: capture(hooked) for point, hooked in by_point.items()}
    deepest = max(by_point, key=lambda p: p.depth)
    with torch.inference_mode():
        forward_until(lm, fns, stop_after=deepest, input_ids=input_ids, attention_mask=mask)


def _run_texts(
    served: ServedModel,
    toks: list[Tokenization],
    saes: list[HookedSae],
    top_k: int,
    feature_list: list[int],
    with_error: bool,
) -> tuple[list[dict[str, SaeDecomposition]], float]:
    device = served.lm.device
    outputs: dict[str, _SaeOutput] = {}
    variances: dict[HookPoint, Tensor] = {}
    lengths = [len(t.token_ids) for t in toks]
    text_of_token = torch.repeat_interleave(
        torch.arange(len(toks), device=device), torch.tensor(lengths, device=device)
    )
    sae_seconds = 0.0
    feature_ids = torch.tensor(feature_list, dtype=torch.long, device=device)

    def read(hooked: list[HookedSae], x: Tensor) -> None:
        nonlocal sae_seconds
        start = time.perf_counter()
        if with_error:
            variances[hooked[0].hook_point] = _text_variance(x, text_of_token, len(toks))
        for h in hooked:
            outputs[h.id] = _run_sae(h.sae, x, top_k, feature_ids, with_error)
        sae_seconds += time.perf_counter() - start

    forward_saes(served, [t.token_ids for t in toks], saes, read)
    with torch.inference_mode():
        return _split_by_text(saes, outputs, lengths, variances), sae_seconds


def _run_sae(sae: Sae, x: Tensor, top_k: int, feature_ids: Tensor, with_error: bool) -> _SaeOutput:
    enc = sae.encode_sparse(x, k=top_k, features=feature_ids, reconstruct=with_error)
    top_values, top_ids = enc.values, enc.indices  # [T, <= top_k], strongest first
    if top_values.shape[-1] < top_k:  # a TopK SAE's k < top_k: every other latent is 0
        top_values = F.pad(top_values, (0, top_k - top_values.shape[-1]))
        top_ids = F.pad(top_ids, (0, top_k - top_ids.shape[-1]), value=-1)
    sq_err = None
    if enc.reconstruction is not None:
        sq_err = (x.to(enc.reconstruction.dtype) - enc.reconstruction).float().pow(2).sum(dim=-1)
    top_ids = torch.where(top_values > 0, top_ids, torch.full_like(top_ids, -1)).to(torch.int32)
    assert enc.features is not None
    return _SaeOutput(top_ids, top_values, enc.features, sq_err)


def _split_by_text(
    saes: list[HookedSae],
    outputs: dict[str, _SaeOutput],
    lengths: list[int],
    variances: dict[HookPoint, Tensor],
) -> list[dict[str, SaeDecomposition]]:
    """One host copy per SAE of the small per-token arrays, cut into texts."""
    host = {
        sid: (
            o.top_ids.cpu().numpy(),
            o.top_values.float().cpu().numpy(),
            o.dense.float().cpu().numpy(),
        )
        for sid, o in outputs.items()
    }
    point_of = {h.id: h.hook_point for h in saes}
    errors = {
        sid: (o.sq_err / variances[point_of[sid]]).float().cpu().numpy()
        for sid, o in outputs.items()
        if o.sq_err is not None
    }
    bounds = np.cumsum([0, *lengths])
    result = []
    for i in range(len(lengths)):
        lo, hi = bounds[i], bounds[i + 1]
        per_sae = {}
        for h in saes:
            ids, vals, dense = host[h.id]
            mse = errors[h.id][lo:hi] if h.id in errors else None
            per_sae[h.id] = SaeDecomposition(
                sae_id=h.id,
                hook_point=h.hook_point.name,
                top_ids=ids[lo:hi],
                top_values=vals[lo:hi],
                dense_values=dense[lo:hi],
                token_mse=mse,
                explained_variance=float(1.0 - mse.mean()) if mse is not None else None,
            )
        result.append(per_sae)
    return result


def _text_variance(x: Tensor, text_of_token: Tensor, n_texts: int) -> Tensor:
    """[T] per token: its text's mean |x_t - mean_text(x)|^2, the normalized-MSE denominator.

    A one-token text has no variance; its denominator falls back to |x_t|^2 (a relative
    error), so the number stays finite and meaningful.
    """
    x = x.float()
    counts = torch.bincount(text_of_token, minlength=n_texts).clamp_min(1).unsqueeze(-1).float()
    means = (
        torch.zeros(n_texts, x.shape[-1], device=x.device).index_add_(0, text_of_token, x) / counts
    )
    dist = (x - means[text_of_token]).pow(2).sum(dim=-1)  # [T]
    per_text = torch.zeros(n_texts, device=x.device).index_add_(
        0, text_of_token, dist
    ) / counts.squeeze(-1)
    denom = per_text[text_of_token]
    fallback = x.pow(2).sum(dim=-1)
    return torch.where(denom > 0, denom, fallback).clamp_min(torch.finfo(torch.float32).tiny)
