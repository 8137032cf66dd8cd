"""Feature statistics over whole texts: aggregated inspection and contrast of two sets.

Both are exact over all of an SAE's features, from its sparse active set
(``active_features``): a feature never active has activation 0 at every token, so it
counts 0, sums 0, and separates nothing (mean difference 0, AUROC 0.5). The work is
O(active entries x log), never [tokens x d_sae]; numbers are float64 on the host.

* ``inspect_features``: per feature of one text (or rendered conversation) its count of
  active tokens, max and where, sum, mean over all tokens and over active tokens, and the
  first positions it fires at; the top N by a chosen key.
* ``contrast_features``: per feature, samples of set A against set B (every token, or
  each text's max), their means, the difference, AUROC = P(a > b) + P(a = b) / 2 by
  Mann-Whitney with mid-ranks (zeros are implicit: they share the lowest mid-rank),
  Cohen's d with the pooled standard deviation; the top N features each way.

    [activity] = inspect_features(served, ids, InspectRequest(top_n=10))
    [contrast] = contrast_features(served, ids_a, ids_b, ContrastRequest(top_n=10))
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from saeserve.engine.active_features import ActiveFeatures, collect_active
from saeserve.engine.served_model import ServedModel
from saeserve.errors import InvalidArgument


# --- aggregated inspection --------------------------------------------------------------
class ActivityOrder(StrEnum):
    COUNT = "count"  # active tokens
    MAX = "max"  # largest activation
    SUM = "sum"  # sum of activations (the mean over all tokens times n_tokens)
    MEAN_ACTIVE = "mean_active"  # mean over the active tokens


@dataclass
class InspectRequest:
    sae_ids: list[str] = field(default_factory=list)
    """SAEs to run; empty means every SAE loaded for the model."""
    order_by: ActivityOrder = ActivityOrder.COUNT
    top_n: int = 20
    """Features reported per SAE, best first (ties: the lower id)."""
    max_positions: int = 16
    """Positions reported per feature: its first ones (``count`` says how many in all)."""


@dataclass
class FeatureActivity:
    feature: int
    count: int
    """Tokens at which the feature is active (> 0)."""
    max_activation: float
    max_position: int
    """The first token holding ``max_activation``."""
    sum_activation: float
    mean_over_tokens: float
    """sum / the text's tokens (inactive tokens count as 0)."""
    mean_over_active: float
    """sum / count."""
    positions: list[int]
    """The first ``max_positions`` active tokens, ascending."""
    values: list[float]
    """The activation at each of ``positions``."""


@dataclass
class SaeActivity:
    sae_id: str
    hook_point: str
    n_tokens: int
    active_features: int
    """Distinct features active at one token or more."""
    features: list[FeatureActivity]


def inspect_features(
    served: ServedModel,
    token_ids: Sequence[int],
    req: InspectRequest,
    *,
    lock: AbstractContextManager[Any] | None = None,
) -> list[SaeActivity]:
    """The features of each requested SAE that fire most over one text's tokens
    (``lock``: held around each forward, see ``collect_active``)."""
    if not token_ids:
        raise InvalidArgument("text: must not be empty")
    saes = served.select(req.sae_ids)
    if not saes:
        raise InvalidArgument(f"saes: model {served.name!r} has no SAEs loaded")
    return [
        feature_activity(a, req.order_by, req.top_n, req.max_positions)
        for a in collect_active(served, [token_ids], saes, lock=lock)
    ]


def feature_activity(
    active: ActiveFeatures, order_by: ActivityOrder, top_n: int, max_positions: int
) -> SaeActivity:
    """``SaeActivity`` of one SAE's active entries (see the module docstring)."""
    n = active.n_tokens
    ids, group = np.unique(active.features, return_inverse=True)  # [U], [nnz]
    count = np.bincount(group, minlength=len(ids))
    total = np.bincount(group, weights=active.values, minlength=len(ids))
    # per feature: entries by value descending, then token ascending; the first is the max
    by_value = np.lexsort((active.tokens, -active.values, group))
    first = np.searchsorted(group[by_value], np.arange(len(ids)))
    max_value = active.values[by_value][first]
    max_token = active.tokens[by_value][first]
    key = {
        ActivityOrder.COUNT: count.astype(np.float64),
        ActivityOrder.MAX: max_value,
        ActivityOrder.SUM: total,
        ActivityOrder.MEAN_ACTIVE: total / np.maximum(count, 1),
    }[ActivityOrder(order_by)]
    chosen = np.lexsort((ids, -key))[:top_n]
    by_token = np.lexsort((active.tokens, group))
    starts = np.searchsorted(group[by_token], np.arange(len(ids)))
    features = []
    for g in chosen:
        shown = by_token[starts[g] : starts[g] + min(int(count[g]), max_positions)]
        features.append(
            FeatureActivity(
                feature=int(ids[g]),
                count=int(count[g]),
                max_activation=float(max_value[g]),
                max_position=int(max_token[g]),
                sum_activation=float(total[g]),
                mean_over_tokens=float(total[g] / n),
                mean_over_active=float(total[g] / count[g]),
                positions=active.tokens[shown].tolist(),
                values=active.values[shown].tolist(),
            )
        )
    return SaeActivity(active.sae_id, active.hook_point, n, len(ids), features)


