"""Train the demo's small GPT-2 on the demo corpus and save it as a Hugging Face folder.

The corpus (``train.txt`` / ``valid.txt`` from :mod:`saeserve.demo.corpus`) is tokenized
with the demo tokenizer, one ``<|endoftext|>`` after each document, into one token stream
per split. Training reads the training stream in non-overlapping windows, shuffled anew
each epoch from a seed, so step ``s`` always sees the same batch and a resumed run
continues identically. AdamW with linear warm-up and cosine decay, gradient clipping,
validation loss over the whole validation stream every ``eval_every`` steps, and the
best model by validation loss saved with ``save_pretrained`` (safetensors) beside the
tokenizer files. It runs on the CPU by default; ``--device cuda`` uses a GPU when lent.

Run: ``python -m saeserve.demo.train_lm --corpus-dir build/demo/corpus --tokenizer-dir DIR
--out-dir DIR`` (``--help`` lists every field of :class:`TrainConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from saeserve.demo.corpus import read_documents
from saeserve.demo.tokenizer import TOKENIZER_FILES
from saeserve.sae.train.flags import field_docs


@dataclass
class TrainConfig:
    """Everything that decides a demo model training run; the defaults are the committed model's."""

    corpus_dir: Path = Path("build/demo/corpus")
    """Folder with train.txt and valid.txt from the corpus step."""
    tokenizer_dir: Path = Path("build/demo/tokenizer")
    """Folder with tokenizer.json from the tokenizer step."""
    out_dir: Path = Path("build/demo/model")
    """Folder the Hugging Face model (best validation loss) and tokenizer are saved to."""
    checkpoint_dir: Path | None = None
    """Where to keep a resumable checkpoint; an existing one there is resumed from."""
    n_layer: int = 4
    """Transformer blocks."""
    n_embd: int = 128
    """Residual stream width (the SAEs' d_in)."""
    n_head: int = 4
    """Attention heads per block."""
    n_positions: int = 256
    """Context length, in tokens."""
    dropout: float = 0.0
    """Dropout in embeddings, attention and residual branches."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    max_steps: int = 1100
    """Optimizer steps; tokens seen = max_steps * batch_size * n_positions."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    warmup_steps: int = 100
    """Steps of linear warm-up from zero."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, norms or embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this."""
    eval_every: int = 100
    """Steps between validation-loss evaluations (also at the last step)."""
    eval_max_tokens: int = 65536
    """Cap on validation tokens per evaluation (whole windows)."""
    checkpoint_every: int = 100
    """Steps between resumable checkpoints (when checkpoint_dir is set)."""
    log_every: int = 20
    """Steps between training-loss log lines."""
    seed: int = 0
    """Seeds the initialization and the order of training windows."""
    threads: int = 2
    """torch.set_num_threads; the demo is sized for a 2-core machine."""
    device: str = "cpu"
    """Torch device: cpu or cuda."""
    bf16: bool = True
    """Autocast matmuls to bfloat16 (weights and optimizer stay fp32); ~4x faster on AVX-512 CPUs."""


@dataclass
class TrainResult:
    """What :func:`train_lm` did and measured."""

    out_dir: Path
    parameters: int
    steps: int
    tokens: int
    train_tokens_available: int
    valid_tokens: int
    wall_s: float
    tokens_per_s: float
    best_val_loss: float
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_val_perplexity(self) -> float:
        return math.exp(self.best_val_loss)


# --- data --------------------------------------------------------------------------------


