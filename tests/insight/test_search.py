"""SearchFeatures ranking on small hand-built indexes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from saeserve.errors import InvalidArgument
from saeserve.insight.search import search
from saeserve.insight.store import FeatureIndex, IndexMeta, empty_samples


@dataclass
class Spec:
    explanation: str | None = None  # None: a generated label
    top_tokens: list[str] = field(default_factory=list)  # max token of each top context
    promoted: list[str] = field(default_factory=list)


def make_index(specs: list[Spec], sae_id: str = "s") -> FeatureIndex:
    """An index whose top contexts are one token each (the spec's top tokens)."""
    d = len(specs)
    n = max(1, *(len(s.top_tokens) for s in specs))
    n_logit = max(1, *(len(s.promoted) for s in specs))
    vocab: dict[str, int] = {"": 0}
    tid = lambda s: vocab.setdefault(s, len(vocab))  # noqa: E731
    top_context = np.full((d, n), -1, dtype=np.int32)
    context_tokens: list[int] = []
    offsets, values = [0], []
    promoted = np.zeros((d, n_logit), dtype=np.int32)
    for f, spec in enumerate(specs):
        for r in range(n):
            if r < len(spec.top_tokens):
                top_context[f, r] = len(context_tokens)
                context_tokens.append(tid(spec.top_tokens[r]))
                values.append(1.0)
            offsets.append(len(values))
        for r, tok in enumerate(spec.promoted):
            promoted[f, r] = tid(tok)
    meta = IndexMeta(
        sae_id=sae_id,
        hook_point="resid_post.0",
        model="m",
        d_sae=d,
        n_tokens=100,
        n_contexts=len(context_tokens),
        context_length=1,
        n_top_contexts=n,
        n_logit_tokens=n_logit,
        histogram_bins=1,
        latents_per_token=1,
    )
    zeros = np.zeros((d, n_logit), dtype=np.float32)
    return FeatureIndex(
        meta=meta,
        counts=np.array([len(s.top_tokens) for s in specs], dtype=np.int64),
        max_activation=np.ones(d, dtype=np.float32),
        mean_activation=np.ones(d, dtype=np.float32),
        hist_edges=np.full((d, 2), np.nan, dtype=np.float32),
        hist_counts=np.zeros((d, 1), dtype=np.int64),
        hist_n_bins=np.zeros(d, dtype=np.int32),
        top_context=top_context,
        top_max_pos=np.zeros((d, n), dtype=np.int16),
        top_max_value=np.where(top_context >= 0, 1.0, 0.0).astype(np.float32),
        value_offsets=np.array(offsets, dtype=np.int64),
        value_pos=np.zeros(len(values), dtype=np.int16),
        value=np.array(values, dtype=np.float32),
        **empty_samples(d),
        context_tokens=np.array(context_tokens, dtype=np.uint16).reshape(-1, 1),
        context_lengths=np.ones(len(context_tokens), dtype=np.int16),
        promoted_ids=promoted,
        promoted_effects=zeros,
        suppressed_ids=promoted.copy(),
        suppressed_effects=zeros.copy(),
        token_strings={i: s for s, i in vocab.items()},
        explanations=[s.explanation or "generated label" for s in specs],
        explanation_sources=["imported" if s.explanation else "generated" for s in specs],
    )


SPECS = [
    Spec("the definite article", [" the", " the"], [" cat"]),  # 0
    Spec(None, [" bridge", " bridge", " bridge"], [" fog"]),  # 1: tokens only, all bridge
    Spec("bridges over rivers", [" water"], [" river"]),  # 2: explanation, substring
    Spec("the Golden Gate Bridge", [" Gate"], [" San"]),  # 3: explanation, exact
    Spec(None, [" the", " of"], [" bridge"]),  # 4: promotes bridge
    Spec("unrelated", [], []),  # 5: dead, explanation only
]


def test_explanation_matches_rank_above_token_matches() -> None:
    hits = search({"s": make_index(SPECS)}, "bridge", limit=10)
    # exact in an explanation (3) > substring in an explanation (2) > every top token (1)
    # > a promoted token (4); by hand: 3.0 > 3.0 * 0.5 > 1.0 * 1.0 > 0.5 * 1.0
    assert [h.feature for h in hits] == [3, 2, 1, 4]
    scores = [h.score for h in hits]
    assert scores[0] / scores[3] == pytest.approx(3.0 / 0.5)
    assert scores[1] / scores[2] == pytest.approx(1.5 / 1.0)
    assert hits[0].explanation == "the Golden Gate Bridge" and hits[0].matched == ("bridge",)


def test_rare_words_outweigh_common_ones() -> None:
    index = make_index(SPECS)
    # "the" matches 0, 3 and 4; "golden" only 3
    hits = search({"s": index}, "the golden", limit=3)
    assert hits[0].feature == 3 and hits[0].matched == ("the", "golden")
    n, df_the, df_golden = 6, 3, 1
    idf_the, idf_golden = np.log(1 + n / (1 + df_the)), np.log(1 + n / (1 + df_golden))
    assert hits[0].score == pytest.approx(3.0 * idf_the + 3.0 * idf_golden)
    assert search({"s": index}, "unrelated", limit=5)[0].feature == 5  # dead, by explanation


def test_ties_are_broken_by_index_name_then_feature() -> None:
    twin = [Spec("fog horn"), Spec("fog horn"), Spec(None, [" x"])]
    hits = search({"b": make_index(twin, "b"), "a": make_index(twin, "a")}, "fog", limit=3)
    assert [(h.sae, h.feature) for h in hits] == [("a", 0), ("a", 1), ("b", 0)]
    assert len({h.score for h in hits}) == 1


def test_limit_and_no_match() -> None:
    index = make_index(SPECS)
    assert len(search({"s": index}, "bridge", limit=2)) == 2
    assert search({"s": index}, "zebra", limit=5) == []
    assert search({}, "bridge", limit=5) == []


@pytest.mark.parametrize(
    ("query", "limit", "message"),
    [
        ("bridge", 0, r"limit: 0 must be in \[1, 1000\]"),
        ("bridge", 1001, r"limit: 1001"),
        ("  ?! ", 5, "query: must contain at least one word"),
        ("x" * 1001, 5, "query: 1001 characters exceeds the limit 1000"),
    ],
)
def test_bad_requests_are_invalid(query: str, limit: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        search({"s": make_index(SPECS)}, query, limit)
