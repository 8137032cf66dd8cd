"""Our TopK trainer beside EleutherAI's sparsify trainer, on the same activations (issue 3).

Three steps, each cached under ``--work`` (default /tmp/compare_trainers):

1. activations: the exact stream ``saeserve train-sae`` consumed for the demo SAE
   resid_post.1 (same recipe, read from that SAE's cfg.json: 128-token contexts of
   build/demo/corpus/train.txt, first position skipped, shuffled by the trainer's own
   ActivationBuffer with seed 0, 2,000,000 tokens) into ``train_acts.npy``, and the held-out
   activations that ``saeserve eval-sae`` sees (valid.txt read by
   ``saeserve.demo.corpus.read_documents``, same contexts and skip) into ``heldout_acts.npy``;
2. sparsify: its ``Trainer.fit`` on those activations, unchanged. The "model" handed to it is
   a stand-in whose ``input_ids`` are row numbers of the activation table and whose one
   module, ``replay``, returns those rows, so sparsify's own hook, b_dec init, losses,
   optimizer and dead-latent bookkeeping run as they do on a real model. One dataset row is
   1024 row numbers and its batch size is 1 row, so a step sees the same 1024 tokens, in the
   same order, as our trainer's step. Two settings: sparsify's defaults (ScheduleFree
   SignSGD, its lr 5e-3 / sqrt(n / 2^14), no AuxK) and Adam with our lr, warm-up and AuxK;
3. evaluation on the held-out activations: normalized MSE, explained variance, L0 and the
   fraction of latents that never fire there (``saeserve.sae.metrics``), for the committed
   demo SAE (``load_sae``, ``sae(x)``) and each sparsify SAE (``SparseCoder.forward``).

``--retrain-ours`` also reruns our trainer with the committed recipe into the work folder,
to time it under the same load as sparsify. Runs from a venv with eai-sparsify installed
and the service on the path, as a module (``bench/profile.py`` would shadow the standard
library's ``profile`` if run as a script); prints a markdown table and writes the numbers
as JSON::

    PYTHONPATH=service .sparsify-venv/bin/python -m bench.compare_trainers \
        --retrain-ours --out /tmp/compare_trainers/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "service" / "saeserve" / "demo" / "data"
OUR_SAE = DEMO / "saes" / "resid_post.1"
CORPUS = REPO / "build" / "demo" / "corpus"
EVAL_CHUNK = 8192


# --- 1. activations ---------------------------------------------------------------------------
def our_recipe() -> Any:
    """The TrainConfig the committed demo SAE was trained with (from its cfg.json)."""
    from saeserve.sae.train.config import TrainConfig

    recipe = json.loads((OUR_SAE / "cfg.json").read_text())["saeserve"]["metadata"]["recipe"]
    recipe.update(model=str(DEMO / "model"), corpus=str(CORPUS / "train.txt"), device="cpu")
    return TrainConfig(**recipe)


def extract_train(path: Path) -> None:
    """The activations our trainer consumed, in its order: [tokens, d] float32."""
    from saeserve.model.loader import load_model
    from saeserve.sae.train.loop import activation_stream

    cfg = our_recipe()
    stream = activation_stream(cfg, load_model(cfg.model), torch.device("cpu"))
    batches, seen = [], 0
    while seen < cfg.tokens:
        x = stream.next_batch()[: cfg.tokens - seen]  # the trainer truncates the last batch
        batches.append(x)
        seen += x.shape[0]
    np.save(path, torch.cat(batches).numpy())


def extract_heldout(path: Path) -> None:
    """Held-out activations as ``saeserve eval-sae`` sees them: [tokens, d] float32."""
    from saeserve.demo.corpus import read_documents
    from saeserve.model.hookpoints import resolve_hook_point
    from saeserve.model.loader import load_model
    from saeserve.sae.train.activations import hook_point_activations
    from saeserve.sae.train.corpus import texts_to_contexts

    cfg = our_recipe()
    lm = load_model(cfg.model)
    contexts = texts_to_contexts(
        lm.tokenizer,
        read_documents(CORPUS / "valid.txt"),
        cfg.context_length,
        separator_id=lm.eos_token_id,
    )
    run = hook_point_activations(lm, resolve_hook_point(cfg.hook_point, lm.layout, lm.model))
    skip = cfg.skip_first_positions
    chunks = [run(contexts[i : i + 32])[:, skip:] for i in range(0, contexts.shape[0], 32)]
    np.save(path, torch.cat(chunks).reshape(-1, chunks[0].shape[-1]).float().numpy())


# --- 2. sparsify --------------------------------------------------------------------------------
class _Rows(nn.Module):
    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table, persistent=False)  # [tokens, d]

    def forward(self, ids: Tensor) -> Tensor:
        return self.table[ids]  # [batch, seq, d]


class ActivationReplay(nn.Module):
    """A stand-in for sparsify's model: ``input_ids`` [batch, seq] are rows of ``table``."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.replay = _Rows(table)
        self.config = SimpleNamespace(num_hidden_layers=1)

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dummy_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids: Tensor, **_: Any) -> Tensor:
        return self.replay(input_ids)


def sparsify_settings(ours: Any) -> dict[str, dict[str, Any]]:
    """TrainConfig overrides per sparsify run: its defaults, and Adam matched to ours."""
    return {
        "sparsify (defaults: signum)": {},
        "sparsify (adam, our lr/warm-up/AuxK)": {
            "optimizer": "adam",
            "lr": ours.lr,
            "lr_warmup_steps": ours.lr_warmup_steps,
            "auxk_alpha": ours.auxk_coefficient,
            "dead_feature_threshold": ours.dead_tokens_threshold,
        },
    }


