"""CPU seconds spent by each process of the service during a load, from /proc.

The service on one machine is several processes: the benchmark's own (the load
generator), Ray's gRPC proxy, the ingress replica, the model replica, and Ray's
controller, raylet and GCS. ``snapshot`` reads user + system CPU time of this process and
every descendant, grouped by process title (``ray::ProxyActor``, ...); ``per_call``
turns two snapshots into CPU milliseconds per request for each group, which says where
a request's cost goes when the model's forward is only a small part of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.server import descends_from

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _title(pid: str) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    first = raw[0].decode(errors="replace")
    if not first:
        return "(exited or no command line)"
    if first.startswith("ray::"):
        return first.split(" ")[0]
    if int(pid) == os.getpid():
        return "bench (load generator)"
    name = Path(first).name
    return (
        name
        if name not in ("python", "python3")
        else " ".join(a.decode(errors="replace") for a in raw[:3])
    )


def snapshot() -> dict[str, float]:
    """CPU seconds (user + system) so far, per process title, for this process tree."""
    me = os.getpid()
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not descends_from(int(entry.name), me):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            title = _title(entry.name)
        except (OSError, ValueError, IndexError):
            continue
        out[title] = out.get(title, 0.0) + seconds
    return out


def per_call(before: dict[str, float], after: dict[str, float], calls: int) -> str:
    """'ray::ProxyActor 4.1 ms, ...': CPU ms per call by process, heaviest first."""
    if calls <= 0:
        return "no calls"
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    ranked = sorted(((v, k) for k, v in used.items() if v > 0.005), reverse=True)
    total = sum(v for v, _ in ranked)
    parts = [f"{k} {1000 * v / calls:.1f} ms" for v, k in ranked[:7]]
    return f"{1000 * total / calls:.1f} ms CPU per request in all: " + ", ".join(parts)
