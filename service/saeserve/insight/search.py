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
The word lists are inverted when the index is built and stored with it
(``saeserve.insight.postings``); an index made by hand gets them on its first search.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from saeserve.errors import InvalidArgument
from saeserve.insight.postings import Postings, build_postings, words
from saeserve.insight.store import FeatureIndex

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


def postings(index: FeatureIndex) -> Postings:
    """The index's inverted word lists: the stored ones, else built now and kept on it."""
    if index.postings is None:
        index.postings = build_postings(index)
    return index.postings


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
