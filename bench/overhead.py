"""Measurement 4: what gRPC + Ray Serve add to a call, against the same engine call in-process.

One client calls sequentially (no concurrency, so nothing queues): Tokenize of a short
text, and Decompose of a one-token text, 300 times each (quick: 60) after a warm-up.
The in-process side runs the engine's ``tokenize`` and ``decompose`` on the same inputs
in this process. The service keeps its default dynamic batching settings, so a lone
Decompose also waits out ``limits.batch_wait_timeout_s`` for company; the note says so.
Where the added time goes: the CPU each process of the service spent per call during
the gRPC calls (``bench.cpu_share``), in the note; a wall-clock profile of the ingress and
the model replica is ``python -m bench.pyspy_profile service``.
Target: p50 added <= 5 ms for each.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.cpu_share import per_call, snapshot
from bench.report import Row, ms_text
from bench.stats import latency, repeat
from saeserve.engine.decompose import decompose
from saeserve.engine.served_model import ServedModel
from saeserve.engine.tokenize import tokenize
from saeserve.engine.types import DecomposeRequest
from saeserve_client import NO_RETRY, SaeserveClient

TARGET_MS = 5.0
TOKENIZE_TEXT = "The quick brown fox jumps over the lazy dog."


def one_token_text(served: ServedModel) -> str:
    tok = served.lm.tokenizer
    for word in ("The", "the", "a", "A", "Hello", "x", "1"):
        if len(tok(word)["input_ids"]) == 1:
            return word
    raise LookupError("no one-token text among the candidates")


def measure(
    served: ServedModel,
    target: str,
    sae_id: str,
    calls: int,
    batch_wait_s: float,
    *,
    only_decompose: bool = False,
) -> list[Row]:
    lm = served.lm
    word = one_token_text(served)
    req = DecomposeRequest(texts=[word], sae_ids=[sae_id])
    warmup = max(5, calls // 10)
    with SaeserveClient(target, retry=NO_RETRY, timeout=60.0) as client:
        pairs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "overhead_tokenize",
                lambda: tokenize(lm.tokenizer, TOKENIZE_TEXT, max_tokens=lm.max_positions),
                lambda: client.tokenize(TOKENIZE_TEXT),
            ),
            (
                "overhead_decompose",
                lambda: decompose(served, req),
                lambda: client.decompose(word, saes=[sae_id]),
            ),
        ]
        if only_decompose:
            pairs = pairs[1:]
        rows = []
        for key, local, remote in pairs:
            inproc = latency(repeat(local, warmup=warmup, repeats=calls))
            for _ in range(warmup):
                remote()
            before = snapshot()
            served_ = latency(repeat(remote, warmup=0, repeats=calls))
            cpu = per_call(before, snapshot(), calls)
            added = 1000 * (served_.p50 - inproc.p50)
            note = f"{calls} sequential calls each side; CPU per gRPC call: {cpu}"
            if key == "overhead_decompose":
                note += (
                    f"; text {word!r} (1 token); the service waits up to "
                    f"limits.batch_wait_timeout_s = {1000 * batch_wait_s:.0f} ms for a batch to fill"
                )
            rows.append(
                Row.judged(
                    key,
                    baseline=f"in-process p50 {ms_text(inproc.p50)}, p99 {ms_text(inproc.p99)}",
                    saeserve=f"gRPC p50 {ms_text(served_.p50)}, p99 {ms_text(served_.p99)}",
                    ratio=added,
                    ratio_text=f"{added:+.2f} ms (p99 {1000 * (served_.p99 - inproc.p99):+.2f} ms)",
                    target=f"added p50 <= {TARGET_MS:.0f} ms",
                    met=added <= TARGET_MS,
                    note=note,
                )
            )
    return rows
