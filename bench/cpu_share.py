"""CPU seconds spent by each process of the service during a load, from /proc.

The service on one machine is several processes: the benchmark's own (the load
generator), Ray's gRPC proxy, the ingress replica, the model replica, and Ray's
controller, raylet and GCS. ``snapshot`` reads user + system CPU time of this process and
every descendant, per process; ``used`` takes the difference of two snapshots process by
process and groups it by process title (``ray::ProxyActor``, ...; a Ray replica retitles
itself with the method it runs, ``...Model_bench.handle_request``, as do Ray's other
actors, so that suffix is dropped); ``per_call`` turns it into CPU milliseconds per request for each group, which
says where a request's cost goes when the model's forward is only a small part of it.
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
        # an actor retitles itself while it runs a method: ...:Model_bench.handle_request
        return first.split(" ")[0].split(".", 1)[0]
    if int(pid) == os.getpid():
        return "bench (load generator)"
    name = Path(first).name
    return (
        name
        if name not in ("python", "python3")
        else " ".join(a.decode(errors="replace") for a in raw[:3])
    )


Snapshot = dict[int, tuple[str, float]]
"""pid -> (process title, CPU seconds so far)."""


def snapshot() -> Snapshot:
    """CPU seconds (user + system) so far of this process and every descendant."""
    me = os.getpid()
    out: Snapshot = {}
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
        out[int(entry.name)] = (title, seconds)
    return out


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by process title."""
    out: dict[str, float] = {}
    for pid, (title, seconds) in after.items():
        spent = seconds - before.get(pid, (title, 0.0))[1]
        out[title] = out.get(title, 0.0) + spent
    return out


def add(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    return {k: total.get(k, 0.0) + more.get(k, 0.0) for k in total.keys() | more.keys()}


def per_call_text(spent: dict[str, float], calls: int) -> str:
    """'ray::ProxyActor 4.1 ms, ...': CPU ms per call by process, heaviest first."""
    if calls <= 0:
        return "no calls"
    ranked = sorted(((v, k) for k, v in spent.items() if v > 0.005), reverse=True)
    total = sum(v for v, _ in ranked)
    parts = [f"{k} {1000 * v / calls:.1f} ms" for v, k in ranked[:7]]
    return f"{1000 * total / calls:.1f} ms CPU per request in all: " + ", ".join(parts)


def per_call(before: Snapshot, after: Snapshot, calls: int) -> str:
    return per_call_text(used(before, after), calls)
