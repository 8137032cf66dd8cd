"""Incremental detokenization with stop strings, for streaming.

Each pushed token yields the text it adds. Text is held back while it ends in an
incomplete UTF-8 character or in a prefix of a stop string, so a stop string is never
streamed; when one matches, the text before it is released and the stream ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"  # what decode() yields for a partial UTF-8 sequence


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # a fast tokenizer's Rust decoder gives what decode() gives without its wrapper
        # (half the time per token; this runs for every row at every step)
        self._decode: Callable[[list[int]], str] = (
            functools.partial(backend.decode, skip_special_tokens=False)
            if backend is not None
            else self._decode_slow
        )
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of self.text already released

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns (newly released text, whether a stop string matched)."""
        self.ids.append(token_id)
        self.text = self._decode(self.ids)
        complete = self.text.rstrip(_REPLACEMENT)
        match = self._first_stop(complete)
        if match is not None:
            delta = complete[self.emitted : match]
            self.emitted = match
            return delta, True
        safe = len(complete) - self._held_prefix(complete)
        delta = complete[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return delta, False

    def _decode_slow(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def flush(self) -> str:
        """Release everything not yet released (at the end of generation)."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def _first_stop(self, text: str) -> int | None:
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.emitted - longest)
        hits = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_prefix(self, text: str) -> int:
        """Length of the longest suffix of text that begins some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
