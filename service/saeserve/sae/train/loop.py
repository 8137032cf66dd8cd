"""The training run behind ``saeserve train-sae``: model -> activations -> SaeTrainer -> SAE folder.

``train_sae(cfg)`` loads the model, cuts the corpus into contexts, streams shuffled
activations of the hook point (``ActivationBuffer``), initialises the SAE from the first
``init_sample_tokens`` of them (dataset scale, geometric-median b_dec), and steps the
``SaeTrainer`` until ``cfg.tokens`` tokens are consumed, with a progress bar of tokens, loss,
FVU, L0 and dead fraction. Every ``checkpoint_every`` steps (and on Ctrl-C) it writes
``OUT/checkpoint.pt``: trainer state (weights, Adam moments, dead counters), stream position
and RNG state; ``resume=True`` continues from it and reproduces the uninterrupted run's losses
bit for bit. The result is written with ``write_sae`` (SAELens layout) with the recipe, tokens
seen and final metrics in the config's metadata.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saeserve.errors import InvalidArgument
from saeserve.sae.base import Sae
from saeserve.sae.train.activations import ActivationBuffer, hook_point_activations
from saeserve.sae.train.config import RESUMABLE_CHANGES, TrainConfig
from saeserve.sae.train.corpus import read_documents, texts_to_contexts
from saeserve.sae.train.trainer import SaeTrainer, StepMetrics

if TYPE_CHECKING:
    from saeserve.model.loader import LoadedModel

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What a ``train_sae`` invocation produced."""

    sae: Sae
    """The trained SAE (model-space encode/decode; normalisation recorded in its config)."""
    path: Path | None
    """The SAE folder, or None when the invocation stopped early (``stop_after_steps``)."""
    steps: int
    """Optimizer steps done in total (including those before a resume)."""
    tokens_seen: int
    """Activation vectors consumed in total."""
    metrics: dict[str, float]
    """Final metrics: mean FVU, explained variance, L0, AuxK loss over the last steps, dead fraction."""
    history: list[StepMetrics] = field(default_factory=list)
    """Per-step metrics of this invocation."""
    checkpoint: Path | None = None
    """The checkpoint left behind, if any."""


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["input_norm"] = str(cfg.input_norm)
    return out


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    now = _config_dict(cfg)
    changed = sorted(
        k
        for k in now.keys() | saved.keys()
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InvalidArgument(f"resume: settings differ from the checkpoint's ({details})")


def _final_metrics(window: deque[StepMetrics], dead_fraction: float) -> dict[str, float]:
    n = max(1, len(window))
    fvu = sum(m.fvu for m in window) / n
    return {
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": sum(m.l0 for m in window) / n,
        "auxk_loss": sum(m.auxk_loss for m in window) / n,
        "dead_fraction": dead_fraction,
        "steps_averaged": float(len(window)),
    }


def _save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    trainer: SaeTrainer,
    stream: ActivationBuffer,
    window: deque[StepMetrics],
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "config": _config_dict(cfg),
        "trainer": trainer.state_dict(),
        "stream": stream.state_dict(),
        "window": [list(m) for m in window],
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION:
        raise InvalidArgument(f"resume: {path} has checkpoint version {state.get('version')!r}")
    return state


def _progress(cfg: TrainConfig, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.tokens,
        initial=initial,
        unit="tok",
        unit_scale=True,
        disable=not cfg.progress,
        dynamic_ncols=True,
        desc=f"train-sae {cfg.hook_point}",
    )


def activation_stream(cfg: TrainConfig, lm: LoadedModel, device: torch.device) -> ActivationBuffer:
    """The shuffled activations of ``cfg.hook_point`` over just enough of ``cfg.corpus``."""
    from saeserve.model.hookpoints import resolve_hook_point

    point = resolve_hook_point(cfg.hook_point, lm.layout, lm.model)
    usable = cfg.context_length - cfg.skip_first_positions
    wanted = cfg.tokens + cfg.buffer_tokens + cfg.init_sample_tokens
    contexts = texts_to_contexts(
        lm.tokenizer,
        read_documents(cfg.corpus),
        cfg.context_length,
        separator_id=lm.eos_token_id,
        max_tokens=(math.ceil(wanted / usable) + 1) * cfg.context_length,
    )
    return ActivationBuffer(
        contexts,
        hook_point_activations(lm, point),
        batch_size=cfg.batch_size,
        buffer_tokens=cfg.buffer_tokens,
        model_batch_size=cfg.model_batch_size,
        skip_first_positions=cfg.skip_first_positions,
        seed=cfg.seed,
        device=device,
    )


def train_sae(cfg: TrainConfig) -> TrainResult:
    """Train a TopK SAE as ``cfg`` says; see the module docstring."""
    from saeserve.model.loader import load_model, resolve_device
    from saeserve.sae.formats import write_sae

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_FILE
    state = _load_checkpoint(checkpoint) if cfg.resume and checkpoint.is_file() else None
    if state is not None:
        _check_resumable(state["config"], cfg)

    lm = load_model(cfg.model, device=str(device), dtype=cfg.model_dtype)
    stream = activation_stream(cfg, lm, device)
    if state is not None:
        stream.load_state_dict(state["stream"])
    trainer = SaeTrainer(cfg, stream.d, device=device, model_name=lm.name)
    window: deque[StepMetrics] = deque(maxlen=max(1, min(100, cfg.total_steps // 10)))
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        window.extend(StepMetrics(*m) for m in state["window"])
        torch.set_rng_state(state["torch_rng"])
    else:
        trainer.init_from_sample(stream.peek(cfg.init_sample_tokens))

    history: list[StepMetrics] = []
    steps_this_run = 0
    bar = _progress(cfg, trainer.tokens_seen)
    try:
        while trainer.step < cfg.total_steps:
            if cfg.stop_after_steps is not None and steps_this_run >= cfg.stop_after_steps:
                break
            x = stream.next_batch()
            remaining = cfg.tokens - trainer.tokens_seen
            metrics = trainer.train_step(x[:remaining] if remaining < x.shape[0] else x)
            history.append(metrics)
            window.append(metrics)
            steps_this_run += 1
            bar.update(trainer.tokens_seen - bar.n)
            shown = {
                "loss": f"{metrics.loss:.4f}",
                "fvu": f"{metrics.fvu:.4f}",
                "l0": f"{metrics.l0:.1f}",
                "dead": f"{metrics.dead_fraction:.2%}",
            }
            bar.set_postfix(shown, refresh=False)
            if cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0:
                _save_checkpoint(checkpoint, cfg, trainer, stream, window)
    except KeyboardInterrupt:
        _save_checkpoint(checkpoint, cfg, trainer, stream, window)
        raise
    finally:
        bar.close()

    metrics_out = _final_metrics(window, trainer.dead_fraction())
    done = trainer.step >= cfg.total_steps
    if not done:
        _save_checkpoint(checkpoint, cfg, trainer, stream, window)
        return TrainResult(
            trainer.sae, None, trainer.step, trainer.tokens_seen, metrics_out, history, checkpoint
        )

    sae = trainer.sae
    sae.cfg.id = cfg.sae_id or out.name
    sae.cfg.metadata = {
        "trainer": "saeserve train-sae (TopK, Gao et al. 2024)",
        "model_path": str(Path(cfg.model).expanduser()),
        "tokens_seen": trainer.tokens_seen,
        "steps": trainer.step,
        "context_length": cfg.context_length,
        "skip_first_positions": cfg.skip_first_positions,
        "recipe": _config_dict(trainer.cfg),
        "final_metrics": metrics_out,
    }
    path = write_sae(sae, out)
    kept: Path | None = None
    if cfg.keep_checkpoint:
        _save_checkpoint(checkpoint, cfg, trainer, stream, window)
        kept = checkpoint
    elif checkpoint.exists():
        checkpoint.unlink()
    return TrainResult(
        sae, Path(path), trainer.step, trainer.tokens_seen, metrics_out, history, kept
    )
