"""The index builder at width: a numpy brute force, resume, the memory budget, stored postings.

The brute force encodes every context densely (``reference`` in test_build_index: the full
HF model per context, ``sae.encode``), then computes each feature's counts, per-context
maxima, top contexts, fine-grid histogram, sampled contexts (the splitmix64 keys written
over Python integers in test_quantiles) and the search postings with numpy and plain
loops, and compares them with what ``build_index`` stored.
"""

from __future__ import annotations

import importlib
import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from saeserve.errors import InvalidArgument, ResourceExhausted
from saeserve.insight.accumulator import FeatureAccumulator, LogBins
from saeserve.insight.index import BuildProgress, build_index
from saeserve.insight.postings import POSTINGS_FILE, WORDS_FILE, words
from saeserve.insight.search import search
from saeserve.insight.store import FeatureIndex
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import Sae
from tests.insight.conftest import D_SAE
from tests.insight.test_build_index import CONTEXT, reference
from tests.insight.test_quantiles import key

search_module = importlib.import_module("saeserve.insight.search")  # the package shadows it
store_module = importlib.import_module("saeserve.insight.store")
N_TOP = 3
BANDS, PER_BAND = 2, 2
SEED = 5


def build(lm: LoadedModel, sae: Sae, corpus: list[str], **kwargs: object) -> FeatureIndex:
    settings: dict[str, object] = dict(
        context_length=CONTEXT,
        n_top_contexts=N_TOP,
        quantile_bands=BANDS,
        samples_per_band=PER_BAND,
        sample_seed=SEED,
        batch_size=2,
    )
    return build_index(lm, sae, corpus, **(settings | kwargs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]) -> FeatureIndex:
    return build(tiny_lm, tiny_sae, corpus)


