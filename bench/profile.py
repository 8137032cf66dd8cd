"""A short torch-profiler summary of a call: where its CPU time goes, by operator.

Used when a target is missed, so the report can say what the time is spent on instead of
only that it is too much: ``top_ops(fn)`` runs ``fn`` a few times under
``torch.profiler`` and returns the heaviest operators with their share of the total.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def top_ops(fn: Callable[[], object], *, runs: int = 3, n: int = 8) -> str:
    """'op 41% (12.3 ms), ...' over ``runs`` calls; self CPU time per call."""
    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    parts = [
        f"{e.key} {100 * e.self_cpu_time_total / total:.0f}% "
        f"({e.self_cpu_time_total / runs / 1000:.2f} ms)"
        for e in events[:n]
    ]
    return ", ".join(parts) + f"; total {total / runs / 1000:.1f} ms per call"
