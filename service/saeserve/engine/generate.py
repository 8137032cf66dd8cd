"""Batched, steered generation with a KV cache; sequences join and leave between steps.

``BatchGenerator`` keeps one left-padded batch of running sequences and their KV cache
(``running_batch``). Each ``step()`` runs one decode forward for the running rows, then
prefills newly submitted sequences in one forward and merges their cache into the batch,
so a new stream never waits for the others. Finished and cancelled rows are dropped before
the next step. Position ids are explicit per row, so padding never changes a result.

Each row carries its own interventions, sampling parameters and RNG; the batch's
``SteeringPlan`` is rebuilt only when rows join or leave, and its decode hooks stay
installed until then (``decode_hooks``). ``emission`` turns logits into events and decides
when a row is finished. ``include_baseline`` adds an unsteered twin with the same seed.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from saeserve.engine.decode_hooks import DecodeHooks
from saeserve.engine.detokenize import TextStream
from saeserve.engine.emission import emit
from saeserve.engine.generation_memory import MIB, GenerationMemory, RowNeed
from saeserve.engine.interventions import (
    ResolvedCondition,
    ResolvedIntervention,
    resolve_interventions,
    resolve_stop_conditions,
    resolve_tracked,
)
from saeserve.engine.kv_cache import growing_cache
from saeserve.engine.padding import pad_token_ids
from saeserve.engine.running_batch import RunningBatch, RunningSequence
from saeserve.engine.served_model import HookedSae, ServedModel
from saeserve.engine.types import (
    EngineLimits,
    GenerateLimits,
    GenerateRequest,
    TokenEvent,
    Variant,
)
from saeserve.errors import InvalidArgument, ResourceExhausted
from saeserve.model.hookpoints import HookFn, HookPoint, hooked


@dataclass
class PreparedRequest:
    """A validated request with its steering resolved against the model, not yet queued."""

    request: GenerateRequest
    interventions: list[ResolvedIntervention]
    tracked: list[tuple[HookedSae, int]]
    stop_conditions: list[ResolvedCondition]

    @property
    def sequences(self) -> int:
        """Rows it takes in the batch: its steered variant, and its baseline if asked."""
        return 1 + int(self.request.include_baseline)


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
        self.memory = GenerationMemory.of(served.lm)
        """Bytes per token of this model's batch, checked against
        ``limits.generate_memory_bytes`` at admission (0: unchecked)."""
        self._ids = itertools.count(1)
        self._pending: list[RunningSequence] = []
        self._batch: RunningBatch | None = None
        self._cancelled: set[int] = set()
        self._decode_hooks = DecodeHooks(served.lm)
        self.steps = 0
        """Forward passes run so far (prefills and decode steps)."""

    # --- requests ----------------------------------------------------------------------
    def submit(self, req: GenerateRequest) -> int:
        """Validate and queue a request; returns its id. Raises the engine's typed errors,
        ResourceExhausted when the batch has no room for it."""
        return self.admit(self.prepare(req))

    def prepare(self, req: GenerateRequest) -> PreparedRequest:
        """Validate a request and resolve its steering against the model, without queueing
        it (a caller may hold it until ``fits``). Raises the engine's typed errors."""
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
        if 1 + req.include_baseline > self.max_batch_size:
            raise ResourceExhausted(
                f"include_baseline: needs 2 sequences; this replica decodes {self.max_batch_size}"
            )
        interventions = resolve_interventions(self.served, req.interventions, len(req.prompt_ids))
        prepared = PreparedRequest(
            req,
            interventions,
            resolve_tracked(self.served, req.track),
            resolve_stop_conditions(self.served, req.stop_conditions),
        )
        budget = self.limits.generate_memory_bytes
        need = self.memory.batch_bytes([], self._needs(prepared))
        if budget and need > budget:
            raise InvalidArgument(
                f"prompt: {len(req.prompt_ids)} tokens + max_new_tokens "
                f"{req.sampling.max_new_tokens} ({prepared.sequences} sequences) need about "
                f"{need / MIB:.0f} MiB for their KV cache, prefill activations and steering "
                f"encode > limit generate_memory_bytes {budget / MIB:.0f} MiB"
            )
        return prepared

    def fits(self, prepared: PreparedRequest) -> bool:
        """Whether the batch has room for the request's sequences now: in rows, and in
        memory (``limits.generate_memory_bytes``) with every running and queued row."""
        if self.n_sequences + prepared.sequences > self.max_batch_size:
            return False
        budget = self.limits.generate_memory_bytes
        return not budget or self.memory_bytes(prepared) <= budget

    def memory_bytes(self, prepared: PreparedRequest | None = None) -> int:
        """The most memory the batch needs (``GenerationMemory``) with its running and
        queued rows, and ``prepared``'s if given."""
        running = [self._row_need(s) for s in (self._batch.rows if self._batch else [])]
        joining = [self._row_need(s) for s in self._pending]
        if prepared is not None:
            joining += self._needs(prepared)
        return self.memory.batch_bytes(running, joining)

    def _needs(self, prepared: PreparedRequest) -> list[RowNeed]:
        """Each of the request's rows' ``RowNeed`` (its baseline has no steering)."""
        req = prepared.request
        steered = self._need(len(req.prompt_ids), req.sampling.max_new_tokens, prepared)
        plain = RowNeed(steered.prompt, steered.total, 0)
        return [steered, plain][: prepared.sequences]

    def _row_need(self, s: RunningSequence) -> RowNeed:
        return self._need(len(s.prompt_ids), s.sampling.max_new_tokens, s)

    def _need(
        self, prompt: int, max_new: int, steering: PreparedRequest | RunningSequence
    ) -> RowNeed:
        saes = [iv.sae.sae for iv in steering.interventions if iv.sae is not None]
        saes += [hooked.sae for hooked, _ in steering.tracked]
        tokens = max(prompt, self.max_batch_size)  # a prefill, or a decode step's rows
        encode = max((sae.encode_bytes(tokens) for sae in saes), default=0)
        return RowNeed(prompt, prompt + max_new, encode)

    def admit(self, prepared: PreparedRequest) -> int:
        """Queue a prepared request for the next step; returns its id. ResourceExhausted
        when it does not ``fit``."""
        if not self.fits(prepared):
            raise ResourceExhausted(
                f"generation batch is full ({self.max_batch_size} sequences, "
                f"generate_memory_bytes {self.limits.generate_memory_bytes / MIB:.0f} MiB)"
            )
        req, lm = prepared.request, self.served.lm
        rid = next(self._ids)
        seed = req.sampling.seed if req.sampling.seed is not None else random.getrandbits(63)
        variants = [(Variant.STEERED, prepared.interventions)]
        if req.include_baseline:
            variants.append((Variant.BASELINE, []))
        for variant, ivs in variants:
            gen = torch.Generator(device=lm.device)
            gen.manual_seed(seed)
            self._pending.append(
                RunningSequence(
                    request_id=rid,
                    variant=variant,
                    prompt_ids=list(req.prompt_ids),
                    sampling=req.sampling,
                    interventions=ivs,
                    tracked=prepared.tracked,
                    logprobs=req.logprobs,
                    top_logprobs=req.top_logprobs,
                    kl_from_baseline=req.kl_from_baseline,
                    stop_conditions=prepared.stop_conditions,  # the baseline's too
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
            self._decode_hooks.drop()
        if self._pending:
            joining, self._pending = self._pending, []
            batch, new_events = self._prefill(joining)
            events += new_events
            self._batch = batch if self._batch is None else self._batch.merge(batch)
        self._cancelled.clear()
        return events

    def _prefill(self, seqs: list[RunningSequence]) -> tuple[RunningBatch, list[TokenEvent]]:
        lm = self.served.lm
        ids, mask = pad_token_ids(
            [s.prompt_ids for s in seqs], pad_id=lm.pad_token_id, left=True, device=lm.device
        )
        token_pos = torch.where(mask.bool(), mask.cumsum(-1) - 1, -1)  # [b, n]
        batch = RunningBatch.of(seqs, mask, growing_cache())
        prompt_lens = torch.tensor([len(s.prompt_ids) for s in seqs], device=lm.device)
        fns = batch.plan.hook_fns(token_pos, prompt_lens)
        logits = self._forward(ids, mask, token_pos.clamp_min(0), batch.cache, fns)
        return batch, emit(seqs, logits, batch.plan, lm.stop_token_ids)

    def _decode(self, batch: RunningBatch) -> list[TokenEvent]:
        lm = self.served.lm
        ids = torch.tensor([[s.generated[-1]] for s in batch.rows], device=lm.device)
        position_ids = torch.tensor([[s.next_position] for s in batch.rows], device=lm.device)
        mask = batch.extend_mask()
        # installing and removing hooks every step would cost about as much as the
        # steering itself at batch 1 on CPU: they stay until the batch changes
        self._decode_hooks.keep(batch.plan)
        with self._decode_hooks.decoding():
            logits = self._forward(ids, mask, position_ids, batch.cache, {})
        return emit(batch.rows, logits, batch.plan, lm.stop_token_ids)

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

    def _drop_finished(self) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [
            i
            for i, s in enumerate(batch.rows)
            if s.finished is None and s.request_id not in self._cancelled
        ]
        if len(keep) < len(batch.rows):
            self._batch = batch.keep(keep) if keep else None


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
