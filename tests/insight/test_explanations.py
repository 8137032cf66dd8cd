"""Neuronpedia-style explanations import and generated labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeserve.errors import InvalidArgument, NotFound
from saeserve.insight.explanations import (
    attach_explanations,
    generated_label,
    read_explanations,
)
from saeserve.insight.index import build_index
from saeserve.model.loader import LoadedModel
from saeserve.sae.base import Sae


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_reads_neuronpedia_and_plain_forms(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {
                "modelId": "gpt2-small",
                "layer": "0-res",
                "index": "3",
                "description": " the word the ",
            },
            "",
            {"feature": 5, "explanation": "numbers"},
            {"index": 3, "description": "a second, ignored explanation"},
        ],
    )
    assert read_explanations(path, d_sae=8) == {3: "the word the", 5: "numbers"}
    # filtering by SAE keeps lines of that SAE and lines naming none
    assert read_explanations(path, d_sae=8, sae="7-res") == {
        3: "a second, ignored explanation",
        5: "numbers",
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"e.jsonl:1: not JSON"),
        ('["index", 1]', r"e.jsonl:1: expected an object"),
        ('{"description": "x"}', r"needs an 'index' or 'feature' field"),
        ('{"index": "x1", "description": "x"}', r"index must be an integer"),
        ('{"index": 8, "description": "x"}', r"index 8 is outside \[0, d_sae 8\)"),
        ('{"index": -1, "description": "x"}', r"index -1 is outside"),
        ('{"index": 1}', r"needs a 'description' or 'explanation' string"),
    ],
)
def test_bad_lines_name_the_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [line])
    with pytest.raises(InvalidArgument, match=message):
        read_explanations(path, d_sae=8)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="explanations"):
        read_explanations(tmp_path / "none.jsonl", d_sae=8)


def test_generated_label_orders_by_frequency_then_strength() -> None:
    tokens = [" cat", " dog", " dog", "\n", " cat", " bird"]
    assert generated_label(tokens, [" meow", " purr", " x", " y"], n_tokens=3) == (
        'fires on " cat", " dog", "\\n"; promotes " meow", " purr", " x"'
    )
    assert generated_label([]) == "never fired on the indexed corpus"


def test_build_index_imports_where_given(
    tiny_lm: LoadedModel, tiny_sae: Sae, corpus: list[str]
) -> None:
    index = build_index(
        tiny_lm, tiny_sae, corpus[:2], context_length=16, explanations={2: "bridges"}
    )
    assert (index.explanations[2], index.explanation_sources[2]) == ("bridges", "imported")
    assert index.explanation_sources[3] == "generated"
    attach_explanations(index, {3: "fog"})
    assert index.feature(3).explanation == "fog"
    assert index.explanation_sources[2] == "generated"  # re-attaching replaces everything
