"""The benchmark report: one ``Row`` per measurement, a printed table and docs/BENCHMARKS.md.

Each row names the measurement, the baseline's and saeserve's figure as text, their ratio
(the number the target is about), the target and whether it was met. A measurement that
could not run still gets its row, marked "not run" with the reason, so the table always
has every row (``EXPECTED_ROWS``, in the issue's order). A run makes one ``Report`` per
profile. ``write_markdown`` rewrites the whole file from one run: the machine it ran on,
the exact command, then per profile the model, the date, the load, the table and the
run's notes; last ``analysis.md``, the hand-written reading of the rows. The analysis
names the run it describes in its first line (``Describes the run of <date>.``); when
that is not this run, the report says so above it, so an old analysis never passes for a
reading of new numbers. The run's data is also written as JSON beside the markdown
(``read_run`` loads it), so the markdown can be rendered again after the analysis changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
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
    "decompose": "1. Decompose vs hand-written bare minimum (8 x 128 tokens)",
    "saelens": "2. Decompose vs SAELens run_with_cache_with_saes",
    "saelens_tuned": "2. Decompose vs SAELens tuned (names_filter + stop_at_layer)",
    "batching_rps": "3. 16 Decompose clients via the service vs the engine in-process",
    "batching_tail": "3. 16 Decompose clients via the service: p99 vs p50",
    "overhead_tokenize": "4. Service overhead: Tokenize p50",
    "overhead_decompose": "4. Service overhead: 1-token Decompose p50",
    "generate": "5. Generate 128 tokens, batch 1: vs transformers generate",
    "generate_steered": "5. Generate steered (ADD, CLAMP, SCALE, ABLATE, active) vs unsteered",
    "engine_step_8": "6. Engine 8-row decode vs plain batch-8 decode, in-process",
    "streams_1": "6. Generate via the service: 1 stream vs plain batch-1 decode",
    "streams_2": "6. Generate via the service: 2 streams vs plain batch-2 decode",
    "streams_4": "6. Generate via the service: 4 streams vs plain batch-4 decode",
    "streams_8": "6. Generate via the service: 8 streams vs plain batch-8 decode",
    "memory_engine": "7. Memory: engine process under mixed load",
    "memory_replica": "7. Memory: service replica under mixed load",
    "gpu": "8. GPU: 1B Llama bf16 decode and Decompose",
    "http_latency": "9. HTTP /v1/completions vs gRPC Generate: added p50",
    "http_streams": "9. HTTP vs gRPC: 8 concurrent streams, tokens/s",
    "sharded_decompose": "10. 32k SAE split 2 ways on local Ray vs unsplit: Decompose",
    "sharded_generate": "10. 32k SAE split 2 ways on local Ray vs unsplit: steered Generate",
    "sharded_wide_decompose": "10. 1M SAE split 2 ways on local Ray vs unsplit: Decompose",
    "sharded_wide_generate": "10. 1M SAE split 2 ways on local Ray vs unsplit: steered Generate",
    "attribution": "11. Attribution latency, 128-token prompt: vs one forward + backward by hand",
    "neighbours_wide": "12. Neighbours of one feature of a 1M-latent SAE: vs a chunked matmul by hand",
    "wide_steered": "13. 1M SAE: Generate steered (CLAMP on an active feature) vs unsteered tokens/s",
    "wide_prefill_memory": "13. 1M SAE: peak memory of eight 960-token steered prompts admitted together",
    "wide_load": "14. 1M SAE: load time and peak RSS vs weight bytes",
    "wide_decompose": "14. 1M SAE: Decompose vs bare minimum (forward to hook + matmul + topk)",
    "index_build_32k": "15. Index build per million corpus tokens and peak memory, 32k latents",
    "index_build_1m": "15. Index build per million corpus tokens and peak memory, 1M latents",
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
    profile: str = ""
    model: str = ""
    """What model and SAE the run used (the realistic profile, the demo, a stand-in)."""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    started: str = field(default_factory=lambda: _now())
    finished: str = ""
    machine: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows[row.key] = row

    def finish(self) -> None:
        self.finished = _now()
        self.load_after = load_average()
        self.machine = machine_lines()

    def to_json(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["rows"] = [dataclasses.asdict(r) for r in self.ordered()]
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Report:
        data = dict(data)
        raw_rows = data.pop("rows")
        assert isinstance(raw_rows, list)
        rows = [Row(**(r | {"status": Status(r["status"])})) for r in raw_rows]
        report = cls(**data)  # type: ignore[arg-type]
        report.rows = {r.key: r for r in rows}
        report.load_before = tuple(report.load_before)  # type: ignore[assignment]
        report.load_after = tuple(report.load_after)  # type: ignore[assignment]
        return report

    def ordered(self) -> list[Row]:
        return [self.rows[k] for k in EXPECTED_ROWS if k in self.rows]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


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


def _load_text(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    loaded = " (the machine was shared and loaded)" if max(before[0], after[0]) > 1.5 else ""
    return (
        f"before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; "
        f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}{loaded}"
    )


ANALYSIS_STAMP = re.compile(r"Describes the run of (\d{4}-\d\d-\d\d \d\d:\d\d UTC)")
"""The first line of analysis.md names the run it reads: the run's finish time."""