def test_matches_a_numpy_brute_force(
    built: FeatureIndex, tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    ref = reference(tiny_lm, tiny_sae, corpus)
    dense = np.zeros((len(ref.contexts), CONTEXT, D_SAE), dtype=np.float32)
    for c, d in enumerate(ref.dense):
        dense[c, : d.shape[0]] = d.numpy()
    active = dense > 0
    np.testing.assert_array_equal(built.counts, active.sum((0, 1)))
    np.testing.assert_allclose(built.max_activation, dense.max((0, 1)), rtol=1e-5)
    ctx_max = dense.max(1)  # [n_ctx, d_sae]
    edges = LogBins().edges
    for f in range(D_SAE):
        fired = np.flatnonzero(ctx_max[:, f] > 0)
        by_value = fired[np.argsort(-ctx_max[fired, f], kind="stable")]
        top = by_value[:N_TOP]
        got_top = [ex.token_ids for ex in built.contexts(f)]
        assert got_top == [ref.contexts[c] for c in top]
        # fine-grid histogram, merged back: the stored bins hold the same total per span
        values = dense[:, :, f][active[:, :, f]]
        fine = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
        assert int(built.hist_counts[f].sum()) == int(fine.sum())
        n_bins = int(built.hist_n_bins[f])
        stored_edges = built.hist_edges[f, : n_bins + 1]
        for i in range(n_bins):
            hi = stored_edges[i + 1] if i < n_bins - 1 else np.inf
            in_bin = (values >= stored_edges[i]) & (values < hi)
            assert int(built.hist_counts[f, i]) == int(in_bin.sum())
        by_key = sorted(fired.tolist(), key=lambda c: -key(SEED, f, c))[: BANDS * PER_BAND]
        rest = [c for c in by_key if c not in set(top.tolist())]
        rest.sort(key=lambda c: -float(ctx_max[c, f]))
        got = [ex.token_ids for band in built.quantiles(f) for ex in band.contexts]
        assert got == [ref.contexts[c] for c in rest]
        for ex, c in zip(built.contexts(f), top, strict=True):
            np.testing.assert_allclose(ex.values, dense[c, : len(ex.values), f], rtol=1e-5)


def postings_by_hand(index: FeatureIndex) -> dict[str, dict[str, dict[int, float]]]:
    """The bags as the search module defines them, one feature at a time."""
    out: dict[str, dict[str, dict[int, float]]] = {
        bag: defaultdict(dict) for bag in ("explanation", "top_tokens", "promoted")
    }
    for f in range(index.d_sae):
        if index.explanation_sources[f] == "imported":
            for w in set(words(index.explanations[f])):
                out["explanation"][w][f] = 1.0
        if index.counts[f] == 0:
            continue
        for bag, tokens in (
            ("top_tokens", index.top_tokens(f)),
            ("promoted", [index.token_text(t) for t in index.promoted_ids[f].tolist()]),
        ):
            counts: dict[str, int] = defaultdict(int)
            for token in tokens:
                for w in set(words(token)):
                    counts[w] += 1
            for w, c in counts.items():
                out[bag][w][f] = c / len(tokens)
    return out


def as_dicts(index: FeatureIndex) -> dict[str, dict[str, dict[int, float]]]:
    assert index.postings is not None
    return {
        bag: {w: dict(zip(fs.tolist(), tf.tolist(), strict=True)) for w, (fs, tf) in by.items()}
        for bag, by in index.postings.items()
    }


def test_postings_are_built_with_the_index_as_by_hand(
    tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    index = build(tiny_lm, tiny_sae, corpus[:3], explanations={2: "The fog, the FOG", 7: "rain"})
    assert index.postings is not None  # built by build_index, not on a first search
    expected = postings_by_hand(index)
    assert expected["explanation"]["fog"] == {2: 1.0}
    assert expected["top_tokens"] and expected["promoted"]
    assert as_dicts(index) == {bag: dict(by) for bag, by in expected.items()}


def test_first_search_uses_the_stored_postings(
    built: FeatureIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built.save(tmp_path / "idx")
    calls: list[int] = []

    def counting(index: FeatureIndex) -> object:
        calls.append(index.d_sae)
        raise AssertionError("postings rebuilt")

    monkeypatch.setattr(search_module, "build_postings", counting)
    monkeypatch.setattr(store_module, "build_postings", counting)
    loaded = FeatureIndex.load(tmp_path / "idx")
    word = next(iter(loaded.postings["top_tokens"])) if loaded.postings else ""
    assert search({"s": loaded}, word, 5) == search({"s": built}, word, 5)
    assert calls == []
    assert as_dicts(loaded) == as_dicts(built)


def test_an_index_saved_without_postings_gets_them_on_load(
    built: FeatureIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = built.save(tmp_path / "old")
    (folder / POSTINGS_FILE).unlink()
    (folder / WORDS_FILE).unlink()
    real = store_module.build_postings
    calls: list[int] = []

    def counting(index: FeatureIndex) -> object:
        calls.append(index.d_sae)
        return real(index)

    monkeypatch.setattr(store_module, "build_postings", counting)
    monkeypatch.setattr(search_module, "build_postings", counting)
    loaded = FeatureIndex.load(folder)
    assert calls == [D_SAE]  # at load, once
    search({"s": loaded}, "the", 3)
    assert calls == [D_SAE]
    assert as_dicts(loaded) == as_dicts(built)


class Interrupted(Exception):
    pass


def test_resume_gives_the_uninterrupted_index(
    built: FeatureIndex, tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    seen: list[BuildProgress] = []

    def stop_midway(p: BuildProgress) -> None:
        seen.append(p)
        if len(seen) == 7:
            raise Interrupted

    with pytest.raises(Interrupted):
        build(
            tiny_lm, tiny_sae, corpus, checkpoint=checkpoint, checkpoint_every=50,
            progress=stop_midway,
        )  # fmt: skip
    assert (checkpoint / "checkpoint.json").is_file()
    resumed: list[BuildProgress] = []
    again = build(
        tiny_lm, tiny_sae, corpus, checkpoint=checkpoint, checkpoint_every=50, resume=True,
        progress=resumed.append,
    )  # fmt: skip
    assert 0 < resumed[0].resumed_tokens <= seen[-1].corpus_tokens  # it did resume midway
    assert resumed[-1].corpus_tokens > seen[-1].corpus_tokens
    assert again == built
    assert as_dicts(again) == as_dicts(built)
    assert all(again.quantiles(f) == built.quantiles(f) for f in range(D_SAE))


def test_resume_refuses_other_settings(
    tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    build(tiny_lm, tiny_sae, corpus[:3], checkpoint=checkpoint, checkpoint_every=10)
    with pytest.raises(InvalidArgument, match="sample_seed 5 -> 6"):
        build(tiny_lm, tiny_sae, corpus[:3], checkpoint=checkpoint, resume=True, sample_seed=6)


def test_a_budget_too_small_is_refused_by_name(
    tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    with pytest.raises(ResourceExhausted, match="--memory-budget"):
        build(tiny_lm, tiny_sae, corpus, memory_budget=1000)  # not even the output fits
    fits_output = build(tiny_lm, tiny_sae, corpus[:1], memory_budget=2**30)
    acc_output = FeatureAccumulator(
        D_SAE, n_top_contexts=N_TOP, context_length=CONTEXT, histogram_bins=32, n_samples=4
    ).output_nbytes(10)
    with pytest.raises(ResourceExhausted, match=r"features fired\), over the budget"):
        build(tiny_lm, tiny_sae, corpus, memory_budget=acc_output + 20_000)  # state outgrows it
    assert fits_output.meta.n_tokens > 0


def _stream_peak(d_sae: int) -> tuple[int, int]:
    """tracemalloc peak of streaming 40 batches that fire 300 features of ``d_sae``."""
    rng = np.random.default_rng(0)
    fired = rng.choice(d_sae, 300, replace=False)
    acc = FeatureAccumulator(
        d_sae, n_top_contexts=20, context_length=64, histogram_bins=32, n_samples=15
    )
    batches = []
    for _ in range(40):
        n_tok, k = 256, 8
        indices = np.stack([rng.choice(fired, k, replace=False) for _ in range(n_tok)])
        values = rng.gamma(2.0, 1.0, (n_tok, k)).astype(np.float32)
        rows, pos = np.arange(n_tok) // 64, np.arange(n_tok) % 64
        tokens = rng.integers(0, 1000, (4, 64)).astype(np.int32)
        batches.append((values, indices, rows, pos, 4, tokens, np.full(4, 64, np.int16)))
    tracemalloc.start()
    for b in batches:
        acc.add(*b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, acc.nbytes


def test_streaming_memory_follows_fired_features_not_d_sae() -> None:
    small_peak, small_state = _stream_peak(2**12)
    wide_peak, wide_state = _stream_peak(2**26)  # dense state would be > 1 TB here
    assert wide_state < 1.05 * small_state
    assert wide_peak < small_peak + 2**20  # the same, but for the sorted id list's digits
    assert wide_peak < 64 * 2**20
