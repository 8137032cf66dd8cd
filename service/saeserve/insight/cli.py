"""``saeserve index``: build a feature index of one SAE over a text corpus.

Example::

    saeserve index --model models/demo --sae saes/demo/resid_post.2 \\
        --corpus corpus/ --out indexes/resid_post.2 --max-tokens 200000

The corpus is a .txt file or a folder searched recursively for .txt files; each file is
split at blank lines and its paragraphs regrouped into texts of about ``--text-chars``
characters, each tokenized and cut into contexts of ``--context-length`` tokens. With
``--explanations FILE.jsonl`` (Neuronpedia-style) those explanations are used; other
features get a label generated from their top tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from saeserve.errors import NotFound, SaeserveError


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(
                total=args.max_tokens, unit="tok", desc=f"index {sae.cfg.id or args.sae.name}"
            )

        def progress(n_tokens: int) -> None:
            if bar is not None:
                bar.update(n_tokens - bar.n)

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
            progress=progress,
        )
        if bar is not None:
            bar.close()
    except SaeserveError as exc:
        print(f"saeserve index: {exc}", file=sys.stderr)
        return 2
    index.save(args.out)
    alive = int((index.counts > 0).sum())
    n_imported = sum(s == "imported" for s in index.explanation_sources)
    print(
        f"indexed {index.meta.n_tokens} tokens in {index.meta.n_contexts} contexts; "
        f"{alive}/{index.d_sae} features fired ({1 - alive / index.d_sae:.1%} dead); "
        f"{n_imported} imported explanations; wrote {args.out}"
    )
    return 0
