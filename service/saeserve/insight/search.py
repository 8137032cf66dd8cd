"""SearchFeatures: rank the features of one or more indexes against a text query.

The query is split into lower-case words (``\\w+``). Each feature has three bags of
words, each weighted: its imported explanation (3.0), the max-activating tokens of its
top contexts (1.0, as the fraction of top contexts whose max token holds the word) and
its top promoted tokens (0.5, as the fraction of them holding it); token bags only for
features that fired. Generated labels are not an explanation here: they only repeat the
token bags. A query word matches a bag
word exactly (1.0) or as a substring either way (0.5; a bag word must have 3+
characters to match inside the query word). A feature's score is

    sum over query words q of  idf(q) * sum over bags  weight * best match of q in the bag

with ``idf(q) = ln(1 + n_features / (1 + features matching q))`` over all the indexes,
so rare words count more. Ties are broken by index name, then feature id.
Word lists are inverted once per index and cached on it (``FeatureIndex.search_cache``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from saeserve.errors import InvalidArgument
from saeserve.insight.explanations import IMPORTED
from saeserve.insight.store import FeatureIndex

WORD = re.compile(r"\w+")
BAG_WEIGHTS = {"explanation": 3.0, "top_tokens": 1.0, "promoted": 0.5}
SUBSTRING_MATCH = 0.5
MIN_INNER_WORD = 3  # a bag word this short only matches a query word exactly or around it
MAX_LIMIT = 1000
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class SearchHit:
    """One ranked feature."""

    sae: str
    """The key of its index in the mapping searched (the SAE id)."""
    feature: int
    score: float
    explanation: str
    explanation_source: str
    matched: tuple[str, ...]
    """Query words that matched something of this feature."""


# bag -> word -> (features [n] int64, term frequency [n] float64)
Postings = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def words(text: str) -> list[str]:
    """Lower-case word tokens of text."""
    return WORD.findall(text.lower())


def postings(index: FeatureIndex) -> Postings:
    """The index's inverted word lists, built on first use and cached on it."""
    if index.search_cache is not None:
        return index.search_cache  # type: ignore[no-any-return]
    raw: dict[str, dict[str, dict[int, float]]] = {bag: defaultdict(dict) for bag in BAG_WEIGHTS}
    for f in range(index.d_sae):
        if index.explanation_sources[f] == IMPORTED:
            for w in set(words(index.explanations[f])):
                raw["explanation"][w][f] = 1.0
        if index.counts[f] == 0:
            continue  # a feature that never fired is found by its explanation only
        _add_bag(raw["top_tokens"], f, index.top_tokens(f))
        _add_bag(raw["promoted"], f, [index.token_text(t) for t in index.promoted_ids[f].tolist()])
    built: Postings = {
        bag: {
            w: (np.fromiter(hits.keys(), np.int64), np.fromiter(hits.values(), np.float64))
            for w, hits in by_word.items()
        }
        for bag, by_word in raw.items()
    }
    index.search_cache = built
    return built


def _add_bag(bag: dict[str, dict[int, float]], feature: int, tokens: list[str]) -> None:
    """Add each word's share of the tokens that contain it."""
    if not tokens:
        return
    counts: dict[str, int] = defaultdict(int)
    for token in tokens:
        for w in set(words(token)):
            counts[w] += 1
    for w, c in counts.items():
        bag[w][feature] = c / len(tokens)


def _match(query_word: str, bag_word: str) -> float:
    if query_word == bag_word:
        return 1.0
    if query_word in bag_word or (len(bag_word) >= MIN_INNER_WORD and bag_word in query_word):
        return SUBSTRING_MATCH
    return 0.0


def search(indexes: Mapping[str, FeatureIndex], query: str, limit: int) -> list[SearchHit]:
    """The ``limit`` best-matching features over ``indexes`` (name -> index), best first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit: {limit} must be in [1, {MAX_LIMIT}]")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query: {len(query)} characters exceeds the limit {MAX_QUERY_CHARS}")
    terms = list(dict.fromkeys(words(query)))
    if not terms:
        raise InvalidArgument("query: must contain at least one word (letters or digits)")

    names = sorted(indexes)
    # best[name][term] = [d_sae] weighted match, summed over bags (before idf)
    best: dict[str, dict[str, np.ndarray]] = {}
    n_features = 0
    df: dict[str, int] = defaultdict(int)
    for name in names:
        index = indexes[name]
        n_features += index.d_sae
        lists = postings(index)
        best[name] = {}
        for term in terms:
            total = np.zeros(index.d_sae)
            for bag, weight in BAG_WEIGHTS.items():
                bag_best = np.zeros(index.d_sae)
                for word, (feats, tf) in lists[bag].items():
                    m = _match(term, word)
                    if m:
                        np.maximum.at(bag_best, feats, m * tf)
                total += weight * bag_best
            best[name][term] = total
            df[term] += int(np.count_nonzero(total))

    idf = {t: math.log(1 + n_features / (1 + df[t])) for t in terms}
    hits: list[SearchHit] = []
    for name in names:
        index = indexes[name]
        score = sum((idf[t] * best[name][t] for t in terms), np.zeros(index.d_sae))
        candidates = np.flatnonzero(score > 0)
        # best first; equal scores by feature id (np.lexsort: last key is primary)
        ranked = candidates[np.lexsort((candidates, -score[candidates]))][:limit]
        for f in ranked.tolist():
            hits.append(
                SearchHit(
                    sae=name,
                    feature=f,
                    score=float(score[f]),
                    explanation=index.explanations[f],
                    explanation_source=index.explanation_sources[f],
                    matched=tuple(t for t in terms if best[name][t][f] > 0),
                )
            )
    order = {name: i for i, name in enumerate(names)}
    hits.sort(key=lambda h: (-h.score, order[h.sae], h.feature))
    return hits[:limit]
