"""Tokenization within bounds: a text too long for the token limit is refused before the
tokenizer runs, and the bound never refuses a text that fits."""

from __future__ import annotations

import pytest

from saeserve.engine.served_model import ServedModel
from saeserve.engine.tokenize import (
    chat_token_ids,
    check_text,
    max_bytes_per_token,
    tokenize,
)
from saeserve.errors import InvalidArgument


def test_the_bound_covers_every_token_of_real_text(served: ServedModel) -> None:
    """No token of a text spans more input bytes than the bound (offsets by hand)."""
    tok = served.lm.tokenizer
    bound = max_bytes_per_token(tok)
    text = "Once upon a time,     in a land far away... ünïcödé ✓ 1234567890 " * 4
    enc = tok(text, return_offsets_mapping=True)
    spans = [len(text[s:e].encode()) for s, e in enc["offset_mapping"]]
    assert max(spans) <= bound
    tokenize(tok, text, max_tokens=len(enc["input_ids"]))  # exactly at the limit: accepted


def test_a_text_longer_than_the_limit_can_cover_is_refused_untokenized(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = served.lm.tokenizer
    calls: list[object] = []
    real_call = type(tok).__call__
    monkeypatch.setattr(
        type(tok), "__call__", lambda self, *a, **k: calls.append(a) or real_call(self, *a, **k)
    )
    huge = "a" * (10 * 4 * max_bytes_per_token(tok))
    with pytest.raises(
        InvalidArgument, match=r"^prompt: .*more than 4 tokens can cover.*max_tokens_per_text"
    ):
        tokenize(tok, huge, max_tokens=4, field_name="prompt")
    assert calls == []  # the tokenizer never saw it
    with pytest.raises(InvalidArgument, match="more than"):
        check_text(tok, "é" * (2 * max_bytes_per_token(tok)), max_tokens=1, field_name="t")


def test_chat_messages_are_bounded_by_their_total_size(served: ServedModel) -> None:
    tok = served.lm.tokenizer
    if not getattr(tok, "chat_template", None):
        pytest.skip("this tiny model has no chat template")
    big = "word " * (max_bytes_per_token(tok) * 8)
    with pytest.raises(InvalidArgument, match=r"^messages: .*more than 8 tokens can cover"):
        chat_token_ids(tok, [("user", big)], max_tokens=8, field_name="messages")
