"""The inverted word lists SearchFeatures ranks with, built with an index and stored in it.

Each feature has three bags of words (see ``saeserve.insight.search``): its imported
explanation (every word 1.0), the max-activating tokens of its top contexts and its
promoted tokens (each word as the fraction of those tokens whose text holds it); token
bags only for features that fired. ``build_postings`` inverts them with array operations
over (feature, token) pairs, so a million-feature index takes seconds, not a Python loop
per feature; ``FeatureIndex.save`` writes them as ``postings.safetensors`` (per bag the
CSR ``offsets``, ``features``, ``tf``) and ``postings.json`` (per bag its words, in
offset order), and ``FeatureIndex.load`` reads them back. An index saved before postings
were stored gets them built on load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load_file, save_file

from saeserve.insight.explanations import IMPORTED

if TYPE_CHECKING:
    from saeserve.insight.store import FeatureIndex

WORD = re.compile(r"\w+")
BAGS = ("explanation", "top_tokens", "promoted")
POSTINGS_FILE = "postings.safetensors"
WORDS_FILE = "postings.json"

# bag -> word -> (features [n] int64, term frequency [n] float64)
Postings = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def words(text: str) -> list[str]:
    """Lower-case word tokens of text."""
    return WORD.findall(text.lower())


def build_postings(index: FeatureIndex) -> Postings:
    """The index's three bags, inverted: word -> (features, term frequency)."""
    fired = index.counts > 0
    top_ids = _top_token_ids(index, fired)
    promoted = index.promoted_ids.astype(np.int64)
    promoted = np.where(fired[:, None], promoted, -1)  # token bags only for fired features
    imported = [f for f, s in enumerate(index.explanation_sources) if s == IMPORTED]
    explanation: dict[str, list[int]] = {}
    for f in imported:
        for w in set(words(index.explanations[f])):
            explanation.setdefault(w, []).append(f)
    return {
        "explanation": {
            w: (np.array(fs, dtype=np.int64), np.ones(len(fs))) for w, fs in explanation.items()
        },
        "top_tokens": _token_bag(index, top_ids),
        "promoted": _token_bag(index, promoted),
    }


def _top_token_ids(index: FeatureIndex, fired: np.ndarray) -> np.ndarray:
    """[d_sae, N] the max token of each filled top context of a fired feature, else -1."""
    rows = index.top_context.astype(np.int64)
    filled = (rows >= 0) & fired[:, None]
    out = np.full(rows.shape, -1, dtype=np.int64)
    out[filled] = index.context_tokens[rows[filled], index.top_max_pos[filled].astype(np.int64)]
    return out


def _token_bag(index: FeatureIndex, tokens: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Invert one bag given as [d_sae, n] token ids (-1: none): each word of a feature gets
    the share of its tokens whose text holds that word."""
    feature, slot = np.nonzero(tokens >= 0)
    if feature.size == 0:
        return {}
    token = tokens[feature, slot]
    per_feature = np.bincount(feature, minlength=tokens.shape[0])  # tokens in the bag
    uniq, inverse = np.unique(token, return_inverse=True)
    vocab: dict[str, int] = {}
    token_words = [
        sorted({vocab.setdefault(w, len(vocab)) for w in words(index.token_text(int(t)))})
        for t in uniq
    ]
    n_words = np.array([len(ws) for ws in token_words], dtype=np.int64)
    flat = np.array([w for ws in token_words for w in ws], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_words)])
    # every (feature, token) pair expands to the token's words
    reps = n_words[inverse]
    pair_feature = np.repeat(feature, reps)
    pair_word = flat[
        np.repeat(starts[inverse] - np.concatenate([[0], np.cumsum(reps)])[:-1], reps)
        + np.arange(int(reps.sum()))
    ]
    key = pair_word * tokens.shape[0] + pair_feature
    cells, count = np.unique(key, return_counts=True)  # by word, then feature
    if cells.size == 0:  # no token of the bag has a word in it
        return {}
    word, feat = cells // tokens.shape[0], cells % tokens.shape[0]
    tf = count / per_feature[feat]
    names = list(vocab)
    bounds = np.flatnonzero(np.r_[True, word[1:] != word[:-1], True])
    return {
        names[int(word[lo])]: (feat[lo:hi], tf[lo:hi])
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    }


def write_postings(postings: Postings, folder: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    for bag in BAGS:
        by_word = postings[bag]
        names[bag] = list(by_word)
        lists = [by_word[w] for w in names[bag]]
        sizes = np.array([f.size for f, _ in lists], dtype=np.int64)
        arrays[f"{bag}.offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"{bag}.features"] = np.concatenate(
            [np.zeros(0, np.int64), *(f for f, _ in lists)]
        ).astype(np.int32)
        arrays[f"{bag}.tf"] = np.concatenate([np.zeros(0), *(t for _, t in lists)]).astype(
            np.float64
        )
    save_file(arrays, folder / POSTINGS_FILE)
    (folder / WORDS_FILE).write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")


def read_postings(folder: Path) -> Postings | None:
    """The stored postings, or None for an index saved without them."""
    if not (folder / POSTINGS_FILE).is_file() or not (folder / WORDS_FILE).is_file():
        return None
    arrays = load_file(folder / POSTINGS_FILE)
    names = json.loads((folder / WORDS_FILE).read_text(encoding="utf-8"))
    out: Postings = {}
    for bag in BAGS:
        offsets = arrays[f"{bag}.offsets"]
        features, tf = arrays[f"{bag}.features"].astype(np.int64), arrays[f"{bag}.tf"]
        out[bag] = {
            w: (features[offsets[i] : offsets[i + 1]], tf[offsets[i] : offsets[i + 1]])
            for i, w in enumerate(names[bag])
        }
    return out
