"""Admission by memory: ``GenerationMemory``'s KV figure against a real cache, a request
too big for the budget alone refused naming the limit, and two that fit alone but not
together run one after the other. Run: ``pytest tests/engine/test_generation_memory.py -q``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from saeserve.engine.generate import BatchGenerator, generate
from saeserve.engine.generation_loop import GenerationLoop
from saeserve.engine.generation_memory import GenerationMemory
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    EngineLimits,
    GenerateRequest,
    Intervention,
    InterventionMode,
    SamplingParams,
    TokenEvent,
)
from saeserve.errors import InvalidArgument
from saeserve.model.tiny import build_tiny_model
from tests.engine.conftest import random_sae

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    path: Path = build_tiny_model("gpt2", tmp_path_factory.mktemp("mem"), n_layers=2, d_model=32)
    served = ServedModel.load(path)
    served.add_sae(random_sae(32, "resid_post.0", sae_id="wide", d_sae=4096, k=8, seed=1))
    return served


def steered(served: ServedModel, text: str = "Once upon a time") -> GenerateRequest:
    ids = served.lm.tokenizer(text)["input_ids"]
    sampling = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    clamp = Intervention(InterventionMode.CLAMP, 3.0, sae_id="wide", feature=5)
    return GenerateRequest(ids, sampling, interventions=[clamp])


def test_the_kv_figure_is_what_a_prefill_caches(served: ServedModel) -> None:
    """kv_per_token equals the bytes of keys and values a real prefill leaves per row and
    position (read off the cache's tensors, not the config)."""
    gen = BatchGenerator(served)
    req = steered(served)
    gen.submit(req)
    gen.step()  # the prefill
    batch = gen._batch
    assert batch is not None
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in batch.cache.layers)  # type: ignore[union-attr]
    positions = batch.cache.layers[0].keys.shape[-2]  # type: ignore[union-attr]
    assert GenerationMemory.of(served.lm).kv_per_token == cached // positions


def test_a_request_too_big_alone_is_refused_naming_the_limit(served: ServedModel) -> None:
    gen = BatchGenerator(served, limits=EngineLimits(generate_memory_bytes=1 << 20))
    with pytest.raises(InvalidArgument, match="limit generate_memory_bytes 1 MiB"):
        gen.prepare(steered(served))
    unsteered = steered(served)
    unsteered.interventions = []  # without the 4096-latent encode block it fits
    gen.prepare(unsteered)


def test_requests_that_fit_alone_but_not_together_run_one_after_the_other(
    served: ServedModel,
) -> None:
    """A budget between what one steered request needs and what two need together: the
    second waits (``fits`` is False while the first runs), then runs on its own, with the
    tokens it has alone; no step ever carries both."""
    texts = ["Once upon a time", "The sea was calm"]
    probe = BatchGenerator(served)
    one = probe.memory_bytes(probe.prepare(steered(served, texts[0])))
    probe.submit(steered(served, texts[0]))
    two = probe.memory_bytes(probe.prepare(steered(served, texts[1])))
    assert one < two
    gen = BatchGenerator(served, limits=EngineLimits(generate_memory_bytes=(one + two) // 2))

    steps: list[set[int]] = []
    lock = threading.Lock()
    loop = GenerationLoop(
        gen,
        lock,
        max_waiting=4,
        max_wait_s=60.0,
        on_step=lambda events: steps.append({e.request_id for e in events}),
    )
    want = [[e.token_id for e in generate(served, steered(served, t))] for t in texts]

    async def one_stream(text: str) -> list[TokenEvent]:
        return [e async for g in loop.stream(steered(served, text)) for e in g]

    async def main() -> list[list[TokenEvent]]:
        lock.acquire()  # both arrive before the first step
        streams = asyncio.gather(*(one_stream(t) for t in texts))
        await asyncio.sleep(0.2)
        lock.release()
        return await asyncio.wait_for(streams, 60.0)

    got = asyncio.run(main())
    assert [[e.token_id for e in events] for events in got] == want
    assert all(len(ids) == 1 for ids in steps if ids)  # never both in one step
    assert len({i for ids in steps for i in ids}) == 2