# --- contrast -------------------------------------------------------------------------------
class ContrastUnit(StrEnum):
    TOKEN = "token"  # every token is a sample
    TEXT_MAX = "text_max"  # every text is a sample: its max over its tokens


class ContrastOrder(StrEnum):
    MEAN_DIFF = "mean_diff"  # mean A - mean B
    AUROC = "auroc"  # P(a > b) + P(a = b) / 2


@dataclass
class ContrastRequest:
    sae_ids: list[str] = field(default_factory=list)
    """SAEs to run; empty means every SAE loaded for the model."""
    unit: ContrastUnit = ContrastUnit.TOKEN
    order_by: ContrastOrder = ContrastOrder.MEAN_DIFF
    top_n: int = 20
    """Features reported each way per SAE."""


@dataclass
class FeatureContrast:
    feature: int
    mean_a: float
    mean_b: float
    mean_diff: float
    """mean_a - mean_b."""
    auroc: float
    """P(a > b) + P(a = b) / 2 for a sample a of set A and b of set B."""
    cohens_d: float | None
    """mean_diff / pooled standard deviation (ddof 1); None where that is 0."""
    active_fraction_a: float
    """Fraction of set A's samples where the feature is active."""
    active_fraction_b: float


@dataclass
class SaeContrast:
    sae_id: str
    hook_point: str
    samples_a: int
    samples_b: int
    active_features: int
    """Distinct features active in one sample or more of either set."""
    more_in_a: list[FeatureContrast]
    """key > neutral (mean_diff > 0, or AUROC > 0.5), largest key first; ties by the
    other key, then the lower id."""
    more_in_b: list[FeatureContrast]
    """key < neutral, smallest first; ties likewise."""


def contrast_features(
    served: ServedModel,
    token_ids_a: Sequence[Sequence[int]],
    token_ids_b: Sequence[Sequence[int]],
    req: ContrastRequest,
    *,
    lock: AbstractContextManager[Any] | None = None,
) -> list[SaeContrast]:
    """The features of each requested SAE that best separate texts A from texts B
    (``lock``: held around each forward, see ``collect_active``)."""
    for name, texts in (("texts_a", token_ids_a), ("texts_b", token_ids_b)):
        if not texts:
            raise InvalidArgument(f"{name}: at least one text is required")
    saes = served.select(req.sae_ids)
    if not saes:
        raise InvalidArgument(f"saes: model {served.name!r} has no SAEs loaded")
    both = collect_active(served, [*token_ids_a, *token_ids_b], saes, lock=lock)
    n_a = len(token_ids_a)
    return [contrast(*split_texts(s, n_a), req.unit, req.order_by, req.top_n) for s in both]


def split_texts(active: ActiveFeatures, n_first: int) -> tuple[ActiveFeatures, ActiveFeatures]:
    """The entries of the first ``n_first`` texts and of the rest, tokens renumbered."""
    cut = int(active.lengths[:n_first].sum())
    first = active.tokens < cut

    def part(mask: np.ndarray, lengths: np.ndarray, shift: int) -> ActiveFeatures:
        return ActiveFeatures(
            active.sae_id,
            active.hook_point,
            lengths,
            active.tokens[mask] - shift,
            active.features[mask],
            active.values[mask],
        )

    return (
        part(first, active.lengths[:n_first], 0),
        part(~first, active.lengths[n_first:], cut),
    )