def analysis_section(run_finished: str) -> list[str]:
    if not ANALYSIS.is_file():
        return []
    text = ANALYSIS.read_text().strip()
    stamp = ANALYSIS_STAMP.search(text.split("\n", 1)[0])
    if stamp and stamp.group(1) == run_finished:
        head = f"The analysis below was written for this run (finished {run_finished})."
    else:
        named = stamp.group(1) if stamp else "an unnamed run"
        head = (
            f"**The analysis below is older than the tables above**: it was written for the "
            f"run of {named}, and the tables are from the run that finished {run_finished}. "
            f"Where it quotes figures, they may not be these."
        )
    return ["", "## Analysis (written by hand, bench/analysis.md)", "", head, "", text]


def render_markdown(reports: list[Report], command: str) -> str:
    last = reports[-1]
    parts = [
        "# Benchmarks",
        "",
        "Written by `bench/` (do not edit by hand): every figure below comes from one run of",
        "the command shown, baseline and saeserve measured side by side in that run. Rates are",
        "medians of repeated runs (baseline and saeserve interleaved), with the interquartile",
        "range as +-% of the median; ratios are medians of per-pair ratios. Each baseline is the",
        "best this hardware does for the same work (a hand-written minimum, the plain model, the",
        "engine in-process), measured in the same run. On this shared 2-core CPU machine only",
        "the ratios mean something; absolute times count only on a GPU.",
        "",
        f"- Command: `{command}`",
        f"- Run: {reports[0].started} to {last.finished}",
        *last.machine,
    ]
    for report in reports:
        parts += [
            "",
            f"## {report.profile.capitalize()} profile" if report.profile else "## Results",
            "",
            f"- Model: {report.model}",
            f"- Measured: {report.started} to {report.finished}",
            f"- Load average (1, 5, 15 min) {_load_text(report.load_before, report.load_after)}",
            "",
            markdown_table(report.ordered()),
            "",
            f"### Notes ({report.profile or 'run'})",
            "",
        ]
        notes = [f"- **{r.measurement}**: {r.note}" for r in report.ordered() if r.note]
        notes += [f"- {n}" for n in report.notes]
        parts += notes or ["- none"]
    parts += analysis_section(last.finished)
    return "\n".join(parts) + "\n"


def write_markdown(reports: list[Report], path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(reports, command))
    data = {"command": command, "reports": [r.to_json() for r in reports]}
    path.with_suffix(".json").write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")


def read_run(path: Path) -> tuple[str, list[Report]]:
    """The command and reports of a run written by ``write_markdown``."""
    data = json.loads(path.read_text())
    return str(data["command"]), [Report.from_json(r) for r in data["reports"]]