def tokenize_corpus(path: Path, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """One uint16 token stream: each document's ids followed by the eos id."""
    eos = tokenizer.eos_token_id
    assert isinstance(eos, int)
    ids: list[int] = []
    backend = tokenizer.backend_tokenizer  # the tokenizers object: no length warnings, batched
    docs = read_documents(path)
    for start in range(0, len(docs), 256):
        for encoding in backend.encode_batch(docs[start : start + 256], add_special_tokens=False):
            ids.extend(encoding.ids)
            ids.append(eos)
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise ValueError("token ids do not fit uint16")
    return np.asarray(ids, dtype=np.uint16)


def train_batch(stream: np.ndarray, step: int, cfg: TrainConfig) -> torch.Tensor:
    """Windows ``[batch, n_positions + 1]`` for one step, a pure function of (seed, step).

    Each epoch cuts the stream into windows at a seeded offset and visits them in a seeded
    order; consecutive steps take consecutive slices of that order.
    """
    width = cfg.n_positions + 1
    per_epoch = (len(stream) - cfg.n_positions) // width
    rows = []
    for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        epoch, slot = divmod(i, per_epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        offset = int(rng.integers(0, cfg.n_positions))
        window = int(rng.permutation(per_epoch)[slot])
        start = offset + window * width
        rows.append(stream[start : start + width].astype(np.int64))
    return torch.from_numpy(np.stack(rows))


def eval_windows(stream: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
    """Non-overlapping validation windows ``[n, n_positions + 1]`` from the stream start."""
    width = cfg.n_positions + 1
    n = min(len(stream) // width, max(1, cfg.eval_max_tokens // cfg.n_positions))
    return torch.from_numpy(stream[: n * width].astype(np.int64).reshape(n, width))


# --- model and optimization --------------------------------------------------------------


def build_model(cfg: TrainConfig, vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the configured size (tied embeddings)."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW decaying only matrices inside the blocks (GPT-2's Conv1D weights)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and ".h." in f".{name}" else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def lm_loss(model: GPT2LMHeadModel, windows: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over windows ``[batch, n_positions + 1]``."""
    with torch.autocast(windows.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=windows[:, :-1]).logits  # [batch, seq, vocab]
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


@torch.no_grad()
def evaluate(
    model: GPT2LMHeadModel, windows: torch.Tensor, batch_size: int, bf16: bool = False
) -> float:
    """Mean validation loss per token over all windows."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(model.device)
        total += lm_loss(model, batch, bf16).item() * batch.numel()
        count += batch.numel()
    model.train()
    return total / count


# --- saving and sampling -----------------------------------------------------------------


def save_model(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: Path, out_dir: Path
) -> None:
    """Write the HF folder: config, safetensors weights, generation config, tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:  # copied, so the folder gets the tokenizer step's exact files
        shutil.copyfile(tokenizer_dir / name, out_dir / name)


@torch.no_grad()
def sample_text(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> str:
    """A continuation of ``prompt`` (greedy when temperature is 0), without the prompt."""
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    torch.manual_seed(seed)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=top_k if temperature > 0 else None,
        pad_token_id=tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


SAMPLE_PROMPTS = (
    "It is a truth universally acknowledged, that",
    "The Python interpreter",
    "When Debian is installed,",
)
"""Prompts for the samples logged after training and shown in docs/demo-model.md."""


# --- training loop -----------------------------------------------------------------------


def _save_checkpoint(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, tmp)
    tmp.replace(path / "checkpoint.pt")


def train_lm(cfg: TrainConfig) -> TrainResult:
    """Train the demo GPT-2 as configured; the best model is saved to ``cfg.out_dir``."""
    torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    eos = tokenizer.eos_token_id
    t0 = time.perf_counter()
    train_stream = tokenize_corpus(cfg.corpus_dir / "train.txt", tokenizer)
    valid = eval_windows(tokenize_corpus(cfg.corpus_dir / "valid.txt", tokenizer), cfg)
    print(
        f"tokenized: train {len(train_stream):,} tokens, valid {valid[:, 1:].numel():,} "
        f"tokens ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    model = build_model(cfg, len(tokenizer), eos)
    model.to(cfg.device)  # type: ignore[arg-type]  # transformers wraps .to; mypy misreads it
    params = model.num_parameters()
    print(
        f"model: {params:,} parameters ({model.num_parameters(exclude_embeddings=True):,} "
        "without embeddings)",
        flush=True,
    )
    opt = build_optimizer(model, cfg)

    start_step, best_loss, best_step, wall_before = 0, math.inf, -1, 0.0
    history: list[dict[str, float]] = []
    ckpt = cfg.checkpoint_dir / "checkpoint.pt" if cfg.checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=cfg.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step, best_loss, best_step = state["step"], state["best_loss"], state["best_step"]
        wall_before, history = state["wall_s"], json.loads(state["history"])
        print(f"resumed from {ckpt} at step {start_step}", flush=True)

    tokens_per_step = cfg.batch_size * cfg.n_positions
    model.train()
    t_start = time.perf_counter()
    t_log, loss_sum, loss_n = t_start, 0.0, 0
    for step in range(start_step, cfg.max_steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, train_batch(train_stream, step, cfg).to(cfg.device), cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        done = step + 1
        if done % cfg.log_every == 0:
            now = time.perf_counter()
            print(
                f"step {done}/{cfg.max_steps} loss {loss_sum / loss_n:.4f} lr {lr:.2e} "
                f"grad {grad_norm.item():.2f} tok/s {loss_n * tokens_per_step / (now - t_log):,.0f} "
                f"elapsed {wall_before + now - t_start:,.0f}s",
                flush=True,
            )
            t_log, loss_sum, loss_n = now, 0.0, 0
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            t_eval = time.perf_counter()
            val = evaluate(model, valid, cfg.batch_size, cfg.bf16)
            history.append({"step": done, "tokens": done * tokens_per_step, "val_loss": val})
            mark = ""
            if val < best_loss:
                best_loss, best_step, mark = val, done, " (best, saved)"
                save_model(model, tokenizer, cfg.tokenizer_dir, cfg.out_dir)
            print(
                f"eval step {done} val_loss {val:.4f} ppl {math.exp(val):.1f}{mark} "
                f"({time.perf_counter() - t_eval:.0f}s)",
                flush=True,
            )
            t_log += time.perf_counter() - t_eval  # keep eval time out of tok/s
        if cfg.checkpoint_dir is not None and (
            done % cfg.checkpoint_every == 0 or done == cfg.max_steps
        ):
            _save_checkpoint(
                cfg.checkpoint_dir,
                model,
                opt,
                {
                    "step": done,
                    "best_loss": best_loss,
                    "best_step": best_step,
                    "wall_s": wall_before + time.perf_counter() - t_start,
                    "history": json.dumps(history),
                },
            )

    wall = wall_before + time.perf_counter() - t_start
    tokens = cfg.max_steps * tokens_per_step
    result = TrainResult(
        out_dir=cfg.out_dir,
        parameters=params,
        steps=cfg.max_steps,
        tokens=tokens,
        train_tokens_available=len(train_stream),
        valid_tokens=valid[:, 1:].numel(),
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        best_val_loss=best_loss,
        best_step=best_step,
        history=history,
    )
    _write_training_record(cfg, result)
    return result


def _write_training_record(cfg: TrainConfig, result: TrainResult) -> None:
    """training.json in the model folder: the config and the measured numbers."""
    record = {
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
        },
        "result": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()
        },
        "best_val_perplexity": result.best_val_perplexity,
    }
    (cfg.out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")


# --- command line ------------------------------------------------------------------------


def config_parser() -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per TrainConfig field, help from its docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        default = f.default
        flag, help_text = (
            f"--{f.name.replace('_', '-')}",
            f"{docs.get(f.name, '')} (default: {default})",
        )
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        kind: Any = {int: int, float: float, str: str}.get(type(default), Path)
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument(
        "--samples-only",
        action="store_true",
        help="do not train: print samples from the model already in --out-dir",
    )
    return parser


def print_samples(out_dir: Path, threads: int = 2) -> None:
    """Print one greedy and one sampled continuation of each of SAMPLE_PROMPTS."""
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = GPT2LMHeadModel.from_pretrained(out_dir)
    for prompt in SAMPLE_PROMPTS:
        for temperature in (0.0, 0.8):
            text = sample_text(model, tokenizer, prompt, temperature=temperature)
            print(f"[T={temperature}] {prompt}{text}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = vars(config_parser().parse_args(argv))
    samples_only = args.pop("samples_only")
    cfg = TrainConfig(**args)
    if not samples_only:
        result = train_lm(cfg)
        print(
            f"done: {result.parameters:,} params, {result.tokens:,} tokens in {result.wall_s:,.0f}s "
            f"({result.tokens_per_s:,.0f} tok/s); best val_loss {result.best_val_loss:.4f} "
            f"(ppl {result.best_val_perplexity:.1f}) at step {result.best_step}",
            flush=True,
        )
    print_samples(cfg.out_dir, cfg.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
