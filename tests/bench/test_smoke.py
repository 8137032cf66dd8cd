"""Smoke run of the benchmark harness: ``python -m bench smoke`` on a tiny model, in seconds.

Benchmarks are not tests; this only checks that the harness runs end to end, that the
table has a row for every measurement, that every row that ran has a finite ratio, that
the markdown report names the machine, the command and the date, that it can be rendered
again from its JSON, and that it flags an analysis written for another run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench.__main__ import parse_args, run
from bench.report import (
    EXPECTED_ROWS,
    Status,
    read_run,
    render_markdown,
    text_table,
    write_markdown,
)

pytestmark = pytest.mark.timeout(120)


def test_smoke_run_fills_every_row(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run(parse_args(["smoke"]), tmp_path / "assets")
    finally:
        torch.set_num_threads(threads)

    assert list(report.rows) == list(EXPECTED_ROWS)
    ran = {k: r for k, r in report.rows.items() if r.status is not Status.NOT_RUN}
    assert {"decompose", "generate", "generate_steered", "engine_step_8", "memory_engine"} <= set(
        ran
    )
    for key, row in ran.items():
        assert math.isfinite(row.ratio), (key, row)
    for row in report.rows.values():
        assert row.status is not Status.NOT_RUN or row.note  # a skipped row says why

    table = text_table(report.ordered())
    out = tmp_path / "BENCHMARKS.md"
    write_markdown([report], out, "python -m bench smoke")
    text = out.read_text()
    command, again = read_run(out.with_suffix(".json"))
    assert render_markdown(again, command) == text
    assert "older than the tables above" in text  # analysis.md names another run
    for measurement in EXPECTED_ROWS.values():
        assert measurement in table
        assert measurement in text
    assert "`python -m bench smoke`" in text
    assert "- Run: " in text and "- CPU: " in text and "transformers " in text
