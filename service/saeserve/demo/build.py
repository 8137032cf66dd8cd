"""``saeserve build-demo``: rebuild the built-in demo from nothing but Debian's text packages.

Steps, each skipped when its output already exists (``--force`` redoes them):
1. corpus: English prose from installed Debian packages (``--install`` apt-installs them);
2. tokenizer: a byte-level BPE trained on the corpus;
3. model: a small GPT-2 trained on the corpus (``demo/data/model``);
4. SAEs: TopK SAEs on ``resid_post`` of the chosen layers (``demo/data/saes/resid_post.L``);
5. evaluation on the held-out split (``eval.json`` beside each SAE);
6. a feature index per SAE (``feature_index/`` inside each SAE folder).

The server's default settings serve whatever this writes. Timings on this project's 2-core
CPU machine are in docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

DEMO_DATA = Path(__file__).parent / "data"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEMO_DATA, help="where model/ and saes/ go")
    parser.add_argument(
        "--work", type=Path, default=Path("build/demo"), help="corpus, tokenizer and checkpoints"
    )
    parser.add_argument(
        "--install", action="store_true", help="apt-get install the corpus packages"
    )
    parser.add_argument("--force", action="store_true", help="redo steps whose output exists")
    parser.add_argument("--lm-steps", type=int, default=1100, help="demo LM optimizer steps")
    parser.add_argument(
        "--layers", default="1,2", help="comma-separated layers for resid_post SAEs"
    )
    parser.add_argument("--n", type=int, default=4096, help="latents per SAE")
    parser.add_argument("--k", type=int, default=32, help="active latents per token")
    parser.add_argument("--sae-tokens", type=int, default=2_000_000, help="training tokens per SAE")
    parser.add_argument(
        "--sae-lr",
        type=float,
        default=8e-4,
        help="SAE learning rate (2x the paper's formula at n=4096)",
    )
    parser.add_argument("--sae-batch", type=int, default=1024, help="SAE batch size in tokens")
    parser.add_argument(
        "--index-tokens", type=int, default=300_000, help="corpus tokens per feature index"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    from saeserve.demo.corpus import build_corpus, read_documents
    from saeserve.demo.tokenizer import train_tokenizer
    from saeserve.demo.train_lm import TrainConfig as LMConfig
    from saeserve.demo.train_lm import train_lm

    work: Path = args.work
    corpus, tokenizer_dir, model_dir = work / "corpus", work / "tokenizer", args.out / "model"
    started = time.perf_counter()
    if args.force or not (corpus / "train.txt").exists():
        _step("corpus", lambda: build_corpus(corpus, install=args.install))
    if args.force or not (tokenizer_dir / "tokenizer.json").exists():
        _step("tokenizer", lambda: train_tokenizer(corpus / "train.txt", tokenizer_dir))
    if args.force or not (model_dir / "model.safetensors").exists():
        cfg = LMConfig(
            corpus_dir=corpus,
            tokenizer_dir=tokenizer_dir,
            out_dir=model_dir,
            checkpoint_dir=work / "lm_ckpt",
            max_steps=args.lm_steps,
            threads=args.threads,
        )
        _step("language model", lambda: train_lm(cfg))
    valid = read_documents(corpus / "valid.txt")
    summary = {}
    for layer in [int(x) for x in args.layers.split(",") if x]:
        summary[f"resid_post.{layer}"] = _build_sae(args, layer, model_dir, corpus, valid)
    print(json.dumps(summary, indent=2))
    print(f"build-demo finished in {time.perf_counter() - started:.0f} s; output in {args.out}")
    return 0


def _build_sae(
    args: argparse.Namespace, layer: int, model_dir: Path, corpus: Path, valid: list[str]
) -> dict:
    from saeserve.insight.index import build_index
    from saeserve.model.loader import load_model
    from saeserve.sae.evaluate import evaluate_sae
    from saeserve.sae.formats import load_sae
    from saeserve.sae.train.config import TrainConfig
    from saeserve.sae.train.loop import train_sae

    sae_id = f"resid_post.{layer}"
    folder = args.out / "saes" / sae_id
    if args.force or not (folder / "cfg.json").exists():
        cfg = TrainConfig(
            model=str(model_dir),
            hook_point=sae_id,
            corpus=str(corpus / "train.txt"),
            out=str(folder),
            k=args.k,
            n=args.n,
            tokens=args.sae_tokens,
            lr=args.sae_lr,
            batch_size=args.sae_batch,
            device=args.device,
            threads=1,  # faster than 2 on a shared 2-core machine (see the trainer's notes)
            sae_id=sae_id,
            checkpoint_every=200,
        )
        _step(f"SAE {sae_id}", lambda: train_sae(cfg))
    lm = load_model(model_dir)
    sae = load_sae(folder)
    eval_path = folder / "eval.json"
    if args.force or not eval_path.exists():
        result = _step(f"eval {sae_id}", lambda: evaluate_sae(lm, sae, valid))
        eval_path.write_text(json.dumps(asdict(result), indent=2, default=float) + "\n")
    index_dir = folder / "feature_index"
    if args.force or not (index_dir / "index.json").exists():
        from saeserve.demo.corpus import read_documents

        texts = read_documents(corpus / "train.txt")
        index = _step(
            f"index {sae_id}",
            lambda: build_index(
                lm, sae, texts, max_tokens=args.index_tokens, n_top_contexts=12, context_length=32
            ),
        )
        index.save(index_dir)
    return json.loads(eval_path.read_text())


def _step(name: str, fn):  # type: ignore[no-untyped-def]
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    out = fn()
    print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return out
