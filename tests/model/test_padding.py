"""Left padding is exact: a left-padded batch with attention_mask and position_ids (and a KV
cache for the decode steps) gives each text the activations and logits it gets alone.

The kwargs used here are the recipe for the engine:
``position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)`` at prefill, then
``attention_mask.sum(-1, keepdim=True) - 1`` per decode step, the full [B, past + 1] mask,
and ``cache=DynamicCache()``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from saeserve.model.hookpoints import HookKind, HookPoint, hooked
from saeserve.model.loader import LoadedModel
from tests.model.conftest import N_LAYERS, TEXT

TEXTS = [TEXT, "Once upon a time"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def left_pad(lm: LoadedModel, rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), lm.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def resid_posts(
    lm: LoadedModel, **kwargs: Tensor | DynamicCache | bool
) -> tuple[dict[int, Tensor], Tensor]:
    seen: dict[int, Tensor] = {}
    fns = {HookPoint(HookKind.RESID_POST, layer): (lambda x, layer=layer: seen.__setitem__(layer, x.clone())) for layer in range(N_LAYERS)}  # fmt: skip
    with hooked(lm, fns):
        logits = lm.model(**kwargs).logits
    return seen, logits


def test_left_padded_batch_equals_each_text_alone(lm: LoadedModel) -> None:
    rows = [lm.tokenizer(t, return_tensors="pt").input_ids[0] for t in TEXTS]
    assert len(rows[0]) > len(rows[1]) + 3
    ids, mask = left_pad(lm, rows)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batch_posts, batch_logits = resid_posts(
        lm, input_ids=ids, attention_mask=mask, position_ids=position_ids
    )
    for i, row in enumerate(rows):
        alone_posts, alone_logits = resid_posts(lm, input_ids=row[None])
        real = slice(ids.shape[1] - len(row), None)
        for layer in range(N_LAYERS):
            torch.testing.assert_close(batch_posts[layer][i, real], alone_posts[layer][0], **TOL)
        torch.testing.assert_close(batch_logits[i, real], alone_logits[0], **TOL)
        assert torch.isfinite(batch_logits[i]).all()  # no NaN from fully masked pad rows


def test_left_padded_decode_with_cache_equals_full_forward(lm: LoadedModel) -> None:
    rows = [lm.tokenizer(t, return_tensors="pt").input_ids[0] for t in TEXTS]
    new_tokens = torch.tensor([[5, 6], [7, 8], [9, 10]])  # three decode steps, per row
    ids, mask = left_pad(lm, rows)
    cache = DynamicCache()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    lm.model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True
    )
    step_logits = []
    for step in new_tokens:
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        position_ids = mask.sum(-1, keepdim=True) - 1
        out = lm.model(
            input_ids=step[:, None],
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        step_logits.append(out.logits[:, -1])
    for i, row in enumerate(rows):
        full = torch.cat([row, new_tokens[:, i]])[None]
        expected = lm.model(input_ids=full).logits[0, len(row) :]
        torch.testing.assert_close(torch.stack([s[i] for s in step_logits]), expected, **TOL)
