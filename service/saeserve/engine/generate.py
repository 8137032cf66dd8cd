"""Batched, steered generation with a KV cache; sequences join and leave between steps.

``BatchGenerator`` keeps one left-padded batch of running sequences and their KV cache.
Each ``step()`` runs one decode forward for the running rows, then prefills newly
submitted sequences in one forward and merges their cache into the batch, so a new
stream never waits for the others. Finished and cancelled rows are dropped before the
next step. Position ids are explicit per row, so padding never changes a result.

Each row carries its own interventions, sampling parameters and RNG; the batch's
``SteeringPlan`` is rebuilt only when rows join or leave, and its decode hooks stay
installed (acting only inside this generator's decode forwards) until then.
``include_baseline`` adds an unsteered twin with the same seed.

    gen = BatchGenerator(served)
    rid = gen.submit(GenerateRequest(prompt_ids=ids, sampling=SamplingParams(max_new_tokens=20)))
    while gen.has_work():
        for event in gen.step(): ...

``generate(served, request)`` wraps this for a single request as an iterator; closing the
iterator cancels the work.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from saeserve.engine.detokenize import TextStream
from saeserve.engine.interventions import (
    ResolvedIntervention,
    SteeringPlan,
    resolve_interventions,
    resolve_tracked,
)
from saeserve.engine.kv_cache import growing_cache
from saeserve.engine.sampling import sample_next
from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import (
    EngineLimits,
    FinishReason,
    GenerateLimits,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
    Variant,
)
from saeserve.errors import InvalidArgument, ResourceExhausted
from saeserve.model.hookpoints import HookFn, HookPoint, hooked


@dataclass
class _Sequence:
    request_id: int
    variant: Variant
    prompt_ids: list[int]
    sampling: SamplingParams
    interventions: list[ResolvedIntervention]
    tracked: list[tuple[HookedSae, int]]
    logprobs: bool
    top_logprobs: int
    generator: torch.Generator
    stream: TextStream
    generated: list[int] = field(default_factory=list)
    finished: FinishReason | None = None

    @property
    def next_position(self) -> int:
        """Position of the token fed at the next decode step (the last generated one)."""
        return len(self.prompt_ids) + len(self.generated) - 1


@dataclass
class _Batch:
    """Running rows, their left-padded attention mask and KV cache, and their steering.

    The mask lives in ``mask_buffer`` [B, capacity], grown in chunks, so a decode step
    does not copy it; ``mask`` is its first ``length`` columns. ``plan`` is built once per
    composition of the batch (rows joining or leaving), not once per step.
    """

    rows: list[_Sequence]
    mask_buffer: Tensor
    length: int
    cache: DynamicCache
    plan: SteeringPlan

    @property
    def mask(self) -> Tensor:
        return self.mask_buffer[:, : self.length]

    @classmethod
    def of(cls, rows: list[_Sequence], mask: Tensor, cache: DynamicCache) -> _Batch:
        return cls(rows, mask, mask.shape[1], cache, _plan(rows))

    def extend_mask(self) -> Tensor:
        """The mask with one more real column for every row."""
        if self.length == self.mask_buffer.shape[1]:
            grow = self.mask_buffer.new_zeros(len(self.rows), _MASK_CHUNK)
            self.mask_buffer = torch.cat([self.mask_buffer, grow], dim=-1)
        self.mask_buffer[:, self.length] = 1
        self.length += 1
        return self.mask


_MASK_CHUNK = 256
"""Columns the attention mask grows by when a decode step reaches its end."""


def _plan(rows: list[_Sequence]) -> SteeringPlan:
    return SteeringPlan([s.interventions for s in rows], [s.tracked for s in rows])


class BatchGenerator:
    """Step-level batched generation; see the module docstring."""

    def __init__(
        self,
        served: ServedModel,
        *,
        max_batch_size: int = 32,
        limits: GenerateLimits | None = None,
    ) -> None:
        self.served = served
        self.max_batch_size = max_batch_size
        self.limits = limits or EngineLimits()
        """What a request is validated against (the server passes its own)."""
        self._ids = itertools.count(1)
        self._pending: list[_Sequence] = []
        self._batch: _Batch | None = None
        self._cancelled: set[int] = set()
        self.steps = 0
        """Forward passes run so far (prefills and decode steps)."""
        self._decode_hooks = contextlib.ExitStack()
        weakref.finalize(self, self._decode_hooks.close)  # a generator dropped mid-batch
        self._hooked_plan: SteeringPlan | None = None
        self._decoding = False
        """True only inside this generator's decode forwards (the gate of its hooks)."""

    # --- requests ----------------------------------------------------------------------
    def submit(self, req: GenerateRequest) -> int:
        """Validate and queue a request; returns its id. Raises the engine's typed errors."""
        lm = self.served.lm
        if not req.prompt_ids:
            raise InvalidArgument("prompt: must not be empty")
        vocab = lm.vocab_size
        if any(not 0 <= t < vocab for t in req.prompt_ids):
            raise InvalidArgument(f"prompt_ids: token ids must be in [0, {vocab})")
        req.validate(self.limits)
        total = len(req.prompt_ids) + req.sampling.max_new_tokens
        if total > lm.max_positions:
            raise InvalidArgument(
                f"prompt: {len(req.prompt_ids)} tokens + max_new_tokens {req.sampling.max_new_tokens} "
                f"exceeds the model's context of {lm.max_positions}"
            )
        interventions = resolve_interventions(self.served, req.interventions, len(req.prompt_ids))
        tracked = resolve_tracked(self.served, req.track)
        if self.n_sequences + 1 + req.include_baseline > self.max_batch_size:
            raise ResourceExhausted(f"generation batch is full ({self.max_batch_size} sequences)")
        rid = next(self._ids)
        seed = req.sampling.seed if req.sampling.seed is not None else random.getrandbits(63)
        variants = [(Variant.STEERED, interventions)]
        if req.include_baseline:
            variants.append((Variant.BASELINE, []))
        for variant, ivs in variants:
            gen = torch.Generator(device=lm.device)
            gen.manual_seed(seed)
            self._pending.append(
                _Sequence(
                    request_id=rid,
                    variant=variant,
                    prompt_ids=list(req.prompt_ids),
                    sampling=req.sampling,
                    interventions=ivs,
                    tracked=tracked,
                    logprobs=req.logprobs,
                    top_logprobs=req.top_logprobs,
                    generator=gen,
                    stream=TextStream(lm.tokenizer, req.sampling.stop),
                )
            )
        return rid

    def cancel(self, request_id: int) -> None:
        """Stop a request; its rows leave the batch before the next forward."""
        self._cancelled.add(request_id)
        self._pending = [s for s in self._pending if s.request_id != request_id]

    @property
    def n_sequences(self) -> int:
        return len(self._pending) + (len(self._batch.rows) if self._batch else 0)

    def has_request(self, request_id: int) -> bool:
        """Whether any variant of the request is still queued or generating."""
        running = self._batch.rows if self._batch else []
        return any(
            s.request_id == request_id and s.finished is None and request_id not in self._cancelled
            for s in [*self._pending, *running]
        )

    def has_work(self) -> bool:
        self._drop_finished()
        return bool(self._pending or self._batch)

    # --- stepping ----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """One token for every running and every newly admitted sequence.

        The model is only touched here (hooks included), so a caller that serializes
        forward passes with a lock needs to hold it only around ``step()``.
        """
        self._drop_finished()
        events: list[TokenEvent] = []
        if self._batch is not None:
            events += self._decode(self._batch)
        else:
            self._drop_decode_hooks()
        if self._pending:
            joining, self._pending = self._pending, []
            batch, new_events = self._prefill(joining)
            events += new_events
            self._batch = batch if self._batch is None else _merge(self._batch, batch)
        self._cancelled.clear()
        return events

    def _prefill(self, seqs: list[_Sequence]) -> tuple[_Batch, list[TokenEvent]]:
        dev = self.served.lm.device
        n = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros((len(seqs), n), dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, n - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, n - len(s.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        token_pos = torch.where(mask.bool(), mask.cumsum(-1) - 1, -1)  # [b, n]
        batch = _Batch.of(seqs, mask, growing_cache())
        prompt_lens = torch.tensor([len(s.prompt_ids) for s in seqs], device=dev)
        fns = batch.plan.hook_fns(token_pos, prompt_lens)
        logits = self._forward(ids, mask, token_pos.clamp_min(0), batch.cache, fns)
        return batch, self._emit(seqs, logits, batch.plan)

    def _decode(self, batch: _Batch) -> list[TokenEvent]:
        dev = self.served.lm.device
        ids = torch.tensor([[s.generated[-1]] for s in batch.rows], device=dev)
        position_ids = torch.tensor([[s.next_position] for s in batch.rows], device=dev)
        mask = batch.extend_mask()
        self._keep_decode_hooks(batch.plan)
        self._decoding = True
        try:
            logits = self._forward(ids, mask, position_ids, batch.cache, {})
        finally:
            self._decoding = False
        return self._emit(batch.rows, logits, batch.plan)

    def _keep_decode_hooks(self, plan: SteeringPlan) -> None:
        """Install the plan's decode hooks once and keep them between steps.

        Installing and removing hooks on every step costs about as much as the steering
        itself at batch 1 on CPU. Between this generator's decode forwards the hooks
        stay on the model but do nothing, so forwards by anyone else (a Decompose between
        two steps, a prefill) see an unhooked model. They are removed by the first
        ``step()`` after the batch's composition changes or it empties (never outside
        ``step()``: another thread may be running a forward), or when the generator is
        dropped.
        """
        if plan is self._hooked_plan:
            return
        self._drop_decode_hooks()
        fns = plan.decode_hook_fns()
        if fns:
            gated = {point: self._only_while_decoding(fn) for point, fn in fns.items()}
            self._decode_hooks.enter_context(hooked(self.served.lm, gated))
        self._hooked_plan = plan

    def _only_while_decoding(self, fn: HookFn) -> HookFn:
        generator = weakref.ref(self)  # the model must not keep a dropped generator alive

        def gated(h: Tensor) -> Tensor | None:
            g = generator()
            return fn(h) if g is not None and g._decoding else None

        return gated

    def _drop_decode_hooks(self) -> None:
        self._decode_hooks.close()
        self._hooked_plan = None

    def _forward(
        self,
        ids: Tensor,
        mask: Tensor,
        position_ids: Tensor,
        cache: DynamicCache,
        fns: dict[HookPoint, HookFn],
    ) -> Tensor:
        """Logits [B, V] of each row's last position."""
        with hooked(self.served.lm, fns) if fns else contextlib.nullcontext():
            out = self.served.lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.steps += 1
        return out.logits[:, -1]

    def _emit(self, seqs: list[_Sequence], logits: Tensor, plan: SteeringPlan) -> list[TokenEvent]:
        sampled = sample_next(
            logits,
            [s.sampling for s in seqs],
            [s.generator for s in seqs],
            with_logprobs=any(s.logprobs for s in seqs),
            top_n=max(s.top_logprobs for s in seqs),
        )
        tracked = [list(t) for t in plan.tracked]  # the plan's lists are rewritten next step
        stops = set(self.served.lm.stop_token_ids)
        events = []
        rows = zip(seqs, sampled.tokens, sampled.logprobs, sampled.top, tracked, strict=True)
        for s, tok, lp, top, tr in rows:
            s.generated.append(tok)
            if tok in stops and not s.sampling.ignore_eos:
                s.finished, text = FinishReason.EOS, s.stream.flush()
            else:
                text, stopped = s.stream.push(tok)
                if stopped:
                    s.finished = FinishReason.STOP
                elif len(s.generated) >= s.sampling.max_new_tokens:
                    s.finished, text = FinishReason.LENGTH, text + s.stream.flush()
            logprob = lp if s.logprobs else None
            events.append(
                TokenEvent(
                    s.request_id,
                    s.variant,
                    tok,
                    text,
                    logprob,
                    tr,
                    s.finished,
                    top_logprobs=top[: s.top_logprobs],
                )
            )
        return events

    def _drop_finished(self) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [
            i
            for i, s in enumerate(batch.rows)
            if s.finished is None and s.request_id not in self._cancelled
        ]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self._batch = None
            return
        idx = torch.tensor(keep, device=batch.mask.device)
        mask = batch.mask[idx]
        first = int(mask.any(dim=0).nonzero()[0].item())  # leading columns padded in every row
        for layer, keys, values in _kv_layers(batch.cache):
            layer.keys = keys[idx, :, first:]
            layer.values = values[idx, :, first:]
        self._batch = _Batch.of([batch.rows[i] for i in keep], mask[:, first:], batch.cache)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch from two, left-padding the shorter cache and mask."""
    t = max(a.length, b.length)
    for (layer, ka, va), (_, kb, vb) in zip(_kv_layers(a.cache), _kv_layers(b.cache), strict=True):
        layer.keys = torch.cat([_left_pad(ka, t, dim=2), _left_pad(kb, t, dim=2)])
        layer.values = torch.cat([_left_pad(va, t, dim=2), _left_pad(vb, t, dim=2)])
    mask = torch.cat([_left_pad(a.mask, t, dim=1), _left_pad(b.mask, t, dim=1)])
    return _Batch.of(a.rows + b.rows, mask, a.cache)


def _kv_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, Tensor, Tensor]]:
    """Each layer of a dynamic cache with its keys and values [B, heads, T, head_dim]."""
    out = []
    for layer in cache.layers:
        assert (
            isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        )
        out.append((layer, layer.keys, layer.values))
    return out


def _left_pad(x: Tensor, length: int, *, dim: int) -> Tensor:
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def generate(
    served: ServedModel, req: GenerateRequest, *, generator: BatchGenerator | None = None
) -> Iterator[TokenEvent]:
    """Stream one request's events; closing the iterator stops the work."""
    gen = generator or BatchGenerator(served)
    rid = gen.submit(req)
    try:
        while gen.has_work():
            yield from gen.step()
    finally:
        gen.cancel(rid)


def generated_text(events: Sequence[TokenEvent], variant: Variant = Variant.STEERED) -> str:
    return "".join(e.text for e in events if e.variant is variant)
