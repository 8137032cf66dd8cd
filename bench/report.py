"""The benchmark report: one ``Row`` per measurement, a printed table and docs/BENCHMARKS.md.

Each row names the measurement, the baseline's and saeserve's figure as text, their ratio
(the number the target is about), the target and whether it was met. A measurement that
could not run still gets its row, marked "not run" with the reason, so the table always
has every row (``EXPECTED_ROWS``, in the issue's order). ``write_markdown`` rewrites the
whole file from one run: the table, the machine it ran on, the model, the exact command,
the date, the run's notes, and ``analysis.md`` (the profiles behind missed targets).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from pathlib import Path

import torch

from bench.stats import Summary

ANALYSIS = Path(__file__).with_name("analysis.md")
"""Hand-written profile analysis of missed targets, appended to the markdown report."""


class Status(StrEnum):
    MET = "met"
    MISSED = "not met"
    NOT_RUN = "not run"


EXPECTED_ROWS: dict[str, str] = {
    "decompose": "1. Decompose vs plain forward (8 x 128 tokens)",
    "saelens": "2. Decompose vs SAELens run_with_cache_with_saes",
    "batching_rps": "3. Service batching: requests/s, on vs off",
    "batching_tail": "3. Service batching on: p99 vs p50",
    "overhead_tokenize": "4. Service overhead: Tokenize p50",
    "overhead_decompose": "4. Service overhead: 1-token Decompose p50",
    "generate": "5. Generate 128 tokens, batch 1: vs transformers generate",
    "generate_steered": "5. Generate steered (4 interventions) vs unsteered",
    "streams_4": "6. Concurrent Generate streams: 4 vs 1",
    "streams_8": "6. Concurrent Generate streams: 8 vs 1",
    "memory_engine": "7. Memory: engine process under mixed load",
    "memory_replica": "7. Memory: service replica under mixed load",
    "gpu": "8. GPU: 1B Llama bf16 decode and Decompose",
    "http_latency": "9. HTTP /v1/completions vs gRPC Generate: added p50",
    "http_streams": "9. HTTP vs gRPC: 8 concurrent streams, tokens/s",
}


@dataclass
class Row:
    key: str
    """One of ``EXPECTED_ROWS``."""
    baseline: str
    saeserve: str
    ratio: float
    """The figure the target is about (a ratio, or for overhead rows added milliseconds)."""
    ratio_text: str
    target: str
    status: Status
    note: str = ""

    @property
    def measurement(self) -> str:
        return EXPECTED_ROWS[self.key]

    @classmethod
    def judged(
        cls,
        key: str,
        *,
        baseline: str,
        saeserve: str,
        ratio: float,
        ratio_text: str,
        target: str,
        met: bool,
        note: str = "",
    ) -> Row:
        ok = met and math.isfinite(ratio)
        status = Status.MET if ok else Status.MISSED
        return cls(key, baseline, saeserve, ratio, ratio_text, target, status, note)

    @classmethod
    def not_run(cls, key: str, target: str, reason: str) -> Row:
        return cls(key, "-", "-", math.nan, "-", target, Status.NOT_RUN, reason)


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: str = ""
    """What model and SAE the run used (the demo, or the generated stand-in)."""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def add(self, row: Row) -> None:
        self.rows[row.key] = row

    def ordered(self) -> list[Row]:
        return [self.rows[k] for k in EXPECTED_ROWS if k in self.rows]


def rate_text(s: Summary, unit: str) -> str:
    """'12,345 tok/s +-3%': the median and half the interquartile range, relative."""
    return f"{s.median:,.0f} {unit} +-{50 * s.spread:.0f}%"


def ms_text(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms"


def ratio_text(s: Summary) -> str:
    """'1.42x (1.38-1.47)': the median ratio and its quartiles."""
    return f"{s.median:.2f}x ({s.q1:.2f}-{s.q3:.2f})"


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| measurement | baseline | saeserve | ratio | target | result |\n|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        result = str(r.status) + (f": {r.note}" if r.status is Status.NOT_RUN and r.note else "")
        cells = [r.measurement, r.baseline, r.saeserve, r.ratio_text, r.target, result]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    cols = [
        ("measurement", [r.measurement for r in rows]),
        ("baseline", [r.baseline for r in rows]),
        ("saeserve", [r.saeserve for r in rows]),
        ("ratio", [r.ratio_text for r in rows]),
        ("target", [r.target for r in rows]),
        ("result", [str(r.status) for r in rows]),
    ]
    widths = [max(len(name), *(len(v) for v in values)) for name, values in cols]
    out = ["  ".join(name.ljust(w) for (name, _), w in zip(cols, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for i in range(len(rows)):
        out.append("  ".join(v[i].ljust(w) for (_, v), w in zip(cols, widths, strict=True)))
    return "\n".join(out)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def machine_lines() -> list[str]:
    return [
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; RAM {_ram_gib():.1f} GiB",
        f"- torch threads: {torch.get_num_threads()}; no GPU used",
        f"- Python {platform.python_version()}; torch {_version('torch')}, "
        f"transformers {_version('transformers')}, ray {_version('ray')}, "
        f"grpcio {_version('grpcio')}",
        f"- OS: {platform.platform()}",
    ]


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def command_line() -> str:
    return "python -m bench " + shlex.join(sys.argv[1:])


def render_markdown(report: Report, command: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    before, after = report.load_before, load_average()
    parts = [
        "# Benchmarks",
        "",
        "Written by `bench/` (do not edit by hand): every figure below comes from one run of",
        "the command shown, baseline and saeserve measured side by side in that run. Rates are",
        "medians of repeated runs (baseline and saeserve interleaved), with the interquartile",
        "range as +-% of the median; ratios are medians of per-pair ratios. On this shared",
        "2-core CPU machine only the ratios mean something; absolute times count only on a GPU.",
        "",
        f"- Command: `{command}`",
        f"- Date: {now}",
        f"- Model: {report.model}",
        *machine_lines(),
        f"- Load average (1, 5, 15 min) before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
        + (" (the machine was shared and loaded)" if max(before[0], after[0]) > 1.5 else ""),
        "",
        markdown_table(report.ordered()),
        "",
        "## Notes",
        "",
    ]
    notes = [f"- **{r.measurement}**: {r.note}" for r in report.ordered() if r.note]
    notes += [f"- {n}" for n in report.notes]
    parts += notes or ["- none"]
    if ANALYSIS.is_file():
        parts += ["", ANALYSIS.read_text().strip()]
    return "\n".join(parts) + "\n"


def write_markdown(report: Report, path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report, command))
