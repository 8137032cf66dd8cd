"""``saeserve index`` end to end on the tiny model, and its corpus reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeserve.cli import main
from saeserve.insight.cli import read_corpus
from saeserve.insight.store import FeatureIndex
from saeserve.sae.base import Sae
from saeserve.sae.formats import write_sae


def test_read_corpus_regroups_paragraphs(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("one two\n\n\n\nthree\n\nfour five six\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("alpha\n\nbeta")
    (tmp_path / "skip.md").write_text("not read")
    texts = list(read_corpus(tmp_path, text_chars=10))
    # files in path order (b.txt < sub/a.txt); a text closes once it reaches 10 characters
    assert texts == ["one two\n\nthree", "four five six", "alpha\n\nbeta"]


def test_index_command_writes_a_loadable_index(
    tiny_folder: Path, tiny_sae: Sae, corpus: list[str], tmp_path: Path
) -> None:
    sae_dir = write_sae(tiny_sae, tmp_path / "sae")
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus))
    (tmp_path / "e.jsonl").write_text(json.dumps({"index": 1, "description": "fog"}) + "\n")
    out = tmp_path / "out"
    argv = ["index", "--model", str(tiny_folder), "--sae", str(sae_dir)]
    argv += ["--corpus", str(tmp_path / "corpus.txt"), "--out", str(out)]
    argv += ["--explanations", str(tmp_path / "e.jsonl"), "--max-tokens", "100"]
    argv += ["--context-length", "16", "--no-progress", "--device", "cpu"]
    argv += ["--quantile-bands", "2", "--samples-per-band", "3", "--sample-seed", "9"]
    assert main(argv) == 0
    index = FeatureIndex.load(out)
    assert index.meta.n_tokens == 100 and index.meta.hook_point == "resid_post.0"
    assert (index.meta.quantile_bands, index.meta.samples_per_band) == (2, 3)
    assert index.meta.sample_seed == 9 and index.sample_context.shape == (index.d_sae, 6)
    assert index.feature(1).explanation == "fog"
    assert index.explanation_sources.count("imported") == 1


def test_index_command_reports_bad_input(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["index", "--model", str(tiny_folder), "--sae", str(tmp_path / "nope")]
    argv += ["--corpus", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(argv) == 2
    assert "saeserve index:" in capsys.readouterr().err


def test_index_command_names_the_memory_budget_it_would_pass(
    tiny_folder: Path,
    tiny_sae: Sae,
    corpus: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sae_dir = write_sae(tiny_sae, tmp_path / "sae")
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus))
    argv = ["index", "--model", str(tiny_folder), "--sae", str(sae_dir), "--device", "cpu"]
    argv += ["--corpus", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--memory-budget", "0.00001"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--checkpoint-every", "40", "--progress-every", "0"]) == 0
    err = capsys.readouterr().err
    assert "tokens (" in err and "tok/s, ETA" in err  # progress lines on stderr
    assert not (tmp_path / "o.checkpoint").exists()  # removed once the index is written
    assert FeatureIndex.load(tmp_path / "o").meta.n_tokens > 0
