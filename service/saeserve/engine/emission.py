"""Token emission and the finish policy: a forward's logits become one event per row.

Each row samples its next token with its own parameters and RNG (``sample_next``), then
finishes on the first of: an end-of-sequence token (unless ``ignore_eos``), a stop string
completed in the decoded text (the text up to it is emitted, not the rest), or
``max_new_tokens`` generated. A finished row's last event carries its finish reason and
flushes any text held back for an incomplete UTF-8 character or a possible stop string.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torch import Tensor

from saeserve.engine.running_batch import RunningSequence
from saeserve.engine.sampling import sample_next
from saeserve.engine.types import FinishReason, TokenEvent


def emit(
    rows: Sequence[RunningSequence],
    logits: Tensor,
    tracked: Sequence[Sequence[float]],
    stop_token_ids: Collection[int],
) -> list[TokenEvent]:
    """Sample each row's token from logits [B, V], record it, and say what it adds;
    ``tracked`` [B][n] are the rows' tracked activations at this step."""
    sampled = sample_next(
        logits,
        [s.sampling for s in rows],
        [s.generator for s in rows],
        with_logprobs=any(s.logprobs for s in rows),
        top_n=max(s.top_logprobs for s in rows),
    )
    events = []
    per_row = zip(rows, sampled.tokens, sampled.logprobs, sampled.top, tracked, strict=True)
    for s, tok, lp, top, tr in per_row:
        s.generated.append(tok)
        if tok in stop_token_ids and not s.sampling.ignore_eos:
            s.finished, text = FinishReason.EOS, s.stream.flush()
        else:
            text, stopped = s.stream.push(tok)
            if stopped:
                s.finished = FinishReason.STOP
            elif len(s.generated) >= s.sampling.max_new_tokens:
                s.finished, text = FinishReason.LENGTH, text + s.stream.flush()
        events.append(
            TokenEvent(
                s.request_id,
                s.variant,
                tok,
                text,
                lp if s.logprobs else None,
                list(tr),
                s.finished,
                top_logprobs=top[: s.top_logprobs],
            )
        )
    return events