def train_sparsify(table: Tensor, ours: Any, overrides: dict[str, Any], save_dir: Path) -> Path:
    """Run sparsify's Trainer on ``table``; the folder of the saved SparseCoder."""
    from sparsify import SaeConfig, TrainConfig, Trainer

    rows = [
        {"input_ids": torch.arange(start, min(start + ours.batch_size, table.shape[0]))}
        for start in range(0, table.shape[0], ours.batch_size)
    ]
    cfg = TrainConfig(
        SaeConfig(k=ours.k, num_latents=ours.n),
        batch_size=1,  # one row of batch_size tokens
        hookpoints=["replay"],
        init_seeds=[ours.seed],
        log_to_wandb=False,
        save_every=10**9,
        save_dir=str(save_dir),
        run_name="run",
        **overrides,
    )
    Trainer(cfg, rows, ActivationReplay(table)).fit()  # type: ignore[arg-type]
    return save_dir / "run" / "replay"


# --- 3. evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(sae: tuple[Any, int], x: Tensor) -> dict[str, float]:
    """Metrics on x [t, d] of sae = (reconstruct, d_sae), where reconstruct(x) gives x_hat
    [t, d] and the latent index of every nonzero latent value (flat)."""
    from saeserve.sae.metrics import explained_variance, normalized_mse

    reconstruct, d_sae = sae
    x_hats, active, fired = [], 0, torch.zeros(d_sae, dtype=torch.bool)
    for start in range(0, x.shape[0], EVAL_CHUNK):
        x_hat, indices = reconstruct(x[start : start + EVAL_CHUNK])
        x_hats.append(x_hat)
        active += indices.numel()
        fired[indices.unique()] = True
    x_hat = torch.cat(x_hats)
    return {
        "normalized_mse": normalized_mse(x, x_hat),
        "explained_variance": explained_variance(x, x_hat),
        "l0": active / x.shape[0],
        "dead_fraction_heldout": float((~fired).float().mean()),
    }


def ours_reconstruct(folder: Path) -> tuple[Any, int]:
    from saeserve.sae.formats import load_sae

    sae = load_sae(folder).eval()

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        latents = sae.encode(x)  # [t, d_sae], dense
        nonzero = latents.nonzero()[:, 1]
        return sae(x), nonzero

    return run, sae.d_sae


def sparsify_reconstruct(folder: Path) -> tuple[Any, int]:
    from sparsify import SparseCoder

    sae = SparseCoder.load_from_disk(folder).eval()

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        out = sae(x)
        return out.sae_out.float(), out.latent_indices[out.latent_acts > 0]

    return run, sae.num_latents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_trainers"))
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--retrain-ours", action="store_true", help="time our trainer too")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    ours = our_recipe()
    meta = json.loads((OUR_SAE / "cfg.json").read_text())["saeserve"]["metadata"]

    train_path, heldout_path = args.work / "train_acts.npy", args.work / "heldout_acts.npy"
    if not train_path.exists():
        extract_train(train_path)
    if not heldout_path.exists():
        extract_heldout(heldout_path)
    table = torch.from_numpy(np.load(train_path))
    heldout = torch.from_numpy(np.load(heldout_path))
    print(f"activations: train {tuple(table.shape)}, held-out {tuple(heldout.shape)}")

    results: list[dict[str, Any]] = []
    results.append(
        {
            "trainer": "saeserve train-sae (committed demo SAE)",
            "tokens": meta["tokens_seen"],
            "wall_s": None,
            **evaluate(ours_reconstruct(OUR_SAE), heldout),
        }
    )
    if args.retrain_ours:
        from dataclasses import replace

        from saeserve.sae.train.loop import train_sae

        folder = args.work / "ours"
        start = time.perf_counter()
        result = train_sae(replace(ours, out=str(folder), progress=False, threads=args.threads))
        wall = time.perf_counter() - start
        results.append(
            {
                "trainer": "saeserve train-sae (rerun, same recipe)",
                "tokens": result.tokens_seen,
                "wall_s": wall,
                "includes": "model forward for the activations",
                **evaluate(ours_reconstruct(folder), heldout),
            }
        )
    for name, overrides in sparsify_settings(ours).items():
        save_dir = args.work / ("sparsify_" + (overrides.get("optimizer") or "default"))
        start = time.perf_counter()
        folder = train_sparsify(table, ours, overrides, save_dir)
        wall = time.perf_counter() - start
        state = torch.load(save_dir / "run" / "rank_0_state.pt", weights_only=True)
        since = state["num_tokens_since_fired"]["replay"]
        threshold = overrides.get("dead_feature_threshold", 10_000_000)
        results.append(
            {
                "trainer": name,
                "tokens": int(table.shape[0]),
                "wall_s": wall,
                "includes": "activations precomputed",
                "overrides": overrides,
                "dead_fraction_train": float((since > threshold).float().mean()),
                "tokens_since_fired_over_100k": float((since > 100_000).float().mean()),
                **evaluate(sparsify_reconstruct(folder), heldout),
            }
        )
    _print_table(results, heldout.shape[0])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _print_table(results: list[dict[str, Any]], heldout_tokens: int) -> None:
    print(f"\nheld-out: {heldout_tokens:,} activation vectors\n")
    print("| trainer | tokens | wall time | normalized MSE | explained variance | L0 | dead |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
        print(
            f"| {r['trainer']} | {r['tokens']:,} | {wall} | {r['normalized_mse']:.4f} | "
            f"{r['explained_variance']:.4f} | {r['l0']:.1f} | "
            f"{r['dead_fraction_heldout']:.2%} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
