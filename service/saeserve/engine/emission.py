"""Token emission and the finish policy: a forward's logits become one event per row.

Each row samples its next token with its own parameters and RNG (``sample_next``), then
finishes on the first of: an end-of-sequence token (unless ``ignore_eos``), a stop string
completed in the decoded text (the text up to it is emitted, not the rest), a stop
condition that held at this step's input position (the lowest-indexed one is reported;
the token sampled there is still emitted), or ``max_new_tokens`` generated. A finished
row's last event carries its finish reason and flushes any text held back for an
incomplete UTF-8 character or a possible stop string.
A request that asks for ``kl_from_baseline`` gets, on its steered event, the KL divergence
of its two rows' distributions at this step (``divergences``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from saeserve.engine.interventions import SteeringPlan
from saeserve.engine.running_batch import RunningSequence
from saeserve.engine.sampling import sample_next
from saeserve.engine.types import FinishReason, TokenEvent, Variant


def divergences(rows: Sequence[RunningSequence], logits: Tensor) -> dict[int, float]:
    """KL(steered || baseline) in nats, by request id, for each request that asks for it
    and has both its rows in this step: sum_v p_s(v) (log p_s(v) - log p_b(v)) over the
    model's own next-token distributions (logits [B, V], before temperature)."""
    pairs: dict[int, dict[Variant, int]] = {}
    for i, s in enumerate(rows):
        if s.kl_from_baseline:
            pairs.setdefault(s.request_id, {})[s.variant] = i
    both = {rid: p for rid, p in pairs.items() if len(p) == 2}
    if not both:
        return {}
    steered = [p[Variant.STEERED] for p in both.values()]
    baseline = [p[Variant.BASELINE] for p in both.values()]
    log_s = torch.log_softmax(logits[steered].float(), dim=-1)  # [R, V]
    log_b = torch.log_softmax(logits[baseline].float(), dim=-1)
    kl = (log_s.exp() * (log_s - log_b)).sum(dim=-1).clamp_min(0.0)  # [R]
    return dict(zip(both, kl.tolist(), strict=True))


def _first_held(s: RunningSequence, stop_values: Sequence[float]) -> int | None:
    """The index of the row's first stop condition that holds at this step, if any."""
    pairs = zip(s.stop_conditions, stop_values, strict=True)
    return next((j for j, (c, a) in enumerate(pairs) if c.holds(a)), None)


def emit(
    rows: Sequence[RunningSequence],
    logits: Tensor,
    plan: SteeringPlan,
    stop_token_ids: Collection[int],
) -> list[TokenEvent]:
    """Sample each row's token from logits [B, V], record it, and say what it adds; the
    plan holds the rows' tracked and stop-condition activations at this step."""
    sampled = sample_next(
        logits,
        [s.sampling for s in rows],
        [s.generator for s in rows],
        with_logprobs=any(s.logprobs for s in rows),
        top_n=max(s.top_logprobs for s in rows),
    )
    kl = divergences(rows, logits)
    events = []
    per_row = zip(
        rows,
        sampled.tokens,
        sampled.logprobs,
        sampled.top,
        plan.tracked,
        plan.stop_values,
        strict=True,
    )
    for s, tok, lp, top, tr, stop_values in per_row:
        s.generated.append(tok)
        held = _first_held(s, stop_values)
        if tok in stop_token_ids and not s.sampling.ignore_eos:
            s.finished, text = FinishReason.EOS, s.stream.flush()
        else:
            text, stopped = s.stream.push(tok)
            if stopped:
                s.finished = FinishReason.STOP
            elif held is not None:
                s.finished, text = FinishReason.CONDITION, text + s.stream.flush()
            elif len(s.generated) >= s.sampling.max_new_tokens:
                s.finished, text = FinishReason.LENGTH, text + s.stream.flush()
        condition = held if s.finished is FinishReason.CONDITION else None
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
                kl_from_baseline=kl.get(s.request_id) if s.variant is Variant.STEERED else None,
                stop_condition=condition,
                stop_activation=None if condition is None else stop_values[condition],
            )
        )
    return events