def samples(active: ActiveFeatures, unit: ContrastUnit) -> tuple[int, np.ndarray, np.ndarray]:
    """(number of samples, features, values) of the non-zero samples in ``unit``."""
    if ContrastUnit(unit) is ContrastUnit.TOKEN:
        return active.n_tokens, active.features, active.values
    # one sample per (text, feature): the max over the text's entries of that feature
    key = active.text_of_entries() * (int(active.features.max(initial=0)) + 1) + active.features
    order = np.lexsort((-active.values, key))
    firsts = order[np.flatnonzero(np.diff(key[order], prepend=-1) != 0)]
    return len(active.lengths), active.features[firsts], active.values[firsts]


def contrast(
    a: ActiveFeatures, b: ActiveFeatures, unit: ContrastUnit, order_by: ContrastOrder, top_n: int
) -> SaeContrast:
    """``SaeContrast`` of one SAE's entries over set A and set B."""
    n_a, feat_a, val_a = samples(a, unit)
    n_b, feat_b, val_b = samples(b, unit)
    ids, group = np.unique(np.concatenate([feat_a, feat_b]), return_inverse=True)
    values = np.concatenate([val_a, val_b])
    in_a = np.arange(len(values)) < len(val_a)
    u = len(ids)

    def per_feature(weights: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=weights, minlength=u)

    pos_a, pos_b = per_feature(in_a.astype(np.float64)), per_feature((~in_a).astype(np.float64))
    mean_a, mean_b = per_feature(values * in_a) / n_a, per_feature(values * ~in_a) / n_b
    # squared deviations: the non-zero samples', plus each implicit zero's mean^2
    dev = (values - np.where(in_a, mean_a[group], mean_b[group])) ** 2
    ss = per_feature(dev) + (n_a - pos_a) * mean_a**2 + (n_b - pos_b) * mean_b**2
    dof = n_a + n_b - 2
    pooled = np.sqrt(ss / dof) if dof > 0 else np.zeros(u)
    diff = mean_a - mean_b
    auroc = _auroc(group, values, in_a, u, pos_a, pos_b, n_a, n_b)

    key, other = (diff, auroc - 0.5)
    if ContrastOrder(order_by) is ContrastOrder.AUROC:
        key, other = other, key
    up = np.flatnonzero(key > 0)
    up = up[np.lexsort((ids[up], -other[up], -key[up]))][:top_n]
    down = np.flatnonzero(key < 0)
    down = down[np.lexsort((ids[down], other[down], key[down]))][:top_n]

    def row(g: np.integer) -> FeatureContrast:
        return FeatureContrast(
            feature=int(ids[g]),
            mean_a=float(mean_a[g]),
            mean_b=float(mean_b[g]),
            mean_diff=float(diff[g]),
            auroc=float(auroc[g]),
            cohens_d=float(diff[g] / pooled[g]) if pooled[g] > 0 else None,
            active_fraction_a=float(pos_a[g] / n_a),
            active_fraction_b=float(pos_b[g] / n_b),
        )

    return SaeContrast(
        a.sae_id, a.hook_point, n_a, n_b, u, [row(g) for g in up], [row(g) for g in down]
    )


def _auroc(
    group: np.ndarray,
    values: np.ndarray,
    in_a: np.ndarray,
    u: int,
    pos_a: np.ndarray,
    pos_b: np.ndarray,
    n_a: int,
    n_b: int,
) -> np.ndarray:
    """[u] per feature, U_A / (n_a n_b) by Mann-Whitney with mid-ranks, where only the
    non-zero samples are listed: a feature's z = (n_a - pos_a) + (n_b - pos_b) zeros rank
    lowest, all at (z + 1) / 2, and its non-zero samples rank z + their mid-rank among
    themselves (activations are never negative)."""
    order = np.lexsort((values, group))
    g, v = group[order], values[order]
    m = len(order)
    new_tie = np.ones(m, dtype=bool)
    new_tie[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    tie_start = np.flatnonzero(new_tie)  # index of each tie group's first entry
    tie_end = np.append(tie_start[1:], m)  # one past its last
    tie = np.cumsum(new_tie) - 1  # [m] each entry's tie group
    feature_start = np.searchsorted(g, np.arange(u))  # [u] each feature's first entry
    base = feature_start[g]
    # mid-rank among the feature's non-zero samples: mean of 1-based ranks start+1 .. end
    mid = ((tie_start[tie] - base + 1) + (tie_end[tie] - base)) / 2.0
    zeros = (n_a - pos_a) + (n_b - pos_b)
    rank_sum_a = (n_a - pos_a) * (zeros + 1) / 2.0 + np.bincount(
        g, weights=(zeros[g] + mid) * in_a[order], minlength=u
    )
    return (rank_sum_a - n_a * (n_a + 1) / 2.0) / (n_a * n_b)
