"""The benchmark command: ``python -m bench all|decompose|saelens|generate|service|memory|
index|sharded|sharded_wide|attribution|wide|smoke``.

Runs the chosen measurements in this process (the memory and SAELens ones in child
processes, the service ones against a Ray Serve instance it starts) for each profile,
prints the tables and, for ``all`` or when ``--output`` is given, rewrites
docs/BENCHMARKS.md (or that file) and the run's data beside it (``.json``).
``--profile`` picks what to run on: ``realistic`` (a GPT-2-small-shaped model with a 32k
TopK SAE, built and cached by ``bench.realistic``), ``demo`` (the built-in demo, or a
generated stand-in while it is not built) or ``both`` (the default for ``all``; a single
group defaults to ``realistic``). ``--quick`` shortens every repeat count and load
duration; ``smoke`` is a seconds-long run on a tiny generated model that the test suite
uses. ``--model``/``--sae`` run one given model and SAE instead. ``render`` rewrites the
markdown from the last run's data, e.g. after bench/analysis.md was revised.

    python -m bench all            # the full run recorded in docs/BENCHMARKS.md
    python -m bench decompose --quick --profile demo
    python -m bench render         # docs/BENCHMARKS.md again, with the current analysis
    flock /work/wide.lock python -m bench wide --quick   # the 1M-latent SAE's rows (6 GiB mapped)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from bench.assets import resolve_assets
from bench.context import Context, Mode, Profile
from bench.report import (
    EXPECTED_ROWS,
    Report,
    Row,
    command_line,
    load_average,
    read_run,
    text_table,
    write_markdown,
)

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "BENCHMARKS.md"
TARGETS = {
    "decompose": ">= 0.95x",
    "saelens": ">= 2.0x",
    "saelens_tuned": "(no target)",
    "batching_rps": ">= 0.8x",
    "batching_tail": "p99 <= 2.0x p50",
    "overhead_tokenize": "added p50 <= 5 ms",
    "overhead_decompose": "added p50 <= 5 ms",
    "generate": ">= 1.05x",
    "generate_steered": ">= 0.95x",
    "engine_step_8": ">= 0.9x",
    "streams_1": "(no target)",
    "streams_2": "(no target)",
    "streams_4": "(no target)",
    "streams_8": ">= 0.8x",
    "memory_engine": "growth <= 5% after warm-up",
    "memory_replica": "growth <= 5% after warm-up",
    "gpu": "-",
    "http_latency": "added p50 <= 5 ms",
    "http_streams": ">= 0.9x",
    "sharded_decompose": "(no target)",
    "sharded_generate": "(no target)",
    "sharded_wide_decompose": "(no target)",
    "sharded_wide_generate": "(no target)",
    "attribution": ">= 0.8x",
    "neighbours_wide": ">= 0.8x",
    "wide_steered": ">= 0.5x",
    "wide_prefill_memory": "peak <= budget",
    "wide_load": "RSS growth <= 5% of weights",
    "wide_decompose": ">= 0.8x",
    "index_build_32k": "streaming <= 1.5x bare forward+encode",
    "index_build_1m": "peak <= 6 GiB beside model and SAE",
}
REALISTIC_REPEATS = (
    "A full run of this profile uses fewer repeats than the demo's, so that both profiles fit "
    "in well under an hour on a 2-core CPU: Decompose 9 rounds (demo 15), SAELens 5 (11), "
    "Generate 7 pairs (9), the 8-row decode 32 tokens x 5 pairs (64 x 7), streams 32 tokens "
    "per stream (64), 200 overhead calls (300), 40 HTTP pairs (100), 40 s replica memory "
    "load (60), 1M steering 32 tokens x 3 pairs (64 x 5), index builds of 5,000 (32k) and "
    "1,000 (1M) corpus tokens in 2 pairs (20,000 and 4,000 in 3); the service loads keep "
    "their 20 s. Each row's note gives its count."
)
GROUPS: dict[str, list[str]] = {
    "decompose": ["decompose"],
    "saelens": ["saelens"],
    "generate": ["generate"],
    "memory": ["memory"],
    "index": ["index"],
    "service": ["service"],
    "sharded": ["sharded"],
    "sharded_wide": ["sharded_wide"],
    "attribution": ["attribution", "neighbours"],
    "wide": ["wide", "wide_sae"],
    "all": [
        "decompose",
        "saelens",
        "generate",
        "memory",
        "index",
        "service",
        "sharded",
        "attribution",
        "neighbours",
        "wide",
        "wide_sae",
    ],
    "render": [],
    "smoke": ["decompose", "generate", "memory", "attribution"],
}


def _run_decompose(ctx: Context) -> list[Row]:
    from bench import decompose

    return decompose.measure(ctx)


def _run_saelens(ctx: Context) -> list[Row]:
    from bench import saelens

    return saelens.measure(ctx)


def _run_generate(ctx: Context) -> list[Row]:
    from bench import generation

    return generation.measure(ctx)


def _run_wide(ctx: Context) -> list[Row]:
    from bench import wide_steering

    return wide_steering.measure(ctx)


def _run_memory(ctx: Context) -> list[Row]:
    from bench import memory

    return memory.measure(ctx)


def _run_sharded(ctx: Context) -> list[Row]:
    from bench import sharded

    return sharded.measure(ctx)


def _run_sharded_wide(ctx: Context) -> list[Row]:
    from bench import sharded

    return sharded.measure_wide(ctx)


def _run_wide_sae(ctx: Context) -> list[Row]:
    from bench import wide_sae

    return wide_sae.measure(ctx)


def _run_index(ctx: Context) -> list[Row]:
    from bench import index_build

    return index_build.measure(ctx)


def _run_service(ctx: Context) -> list[Row]:
    from bench import service

    return service.measure(ctx)


def _run_attribution(ctx: Context) -> list[Row]:
    from bench import attribution

    return attribution.measure(ctx)


def _run_neighbours(ctx: Context) -> list[Row]:
    from bench import neighbours

    return neighbours.measure(ctx)


MEASUREMENTS: dict[str, tuple[Callable[[Context], list[Row]], list[str]]] = {
    "decompose": (_run_decompose, ["decompose"]),
    "saelens": (_run_saelens, ["saelens", "saelens_tuned"]),
    "generate": (_run_generate, ["generate", "generate_steered", "engine_step_8"]),
    "memory": (_run_memory, ["memory_engine"]),
    "sharded": (_run_sharded, ["sharded_decompose", "sharded_generate"]),
    "sharded_wide": (_run_sharded_wide, ["sharded_wide_decompose", "sharded_wide_generate"]),
    "wide": (_run_wide, ["wide_steered", "wide_prefill_memory"]),
    "index": (_run_index, ["index_build_32k", "index_build_1m"]),
    "service": (
        _run_service,
        [
            "batching_rps",
            "batching_tail",
            "overhead_tokenize",
            "overhead_decompose",
            "streams_1",
            "streams_2",
            "streams_4",
            "streams_8",
            "http_latency",
            "http_streams",
            "memory_replica",
        ],
    ),
    "attribution": (_run_attribution, ["attribution"]),
    "neighbours": (_run_neighbours, ["neighbours_wide"]),
    "wide_sae": (_run_wide_sae, ["wide_load", "wide_decompose"]),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=sorted(GROUPS), help="which measurements to run")
    p.add_argument("--quick", action="store_true", help="fewer repeats, shorter loads")
    p.add_argument(
        "--profile",
        choices=["realistic", "demo", "both"],
        help="what to run on (default: both for 'all', realistic otherwise)",
    )
    p.add_argument("--model", type=Path, help="Hugging Face model folder (with --sae)")
    p.add_argument("--sae", type=Path, help="SAE folder or file (with --model)")
    p.add_argument(
        "--output",
        type=Path,
        help=f"markdown file to rewrite (default for 'all': {DOCS.relative_to(REPO)})",
    )
    p.add_argument("--workdir", type=Path, help="where generated stand-in assets go")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1, as a Ray replica with num_cpus=1 runs; "
        "on a shared 2-core machine 2 threads thrash whenever another process runs)",
    )
    return p.parse_args(argv)


def profiles(args: argparse.Namespace) -> list[Profile]:
    if args.what == "smoke" or args.model is not None:
        return [Profile.DEMO]
    chosen = args.profile or ("both" if args.what == "all" else "realistic")
    return [Profile.REALISTIC, Profile.DEMO] if chosen == "both" else [Profile(chosen)]


def run(args: argparse.Namespace, workdir: Path, profile: Profile = Profile.DEMO) -> Report:
    mode = Mode.SMOKE if args.what == "smoke" else Mode.QUICK if args.quick else Mode.FULL
    assets = resolve_assets(
        workdir,
        model=args.model,
        sae=args.sae,
        tiny=mode is Mode.SMOKE,
        realistic=profile is Profile.REALISTIC,
    )
    ctx = Context(assets, mode, workdir, profile)
    if mode is Mode.FULL and profile is Profile.REALISTIC:
        ctx.notes.append(REALISTIC_REPEATS)
    report = Report(profile=str(profile), model=assets.description, load_before=load_average())
    print(f"bench: {mode} run of the {profile} profile on {assets.description}", flush=True)
    for name in GROUPS[args.what]:
        fn, keys = MEASUREMENTS[name]
        print(f"bench: measuring {name} ...", flush=True)
        try:
            rows = fn(ctx)
        except Exception as e:  # one failed measurement must not lose the others' rows
            traceback.print_exc()
            reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rows = [Row.not_run(k, TARGETS[k], reason) for k in keys]
        for row in rows:
            report.add(row)
    for key in EXPECTED_ROWS:
        if key not in report.rows:
            report.add(Row.not_run(key, TARGETS[key], _skipped_reason(key, args.what)))
    report.rows = {k: report.rows[k] for k in EXPECTED_ROWS}
    report.notes += ctx.notes
    report.finish()
    return report


def _skipped_reason(key: str, what: str) -> str:
    if key == "gpu":
        return "no GPU lent to this session"
    return f"not part of 'python -m bench {what}'"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    output = args.output or (DOCS if args.what in ("all", "render") else None)
    if args.what == "render":
        assert output is not None
        command, reports = read_run(output.with_suffix(".json"))
        write_markdown(reports, output, command)
        print(f"bench: wrote {output} from {output.with_suffix('.json')}")
        return 0
    reports = []
    for profile in profiles(args):
        with tempfile.TemporaryDirectory(prefix="saeserve-bench-") as tmp:
            workdir = args.workdir or Path(tmp)
            reports.append(run(args, workdir / str(profile), profile))
    for report in reports:
        print(f"\n{report.profile} profile: {report.model}")
        print(text_table(report.ordered()))
        for row in report.ordered():
            if row.note:
                print(f"\n{row.measurement}: {row.note}")
    if output is not None:
        write_markdown(reports, output, command_line())
        print(f"\nbench: wrote {output} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
