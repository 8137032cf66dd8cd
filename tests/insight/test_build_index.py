"""build_index on a tiny GPT-2 + TopK SAE against a by-hand reference.

The reference chunks each text itself, runs the full HF model per context with
``output_hidden_states`` (resid_post.0 of GPT-2 is hidden_states[1]), encodes densely
with ``sae.encode`` and walks every (context, token, feature) in plain Python loops.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saeserve.errors import InvalidArgument
from saeserve.insight.index import build_index, iter_contexts
from saeserve.insight.store import FeatureIndex
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import Activation, Sae, SaeConfig
from tests.insight.conftest import D_SAE, random_sae

CONTEXT = 16
N_TOP = 4
BINS = 5  # small, so a feature's fine bins are merged several to a bin
N_LOGIT = 6


@dataclass
class Reference:
    contexts: list[list[int]]
    dense: list[torch.Tensor]  # per context [T, d_sae], latents read (others zeroed)
    n_tokens: int


def reference(
    lm: LoadedModel, sae: Sae, texts: list[str], keep_top: int | None = None
) -> Reference:
    tok = lm.tokenizer
    contexts: list[list[int]] = []
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.bos_token_id is None or ids[0] != tok.bos_token_id  # no BOS to repeat
        contexts += [ids[i : i + CONTEXT] for i in range(0, len(ids), CONTEXT)]
    dense = []
    with torch.no_grad():
        for ctx in contexts:
            out = lm.model(input_ids=torch.tensor([ctx]), output_hidden_states=True)
            latents = sae.encode(out.hidden_states[1][0])  # [T, d_sae]
            if keep_top is not None:  # the per-token cap a non-TopK SAE is read with
                kept = torch.zeros_like(latents)
                for t in range(latents.shape[0]):
                    top = torch.topk(latents[t], keep_top)
                    kept[t, top.indices] = top.values
                latents = kept
            dense.append(latents)
    return Reference(contexts, dense, sum(len(c) for c in contexts))


@pytest.fixture(scope="module")
def built(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> FeatureIndex:
    return build_index(
        tiny_lm,
        tiny_sae,
        corpus,
        context_length=CONTEXT,
        n_top_contexts=N_TOP,
        n_logit_tokens=N_LOGIT,
        histogram_bins=BINS,
        batch_size=3,  # many merges of the running top-N
    )


@pytest.fixture(scope="module")
def ref(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> Reference:
    return reference(tiny_lm, tiny_sae, corpus)


def active_values(ref: Reference, f: int) -> list[float]:
    return [float(d[t, f]) for d in ref.dense for t in range(d.shape[0]) if float(d[t, f]) > 0]


def test_density_max_mean_match_dense_encoding(built: FeatureIndex, ref: Reference) -> None:
    assert built.meta.n_tokens == ref.n_tokens
    assert built.meta.n_contexts == len(ref.contexts)
    alive = 0
    for f in range(D_SAE):
        vals = active_values(ref, f)
        info = built.feature(f)
        assert built.counts[f] == len(vals)
        assert info.density == pytest.approx(len(vals) / ref.n_tokens)
        assert info.max_activation == pytest.approx(max(vals, default=0.0), rel=1e-5)
        assert info.mean_activation == pytest.approx(
            sum(vals) / len(vals) if vals else 0.0, rel=1e-5
        )
        alive += bool(vals)
    assert alive > D_SAE // 2  # the test SAE is not degenerate


def test_histogram_counts_every_active_value_in_its_log_bin(
    built: FeatureIndex, ref: Reference
) -> None:
    merged = 0
    for f in range(D_SAE):
        vals = active_values(ref, f)
        info = built.feature(f)
        edges, counts = info.histogram_edges, info.histogram_counts
        if not vals:
            assert edges == [] and counts == []
            continue
        assert 1 <= len(counts) <= BINS and len(edges) == len(counts) + 1
        assert all(a < b for a, b in itertools.pairwise(edges))
        # inner edges lie on the fine grid 1e-3 * 10^(j/32)
        for e in edges[1:-1]:
            j = math.log10(e / 1e-3) * 32
            assert abs(j - round(j)) < 1e-3
        by_hand = [0] * len(counts)
        for v in vals:
            v32 = np.float32(v)
            hits = [
                i
                for i in range(len(counts))
                if edges[i] <= v32 < edges[i + 1] or (i == len(counts) - 1 and v32 == edges[-1])
            ]
            assert len(hits) == 1, (f, v, edges)
            by_hand[hits[0]] += 1
        assert counts == by_hand
        merged += len(counts) == BINS
    assert merged > 0  # some features span more fine bins than BINS: groups were merged


def test_top_contexts_are_the_true_top_n_with_per_token_values(
    built: FeatureIndex, ref: Reference
) -> None:
    for f in range(D_SAE):
        per_context = [
            (float(d[:, f].max()), c) for c, d in enumerate(ref.dense) if float(d[:, f].max()) > 0
        ]
        per_context.sort(key=lambda x: -x[0])
        expected = per_context[:N_TOP]
        got = built.feature(f).contexts
        assert len(got) == len(expected)
        for ex, (value, c) in zip(got, expected, strict=True):
            column = ref.dense[c][:, f]
            assert ex.token_ids == ref.contexts[c]
            assert ex.max_value == pytest.approx(value, rel=1e-5)
            assert ex.max_pos == int(column.argmax())
            np.testing.assert_allclose(ex.values, column.numpy(), rtol=1e-5, atol=1e-6)
            assert ex.tokens == [built.token_text(t) for t in ex.token_ids]


def test_promoted_and_suppressed_tokens_by_hand(
    built: FeatureIndex, tiny_lm: LoadedModel, tiny_sae: Sae
) -> None:
    gpt2: Any = tiny_lm.model
    gamma = gpt2.transformer.ln_f.weight.detach()  # GPT-2's final LayerNorm gain
    w_u = gpt2.lm_head.weight.detach()  # [vocab, d_model]
    assert not torch.allclose(gamma, torch.ones_like(gamma))  # the gain matters here
    for f in range(D_SAE):
        d = tiny_sae.W_dec[f].detach()
        d = (d - d.mean()) * gamma  # LayerNorm centres, then scales
        effects = (w_u @ d).numpy()
        up = np.argsort(-effects, kind="stable")[:N_LOGIT]
        down = np.argsort(effects, kind="stable")[:N_LOGIT]
        info = built.feature(f)
        assert [p.token_id for p in info.promoted] == up.tolist()
        assert [s.token_id for s in info.suppressed] == down.tolist()
        np.testing.assert_allclose([p.effect for p in info.promoted], effects[up], rtol=1e-4)
        np.testing.assert_allclose([s.effect for s in info.suppressed], effects[down], rtol=1e-4)
        assert info.promoted[0].token == tiny_lm.tokenizer.decode([int(up[0])])


def test_generated_labels_name_the_top_tokens(built: FeatureIndex) -> None:
    for f in range(D_SAE):
        info = built.feature(f)
        assert info.explanation_source == "generated"
        if not info.contexts:
            assert info.explanation == "never fired on the indexed corpus"
            continue
        max_tokens = [c.tokens[c.max_pos] for c in info.contexts]
        # most frequent max token; among equally frequent ones the strongest context's
        best = max(max_tokens, key=lambda t: (max_tokens.count(t), -max_tokens.index(t)))
        assert info.explanation.startswith("fires on " + json.dumps(best, ensure_ascii=False))
        assert (
            "; promotes " + json.dumps(info.promoted[0].token, ensure_ascii=False)
            in info.explanation
        )


def test_relu_sae_is_read_through_a_per_token_topk(tiny_lm: LoadedModel, corpus: list[str]) -> None:
    sae = random_sae(Activation.RELU, seed=1)
    index = build_index(
        tiny_lm, sae, corpus[:2], context_length=CONTEXT, n_top_contexts=2, dense_top_k=3
    )
    ref = reference(tiny_lm, sae, corpus[:2], keep_top=3)
    for f in range(D_SAE):
        vals = active_values(ref, f)
        assert index.counts[f] == len(vals)
        assert index.max_activation[f] == pytest.approx(max(vals, default=0.0), rel=1e-5)
    assert index.meta.latents_per_token == 3


def test_max_tokens_stops_exactly(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> None:
    index = build_index(tiny_lm, tiny_sae, corpus, context_length=CONTEXT, max_tokens=37)
    assert index.meta.n_tokens == 37
    assert index.meta.n_contexts == 3  # 16 + 16 + 5
    assert int(index.counts.sum()) == 37 * 4  # every token fires exactly k latents


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"context_length": 0}, "context_length"),
        ({"context_length": 10_000}, "context_length"),
        ({"n_top_contexts": 0}, "n_top_contexts"),
        ({"histogram_bins": 0}, "histogram_bins"),
        ({"dense_top_k": 0}, "dense_top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logit_lens": "tuned"}, "logit_lens"),
    ],
)
def test_bad_settings_name_the_field(
    tiny_lm: LoadedModel, tiny_sae: Sae, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        build_index(tiny_lm, tiny_sae, ["some text"], **kwargs)  # type: ignore[arg-type]


def test_empty_corpus_is_invalid(tiny_lm: LoadedModel, tiny_sae: Sae) -> None:
    with pytest.raises(InvalidArgument, match="corpus"):
        build_index(tiny_lm, tiny_sae, ["", ""])


def test_sae_off_the_residual_width_gets_no_logit_effects(
    tiny_lm: LoadedModel, corpus: list[str], tmp_path: Path
) -> None:
    cfg = SaeConfig(d_in=128, d_sae=8, k=2, hook_point="transformer.h.0.mlp.c_fc", id="mlp")
    sae = Sae(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
    index = build_index(tiny_lm, sae, corpus[:1], context_length=CONTEXT)
    assert index.meta.logit_lens == "none" and index.promoted_ids.shape == (8, 0)
    assert index.meta.hook_point == "transformer.h.0.mlp.c_fc"
    alive = int(np.argmax(index.counts))
    info = FeatureIndex.load(index.save(tmp_path / "mlp")).feature(alive)
    assert info.promoted == [] and info.suppressed == []
    assert info.explanation.startswith("fires on ") and "promotes" not in info.explanation


class BosTokenizer:
    """Starts every text with BOS (id 1); each character is one token (100 + its index)."""

    bos_token_id = 1

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
        return {"input_ids": [1] + [100 + i for i in range(len(text))]}


def test_contexts_of_a_long_text_each_start_with_bos() -> None:
    chunks = list(iter_contexts(BosTokenizer(), ["abcdefg", "xy"], context_length=4))
    assert chunks == [[1, 100, 101, 102], [1, 103, 104, 105], [1, 106], [1, 100, 101]]
    capped = list(iter_contexts(BosTokenizer(), ["abcdefg", "xy"], 4, max_tokens=6))
    assert capped == [[1, 100, 101, 102], [1, 103]]
