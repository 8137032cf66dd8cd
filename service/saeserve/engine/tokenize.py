"""Tokenization with per-token strings and UTF-8 byte offsets.

Offsets are in bytes of the UTF-8 encoded text (what gRPC clients in any language can
slice), converted from the fast tokenizer's character offsets. Special tokens the
tokenizer adds (e.g. BOS) get the empty span (0, 0). A token's string is
``tokenizer.decode([id])``, remembered per tokenizer: decoding one id at a time through
``transformers`` costs more than the whole encode.

Work is bounded before it starts: ``check_text_size`` refuses a text longer than
``max_tokens`` tokens could possibly cover (``max_bytes_per_token``, from the vocabulary)
without tokenizing or even encoding it, so no input makes the tokenizer run in proportion
to an unchecked size.
"""

from __future__ import annotations

import weakref
from itertools import accumulate
from typing import Any, cast

from transformers import PreTrainedTokenizerBase

from saeserve.engine.types import Tokenization
from saeserve.errors import FailedPrecondition, InvalidArgument

_TOKEN_STRINGS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[int, str]] = (
    weakref.WeakKeyDictionary()
)
_BYTES_PER_TOKEN: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, int] = (
    weakref.WeakKeyDictionary()
)
INPUT_BYTES_PER_PIECE_BYTE = 4
"""A vocabulary piece's byte stands for at most this many bytes of input: one UTF-8
character (at most 4 bytes) that normalization may have folded into a 1-byte piece."""


def max_bytes_per_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the UTF-8 bytes of input one token covers, from the longest
    vocabulary piece (byte-level pieces spell each input byte as one character; the bound
    also holds when normalization shortened the text). Computed once per tokenizer."""
    bound = _BYTES_PER_TOKEN.get(tokenizer)
    if bound is None:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        longest = max((len(p.encode("utf-8")) for p in pieces if p), default=1)
        bound = _BYTES_PER_TOKEN[tokenizer] = INPUT_BYTES_PER_PIECE_BYTE * longest
    return bound


def check_text_size(
    tokenizer: PreTrainedTokenizerBase, size: int, *, max_tokens: int, field_name: str
) -> None:
    """InvalidArgument if ``size`` (a text's characters or UTF-8 bytes; both bound its
    bytes from below) is more than ``max_tokens`` tokens of this tokenizer can cover."""
    limit = max_tokens * max_bytes_per_token(tokenizer)
    if size > limit:
        raise InvalidArgument(
            f"{field_name}: {size} bytes is more than {max_tokens} tokens can cover "
            f"(at most {limit} bytes for this model; limits.max_tokens_per_text)"
        )


def check_text(
    tokenizer: PreTrainedTokenizerBase, text: str, *, max_tokens: int, field_name: str
) -> None:
    """``check_text_size`` for one text: its length first (no copy), then its bytes."""
    check_text_size(tokenizer, len(text), max_tokens=max_tokens, field_name=field_name)
    check_text_size(
        tokenizer, len(text.encode("utf-8")), max_tokens=max_tokens, field_name=field_name
    )


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    max_tokens: int,
    field_name: str = "text",
) -> Tokenization:
    """Tokenize one text; InvalidArgument if it is empty or longer than max_tokens."""
    if not text:
        raise InvalidArgument(f"{field_name}: must not be empty")
    check_text(tokenizer, text, max_tokens=max_tokens, field_name=field_name)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = list(enc["input_ids"])
    if not ids:
        raise InvalidArgument(f"{field_name}: produced no tokens")
    if len(ids) > max_tokens:
        raise InvalidArgument(f"{field_name}: {len(ids)} tokens exceeds the limit of {max_tokens}")
    # byte_at[i] = UTF-8 byte offset of character i
    byte_at = [0, *accumulate(len(ch.encode("utf-8")) for ch in text)]
    offsets = [(byte_at[s], byte_at[e]) for s, e in enc["offset_mapping"]]
    return Tokenization(token_ids=ids, tokens=token_strings(tokenizer, ids), offsets=offsets)


def single_token_id(tokenizer: PreTrainedTokenizerBase, text: str, *, field_name: str) -> int:
    """The id of the one token ``text`` encodes to (no special tokens added);
    InvalidArgument when it is empty, longer than one token can cover, or several tokens."""
    if not text:
        raise InvalidArgument(f"{field_name}: must not be empty")
    limit = max_bytes_per_token(tokenizer)
    if len(text) > limit or len(text.encode("utf-8")) > limit:  # characters first: no copy
        raise InvalidArgument(
            f"{field_name}: longer than one token of this model covers (at most {limit} bytes)"
        )
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise InvalidArgument(
            f"{field_name}: {text!r} is {len(ids)} tokens {ids}, not one; name one token"
        )
    return int(ids[0])


def chat_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[tuple[str, str]],
    *,
    max_tokens: int,
    field_name: str = "messages",
    model: str = "",
) -> list[int]:
    """The ids of (role, content) messages rendered by the tokenizer's chat template, with
    the generation prompt; FailedPrecondition without a template, InvalidArgument if longer
    than max_tokens."""
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(f"{field_name}: model {model!r} has no chat template")
    size = sum(len(r) + len(c) for r, c in messages)  # characters: no copy of any text
    check_text_size(tokenizer, size, max_tokens=max_tokens, field_name=field_name)
    encoded = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    ids = [int(i) for i in cast(Any, encoded)["input_ids"]]
    if len(ids) > max_tokens:
        raise InvalidArgument(f"{field_name}: {len(ids)} tokens > limit {max_tokens}")
    return ids


def token_strings(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """``tokenizer.decode([i])`` for each id, each distinct id decoded once per tokenizer."""
    cache = _TOKEN_STRINGS.get(tokenizer)
    if cache is None:
        cache = _TOKEN_STRINGS.setdefault(tokenizer, {})
    missing = [i for i in set(ids) if i not in cache]
    for i in missing:
        cache[i] = str(tokenizer.decode([i]))
    return [cache[i] for i in ids]
