"""``saeserve index``: build a feature index of one SAE over a text corpus.

Example::

    saeserve index --model models/demo --sae saes/demo/resid_post.2 \\
        --corpus corpus/ --out indexes/resid_post.2 --max-tokens 200000

Progress (tokens done of ``--max-tokens``, rate, ETA, features fired, state size) goes
to stderr every ``--progress-every`` seconds. The build's memory (its state plus the
finished index's arrays, beside the model and SAE) is held to ``--memory-budget``; past
it the build stops with a message saying so. ``--checkpoint DIR`` (default: the output
folder's name + ``.checkpoint``) is written every ``--checkpoint-every`` tokens; after an
interruption the same command with ``--resume`` continues from it and writes the same
index; it is removed once the index is written.

The corpus is a .txt file or a folder searched recursively for .txt files; each file is
split at blank lines and its paragraphs regrouped into texts of about ``--text-chars``
characters, each tokenized and cut into contexts of ``--context-length`` tokens. With
``--explanations FILE.jsonl`` (Neuronpedia-style) those explanations are used; other
features get a label generated from their top tokens.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from saeserve.errors import NotFound, SaeserveError

if TYPE_CHECKING:
    from saeserve.insight.index import BuildProgress

DEFAULT_MEMORY_BUDGET_GIB = 5.0  # saeserve.insight.index.DEFAULT_MEMORY_BUDGET, in GiB


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="Hugging Face model folder")
    parser.add_argument(
        "--sae", required=True, type=Path, help="SAE folder or file (any supported format)"
    )
    parser.add_argument(
        "--corpus", required=True, type=Path, help=".txt file or folder of .txt files"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the index into")
    parser.add_argument("--explanations", type=Path, help="Neuronpedia-style explanations JSONL")
    parser.add_argument(
        "--explanations-sae", help="keep only explanation lines whose 'layer' (or 'sae') is this"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=1_000_000, help="tokens to index (default 1e6)"
    )
    parser.add_argument("--context-length", type=int, default=64, help="tokens per context")
    parser.add_argument(
        "--top-contexts", type=int, default=20, help="top contexts kept per feature"
    )
    parser.add_argument(
        "--logit-tokens", type=int, default=10, help="promoted/suppressed tokens kept"
    )
    parser.add_argument(
        "--histogram-bins", type=int, default=32, help="max histogram bins per feature"
    )
    parser.add_argument(
        "--quantile-bands", type=int, default=3, help="bands of sampled contexts (0: none)"
    )
    parser.add_argument(
        "--samples-per-band", type=int, default=5, help="sampled contexts kept per band"
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the context sample")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    parser.add_argument(
        "--dense-top-k", type=int, default=64, help="latents read per token of a non-TopK SAE"
    )
    parser.add_argument(
        "--logit-lens",
        choices=("final_norm_gain", "plain"),
        default="final_norm_gain",
        help="through the final norm's centring and gain, as GetFeature without an index "
        "(saeserve.engine.feature_math), or W_U @ W_dec[f] with no norm",
    )
    parser.add_argument(
        "--include-special-tokens", action="store_true", help="count BOS/EOS/pad tokens too"
    )
    parser.add_argument("--text-chars", type=int, default=2000, help="characters per text read")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)"
    )
    parser.add_argument(
        "--dtype", default="float32", help="model dtype: float32, bfloat16, float16"
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=DEFAULT_MEMORY_BUDGET_GIB,
        help=f"GiB the build's state and the finished index may take beside the model and "
        f"SAE (default {DEFAULT_MEMORY_BUDGET_GIB:g})",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint folder (default: OUT.checkpoint)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1_000_000,
        help="corpus tokens between checkpoints (default 1e6)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint, if there is one"
    )
    parser.add_argument(
        "--progress-every", type=float, default=10.0, help="seconds between progress lines"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


@dataclass
class ProgressLog:
    """Writes one progress line to a stream at most every ``every`` seconds."""

    total: int
    every: float
    label: str
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    last: float = -math.inf

    def __call__(self, p: BuildProgress) -> None:
        now = time.monotonic()
        if now - self.last < self.every and p.corpus_tokens < self.total:
            return
        self.last = now
        rate = (p.corpus_tokens - p.resumed_tokens) / max(now - self.started, 1e-9)
        left = max(self.total - p.corpus_tokens, 0) / rate if rate > 0 else math.inf
        eta = "?" if math.isinf(left) else f"{int(left) // 60}m{int(left) % 60:02d}s"
        print(
            f"{self.label}: {p.corpus_tokens:,}/{self.total:,} tokens "
            f"({p.corpus_tokens / max(self.total, 1):.1%}), {rate:,.0f} tok/s, ETA {eta}; "
            f"{p.fired:,} features fired, state {p.state_bytes / 2**20:,.0f} MiB",
            file=self.stream,
            flush=True,
        )


def read_corpus(path: Path, text_chars: int = 2000) -> Iterator[str]:
    """Texts of about ``text_chars`` characters: paragraphs of each .txt file, regrouped."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.txt"))
    else:
        raise NotFound(f"corpus: no file or folder {path}")
    if not files:
        raise NotFound(f"corpus: no .txt files under {path}")
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        group: list[str] = []
        size = 0
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            group.append(paragraph)
            size += len(paragraph)
            if size >= text_chars:
                yield "\n\n".join(group)
                group, size = [], 0
        if group:
            yield "\n\n".join(group)


def run(args: argparse.Namespace) -> int:
    import torch

    from saeserve.insight.checkpoint import remove_checkpoint
    from saeserve.insight.explanations import read_explanations
    from saeserve.insight.index import build_index
    from saeserve.model.loader import load_model
    from saeserve.sae.formats import load_sae

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        lm = load_model(args.model, device=device, dtype=args.dtype)
        sae = load_sae(args.sae)
        imported = (
            read_explanations(args.explanations, sae.d_sae, sae=args.explanations_sae)
            if args.explanations
            else None
        )
        progress = None
        if not args.no_progress:
            label = f"index {sae.cfg.id or args.sae.name}"
            progress = ProgressLog(args.max_tokens, args.progress_every, label)
        checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".checkpoint")
        index = build_index(
            lm,
            sae,
            read_corpus(args.corpus, args.text_chars),
            context_length=args.context_length,
            n_top_contexts=args.top_contexts,
            n_logit_tokens=args.logit_tokens,
            histogram_bins=args.histogram_bins,
            quantile_bands=args.quantile_bands,
            samples_per_band=args.samples_per_band,
            sample_seed=args.sample_seed,
            batch_size=args.batch_size,
            dense_top_k=args.dense_top_k,
            max_tokens=args.max_tokens,
            include_special_tokens=args.include_special_tokens,
            logit_lens=args.logit_lens,
            explanations=imported,
            memory_budget=int(args.memory_budget * 2**30),
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=progress,
        )
    except SaeserveError as exc:
        print(f"saeserve index: {exc}", file=sys.stderr)
        return 2
    index.save(args.out)
    remove_checkpoint(checkpoint)
    alive = int((index.counts > 0).sum())
    n_imported = sum(s == "imported" for s in index.explanation_sources)
    print(
        f"indexed {index.meta.n_tokens} tokens in {index.meta.n_contexts} contexts; "
        f"{alive}/{index.d_sae} features fired ({1 - alive / index.d_sae:.1%} dead); "
        f"{n_imported} imported explanations; wrote {args.out}"
    )
    return 0
