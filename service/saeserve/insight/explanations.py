"""Feature explanations: import a Neuronpedia-style JSONL, or label from top tokens.

An explanations file has one JSON object per line naming a feature and describing it.
The feature is ``"index"`` (Neuronpedia's export) or ``"feature"``, an int or a string
of digits; the text is ``"description"`` (Neuronpedia) or ``"explanation"``. Other
fields (``modelId``, ``explanationModelName``, scores) are ignored; where a file covers
several SAEs, ``sae`` keeps only lines whose ``"layer"`` (Neuronpedia's SAE id) or
``"sae"`` equals it. The first explanation of a feature wins.

Features without one get a generated label built from the tokens they fire on most
(the max token of each top context, by frequency) and the tokens they promote most,
e.g. ``fires on " the", " a"; promotes " cat"``, with source ``generated``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from saeserve.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from saeserve.insight.store import FeatureIndex

IMPORTED = "imported"
GENERATED = "generated"
INDEX_KEYS = ("index", "feature")
TEXT_KEYS = ("description", "explanation")
DEAD_LABEL = "never fired on the indexed corpus"


def read_explanations(path: str | Path, d_sae: int, *, sae: str | None = None) -> dict[int, str]:
    """Feature -> explanation text from a JSONL file (see the module docstring)."""
    src = Path(path)
    if not src.is_file():
        raise NotFound(f"explanations: no file {src}")
    out: dict[int, str] = {}
    with src.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"explanations {src.name}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise InvalidArgument(f"{where}: expected an object, got {type(record).__name__}")
            if sae is not None and str(record.get("layer", record.get("sae", sae))) != sae:
                continue
            feature = _feature_of(record, where, d_sae)
            text = _text_of(record, where)
            out.setdefault(feature, text)
    return out


def _feature_of(record: dict[str, object], where: str, d_sae: int) -> int:
    key = next((k for k in INDEX_KEYS if k in record), None)
    if key is None:
        raise InvalidArgument(f"{where}: needs an 'index' or 'feature' field")
    raw = record[key]
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidArgument(f"{where}: {key} must be an integer, got {raw!r}")
    try:
        feature = int(raw)
    except ValueError:
        raise InvalidArgument(f"{where}: {key} must be an integer, got {raw!r}") from None
    if not 0 <= feature < d_sae:
        raise InvalidArgument(f"{where}: {key} {feature} is outside [0, d_sae {d_sae})")
    return feature


def _text_of(record: dict[str, object], where: str) -> str:
    key = next((k for k in TEXT_KEYS if k in record), None)
    if key is None or not isinstance(record[key], str):
        raise InvalidArgument(f"{where}: needs a 'description' or 'explanation' string")
    return str(record[key]).strip()


def generated_label(
    top_tokens: Sequence[str],
    promoted: Sequence[str] = (),
    *,
    n_tokens: int = 5,
    n_promoted: int = 3,
) -> str:
    """A short label: the most frequent max-activating tokens, then the top promoted ones.

    ``top_tokens`` are the max tokens of the top contexts, strongest first; ties in
    frequency keep that order. Tokens are JSON-quoted so spaces and newlines show.
    """
    if not top_tokens:
        return DEAD_LABEL
    counts = Counter(top_tokens)
    first = {tok: i for i, tok in reversed(list(enumerate(top_tokens)))}
    ranked = sorted(counts, key=lambda tok: (-counts[tok], first[tok]))[:n_tokens]
    label = "fires on " + ", ".join(json.dumps(t, ensure_ascii=False) for t in ranked)
    if promoted and n_promoted > 0:
        label += "; promotes " + ", ".join(
            json.dumps(t, ensure_ascii=False) for t in promoted[:n_promoted]
        )
    return label


def attach_explanations(index: FeatureIndex, imported: Mapping[int, str] | None = None) -> None:
    """Fill ``index.explanations``: imported where given, generated labels elsewhere."""
    imported = imported or {}
    for f in range(index.d_sae):
        text = imported.get(f)
        if text is not None:
            index.explanations[f] = text
            index.explanation_sources[f] = IMPORTED
            continue
        promoted = [index.token_text(t) for t in index.promoted_ids[f].tolist()]
        index.explanations[f] = generated_label(index.top_tokens(f), promoted)
        index.explanation_sources[f] = GENERATED
    index.postings = None  # the explanation bag changed
