"""py-spy profiles behind bench/analysis.md: where the service and the engine spend their time.

``python -m bench.pyspy_profile service`` starts the service on the bench assets and
records the model replica and the ingress replica (which serves gRPC) with py-spy during a
12 s load, then prints each process's heaviest frames (self and inclusive). The load is
``--load decompose`` (16 Decompose clients, row 3), ``overhead`` (one client calling a
1-token Decompose in a loop, row 4) or ``streams`` (8 unsteered greedy streams again and
again, row 6). ``python -m bench.pyspy_profile generate`` records the engine's
``generate`` (128 greedy tokens, 8 times) in this process and prints the inclusive share of
the saeserve and transformers frames. ``--profile`` picks the realistic assets (default)
or the demo. Needs ``py-spy`` on PATH (``pip install py-spy``) and ptrace rights (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench import batching
from bench.assets import bench_texts, resolve_assets
from bench.server import replica_pid, running_server


def summarize_raw(path: Path, *, keep: str = "", top: int = 12) -> str:
    """Self and inclusive shares of the frames in a py-spy ``--format raw`` file."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if keep and not any(keep in f for f in frames):
            continue
        n = int(count)
        total += n
        self_counts[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "  no samples"
    lines = [f"  {total} samples; heaviest self:"]
    lines += [f"  {100 * n / total:5.1f}% {f[:140]}" for f, n in self_counts.most_common(top)]
    lines.append("  inclusive (saeserve, Ray Serve, transformers frames):")
    wanted = ("saeserve", "serve/", "transformers/", "grpc")
    shown = [(f, n) for f, n in inclusive.most_common(200) if any(w in f for w in wanted)]
    lines += [f"  {100 * n / total:5.1f}% {f[:140]}" for f, n in shown[: 2 * top]]
    return "\n".join(lines)


def _run_load(kind: str, target: str, texts: list[str], sae_id: str, seconds: float) -> str:
    """Drive the service with one of the loads for ``seconds``; a line saying what it did."""
    import asyncio
    import time

    from bench import streams
    from saeserve_client import NO_RETRY, SaeserveClient

    if kind == "decompose":
        load = batching.run_load(target, texts, sae_id, seconds)
        return f"16 Decompose clients: {load.rate:.1f} requests/s; {load.cpu}"
    stop_at = time.perf_counter() + seconds
    n = 0
    if kind == "overhead":
        with SaeserveClient(target, retry=NO_RETRY, timeout=60.0) as client:
            while time.perf_counter() < stop_at:
                client.decompose("The", saes=[sae_id])
                n += 1
        return f"{n} sequential 1-token Decompose calls in {seconds:.0f} s"
    tokens = 0
    while time.perf_counter() < stop_at:
        made, _ = asyncio.run(streams.run_streams(target, sae_id, 8, 32, steer=False))
        tokens += made
        n += 1
    return f"{n} rounds of 8 unsteered streams x 32 tokens, {tokens} tokens in {seconds:.0f} s"


def profile_service(workdir: Path, seconds: float, kind: str, realistic: bool) -> None:
    assets = resolve_assets(workdir, realistic=realistic)
    from saeserve.engine.served_model import ServedModel

    served = ServedModel.load(assets.model_path, [assets.sae_path])
    texts = bench_texts(served.lm.tokenizer, 16, batching.TEXT_TOKENS)
    with running_server(assets, torch.get_num_threads()) as server:
        pids = {
            "model replica": replica_pid(),
            "ingress": replica_pid("SaeserveIngress"),
        }
        outs = {name: workdir / f"pyspy-{pid}.txt" for name, pid in pids.items()}
        record = ["py-spy", "record", "-d", str(int(seconds)), "-r", "50", "-f", "raw"]
        spies = [
            subprocess.Popen(
                [*record, "-p", str(pid), "-o", str(outs[name]), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        ]
        what = _run_load(kind, server.target, texts, assets.sae_id, seconds)
        for spy in spies:
            spy.wait()
    print(f"{assets.description}\n{what}")
    for name, out in outs.items():
        print(f"== {name} (pid {pids[name]})")
        print(summarize_raw(out) if out.is_file() else "  no profile written")


def profile_generate(workdir: Path, realistic: bool) -> None:
    out = workdir / "pyspy-generate.txt"
    cmd = ["py-spy", "record", "-r", "200", "-f", "raw", "-o", str(out), "--"]
    cmd += [sys.executable, "-m", "bench.pyspy_profile", "_generate", "--workdir", str(workdir)]
    cmd += ["--profile", "realistic" if realistic else "demo"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(summarize_raw(out, keep="engine_tokens"))


def _generate_workload(workdir: Path, realistic: bool) -> None:
    from bench.generation import PROMPT, engine_tokens
    from saeserve.engine.served_model import ServedModel
    from saeserve.engine.types import GenerateRequest, SamplingParams

    assets = resolve_assets(workdir, realistic=realistic)
    served = ServedModel.load(assets.model_path, [assets.sae_path])
    served.lm = replace(served.lm, stop_token_ids=())
    prompt = list(served.lm.tokenizer(PROMPT)["input_ids"])
    req = GenerateRequest(prompt, SamplingParams(max_new_tokens=128, temperature=0.0))
    for _ in range(8):
        engine_tokens(served, req)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pyspy_profile", description=__doc__)
    p.add_argument("what", choices=["service", "generate", "_generate"])
    p.add_argument("--seconds", type=float, default=12.0, help="service load duration")
    p.add_argument("--load", choices=["decompose", "overhead", "streams"], default="decompose")
    p.add_argument("--profile", choices=["realistic", "demo"], default="realistic")
    p.add_argument("--workdir", type=Path, help="where stand-in assets and profiles go")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="saeserve-pyspy-") as tmp:
        workdir = args.workdir or Path(tmp)
        realistic = args.profile == "realistic"
        if args.what == "service":
            profile_service(workdir, args.seconds, args.load, realistic)
        elif args.what == "generate":
            profile_generate(workdir, realistic)
        else:
            _generate_workload(workdir, realistic)


if __name__ == "__main__":
    main()
