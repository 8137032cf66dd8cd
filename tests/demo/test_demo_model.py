"""Tests of the built-in demo model and of the steps that build it.

The committed model folder must load offline through the ordinary transformers Auto
classes and write text; the corpus cleaning, splitting and R-data reading are checked on
tiny hand-made inputs; the tokenizer and trainer run end to end on a few hundred words.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from saeserve.demo import DEMO_MODEL_DIR, corpus, rdata, sources, tokenizer, train_lm
from saeserve.demo.sources import Document

MODEL_DIR = DEMO_MODEL_DIR


# --- the committed model -----------------------------------------------------------------


def test_committed_model_loads_offline_and_writes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    assert model.config.model_type == "gpt2"
    assert tok.eos_token == corpus.EOT and tok.eos_token_id == model.config.eos_token_id
    assert len(tok) == model.config.vocab_size
    ids = tok("It is a truth universally acknowledged, that", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text.strip(), "greedy continuation is empty"
    assert any(c.isalpha() for c in text)


def test_committed_model_folder_is_small() -> None:
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert size < 20 * 2**20


# --- corpus cleaning and splitting -------------------------------------------------------


def test_normalize_maps_typography_and_whitespace() -> None:
    assert corpus.normalize("\u201cYes\u201d \u2014 she\u2019s\n\n  here\u2026") == (
        '"Yes" -- she\'s here...'
    )


def test_is_prose_rejects_code_markup_and_boilerplate() -> None:
    assert corpus.is_prose("The module defines a standard interface to URLs.", 5)
    assert not corpus.is_prose("x = {'a': 1, 'b': [2, 3]} # 42", 1)
    assert not corpus.is_prose("Next: Install, Previous: Build, Up: Top [Contents][Index]", 1)
    assert not corpus.is_prose("See also", 1)
    assert not corpus.is_prose("Too short here.", 5)
    assert corpus.is_prose('"Yes."', 1)


def test_lines_to_paragraphs_and_chapters() -> None:
    lines = ["TITLE", "", "Chapter 1", "", "It is a truth", "universally known.", "", "Next."]
    chapters = sources.split_chapters(lines)
    assert chapters == [["TITLE", ""], ["", "It is a truth", "universally known.", "", "Next."]]
    assert sources.lines_to_paragraphs(chapters[1]) == ["It is a truth universally known.", "Next."]


def test_html_paragraphs_keep_prose_and_skip_code_and_navigation() -> None:
    html = """
    <div class="related"><p>Previous topic</p></div>
    <div role="main"><p>Use <code>len()</code> to count &amp; measure.</p>
    <div class="highlight"><pre>print("code")</pre></div>
    <div class="para">A handbook paragraph.</div><p>unclosed one<p>two</p></div>
    """
    assert sources.html_paragraphs(html) == [
        "Use len() to count & measure.",
        "A handbook paragraph.",
        "unclosed one",
        "two",
    ]


def _doc(doc_id: str, *paragraphs: str) -> Document:
    return Document("fortunes", doc_id, paragraphs)


def test_clean_corpus_dedups_paragraphs_and_documents() -> None:
    long = "This sentence has more than eight words in it, so it is deduplicated."
    docs = [
        _doc("a", long, '"Yes."'),
        _doc("b", long.upper(), "Another paragraph that is new.", '"Yes."'),
        _doc("c", "Another paragraph that is new.", '"Yes."'),  # same text as b after dedup
    ]
    stats = corpus.CorpusStats(Path("t"), Path("v"))
    train, valid = corpus.clean_corpus(docs, stats, valid_fraction=0.0)
    assert valid == []
    assert [d.text for d in train] == [
        f'{long}\n\n"Yes."',
        'Another paragraph that is new.\n\n"Yes."',
    ]
    assert stats.duplicate_paragraphs == 1 and stats.duplicate_documents == 1


def test_split_is_stable_and_close_to_the_fraction() -> None:
    keys = [f"src/doc{i}" for i in range(20000)]
    picked = [k for k in keys if corpus.is_validation(k, 0.02)]
    assert picked == [k for k in keys if corpus.is_validation(k, 0.02)]
    assert 0.015 < len(picked) / len(keys) < 0.025
    assert set(picked) <= {k for k in keys if corpus.is_validation(k, 0.05)}


def test_documents_round_trip(tmp_path: Path) -> None:
    docs = ["First doc.\n\nSecond paragraph.", "Second doc."]
    corpus.write_documents(tmp_path / "x.txt", docs)
    assert corpus.read_documents(tmp_path / "x.txt") == docs


def test_missing_package_is_reported_with_the_install_command() -> None:
    with pytest.raises(RuntimeError, match="apt-get install -y --no-install-recommends"):
        corpus.ensure_packages(packages=("saeserve-no-such-package",))


# --- R lazy-load data --------------------------------------------------------------------


def _xdr_character_vector(values: list[str]) -> bytes:
    out = b"X\n" + struct.pack(">iii", 2, 0x040202, 0x020300)
    out += struct.pack(">ii", 16, len(values))  # STRSXP
    for v in values:
        raw = v.encode()
        out += struct.pack(">ii", 9 | (1 << 15), len(raw)) + raw  # CHARSXP, UTF-8 flag
    return out


def test_rdata_reads_a_character_vector_entry() -> None:
    payload = _xdr_character_vector(["It is a truth", ""])
    entry = struct.pack(">I", len(payload)) + zlib.compress(payload)
    obj = rdata.unserialize(rdata._decompress(entry))
    assert isinstance(obj, rdata.RObject)
    assert obj.kind == "character" and obj.value == ["It is a truth", ""]


@pytest.mark.skipif(not sources.SOURCES[0].path.exists(), reason="r-cran-janeaustenr not installed")
def test_rdata_reads_the_austen_package() -> None:
    novels = rdata.read_character_vectors(sources.SOURCES[0].path)
    assert len(novels["prideprejudice"]) == 13030
    assert novels["prideprejudice"][9].startswith("It is a truth universally acknowledged")


# --- tokenizer and trainer end to end ----------------------------------------------------

_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. The Python interpreter reads a line and runs it. "
)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    out = tmp_path / "corpus"
    out.mkdir()
    corpus.write_documents(out / "train.txt", [_TEXT * 3 + str(i) for i in range(40)])
    corpus.write_documents(out / "valid.txt", [_TEXT * 2])
    return out


def test_tokenizer_loads_as_a_fast_tokenizer(tiny_corpus: Path, tmp_path: Path) -> None:
    path = tokenizer.train_tokenizer(tiny_corpus / "train.txt", tmp_path / "tok", vocab_size=300)
    assert path.name == "tokenizer.json"
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.is_fast and len(tok) == 300
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    ids = tok("a good fortune <|endoftext|>").input_ids
    assert ids[-1] == 0
    assert tok.decode(ids[:-1]) == "a good fortune "


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = train_lm.TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert train_lm.lr_at(0, cfg) == pytest.approx(0.1)
    assert train_lm.lr_at(9, cfg) == pytest.approx(1.0)
    assert train_lm.lr_at(60, cfg) == pytest.approx(0.55)
    assert train_lm.lr_at(110, cfg) == pytest.approx(0.1)


def test_every_config_field_has_a_docstring() -> None:
    docs = train_lm.field_docs(train_lm.TrainConfig)
    assert set(docs) == {f for f in train_lm.TrainConfig.__dataclass_fields__}


def _tiny_config(corpus_dir: Path, tmp_path: Path, name: str) -> train_lm.TrainConfig:
    return train_lm.TrainConfig(
        corpus_dir=corpus_dir,
        tokenizer_dir=tmp_path / "tok",
        out_dir=tmp_path / name / "model",
        checkpoint_dir=tmp_path / name / "ckpt",
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=16,
        batch_size=4,
        max_steps=4,
        warmup_steps=1,
        eval_every=2,
        checkpoint_every=2,
        log_every=2,
        bf16=False,
    )


def test_train_lm_saves_a_loadable_model(tiny_corpus: Path, tmp_path: Path) -> None:
    tokenizer.train_tokenizer(tiny_corpus / "train.txt", tmp_path / "tok", vocab_size=300)
    cfg = _tiny_config(tiny_corpus, tmp_path, "run")
    stream = train_lm.tokenize_corpus(
        tiny_corpus / "train.txt", AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    )
    assert train_lm.train_batch(stream, 3, cfg).shape == (4, 17)
    assert torch.equal(train_lm.train_batch(stream, 3, cfg), train_lm.train_batch(stream, 3, cfg))
    result = train_lm.train_lm(cfg)
    assert result.steps == 4 and result.tokens == 4 * 4 * 16
    assert [h["step"] for h in result.history] == [2, 4]
    model = AutoModelForCausalLM.from_pretrained(cfg.out_dir)
    assert model.num_parameters() == result.parameters
    assert (cfg.out_dir / "training.json").exists()


def test_train_lm_resumes_identically(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer.train_tokenizer(tiny_corpus / "train.txt", tmp_path / "tok", vocab_size=300)
    straight = train_lm.train_lm(_tiny_config(tiny_corpus, tmp_path, "straight"))

    cfg = _tiny_config(tiny_corpus, tmp_path, "resumed")
    lr_at = train_lm.lr_at

    def interrupt_at_step_2(step: int, c: train_lm.TrainConfig) -> float:
        if step == 2:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return lr_at(step, c)

    monkeypatch.setattr(train_lm, "lr_at", interrupt_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_lm.train_lm(cfg)
    monkeypatch.setattr(train_lm, "lr_at", lr_at)
    resumed = train_lm.train_lm(cfg)

    assert resumed.history == straight.history
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(cfg.out_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
