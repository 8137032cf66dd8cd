"""Streaming text deltas: stop strings are never streamed, partial UTF-8 is held back."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from saeserve.engine.detokenize import TextStream


def _stream(path: Path, text: str, stop: list[str]) -> tuple[list[str], bool, str]:
    tok = AutoTokenizer.from_pretrained(path)
    ts = TextStream(tok, stop)
    deltas, stopped = [], False
    for i in tok(text, add_special_tokens=False)["input_ids"]:
        delta, stopped = ts.push(i)
        deltas.append(delta)
        if stopped:
            break
    return deltas, stopped, ts.flush()


def test_stop_string_ends_the_stream_and_is_not_released(gpt2_path: Path) -> None:
    deltas, stopped, _ = _stream(gpt2_path, "Hello world. Stop here, more text", ["Stop", "never"])
    assert stopped
    assert "".join(deltas) == "Hello world. "


def test_text_without_stop_is_released_whole(gpt2_path: Path) -> None:
    text = "The river runs to the sea; café ü ø."
    deltas, stopped, rest = _stream(gpt2_path, text, ["zzz"])
    assert not stopped
    assert "".join(deltas) + rest == text
    assert all("\\ufffd" not in d for d in deltas)


def test_prefix_of_a_stop_string_is_held_until_resolved(gpt2_path: Path) -> None:
    deltas, stopped, rest = _stream(gpt2_path, "ab Sto ab", ["Stop"])
    assert not stopped
    assert "".join(deltas) + rest == "ab Sto ab"


class _DecodeOnly:
    """A tokenizer with decode() but no Rust backend (a slow tokenizer)."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    def decode(self, ids: list[int], **kwargs: object) -> str:
        return str(self._tokenizer.decode(ids, **kwargs))  # type: ignore[attr-defined]


def test_a_tokenizer_without_a_rust_backend_streams_the_same_text(gpt2_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(gpt2_path)
    ids = tok("The river runs to the sea; café ü ø. Stop", add_special_tokens=False)["input_ids"]
    fast, slow = TextStream(tok, ["Stop"]), TextStream(_DecodeOnly(tok), ["Stop"])  # type: ignore[arg-type]
    assert [fast.push(i) for i in ids] == [slow.push(i) for i in ids]
    assert fast.flush() == slow.flush()
