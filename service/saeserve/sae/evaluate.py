"""``saeserve eval-sae``: how well an SAE reconstructs a hook point, and what splicing it costs.

``evaluate_sae(lm, sae, texts)`` cuts held-out texts into contexts and, per batch, runs the
model three times: clean (reading the activation x at the SAE's hook point), with the SAE's
reconstruction x_hat spliced in place of x, and with x zero-ablated. From these it reports
normalized MSE, explained variance, L0 and the dead fraction (``saeserve.sae.metrics``),
clean / spliced / zero-ablated cross-entropy, delta CE, the CE-loss score and
KL(clean || spliced). The first ``skip_first_positions`` positions of each context are left
clean and out of every number (the trainer skips them too; the default is what the SAE's
config records, else 1). The subcommand prints a table, or JSON with ``--json``:

    saeserve eval-sae --model models/demo --sae saes/demo-resid_post.2 --corpus heldout.txt
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saeserve.errors import require
from saeserve.sae.metrics import ReconstructionStats, SpliceStats
from saeserve.sae.train.corpus import read_documents, texts_to_contexts
from saeserve.sae.train.flags import add_dataclass_flags, config_from_args

if TYPE_CHECKING:
    from saeserve.model.hookpoints import HookFn, HookPoint
    from saeserve.model.loader import LoadedModel
    from saeserve.sae.base import Sae

DEFAULT_SKIP_FIRST_POSITIONS = 1


@dataclass
class EvalResult:
    """An SAE's metrics on held-out text (see ``saeserve.sae.metrics`` for definitions)."""

    tokens: int
    """Activation vectors evaluated (positions >= skip_first_positions)."""
    normalized_mse: float
    """sum |x - x_hat|^2 / sum |x - mean x|^2."""
    explained_variance: float
    """1 - sum |r - mean r|^2 / sum |x - mean x|^2, r = x - x_hat."""
    l0: float
    """Mean active latents per token."""
    dead_fraction: float
    """Fraction of latents that never activated on these tokens."""
    ce_clean: float
    """Next-token cross-entropy of the unmodified model (nats)."""
    ce_spliced: float
    """Cross-entropy with the reconstruction spliced in at the hook point."""
    ce_zero_ablation: float
    """Cross-entropy with the hook point's activation set to zero."""
    delta_ce: float
    """ce_spliced - ce_clean."""
    ce_loss_score: float
    """(ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean)."""
    kl_divergence: float
    """Mean KL(clean || spliced) over predicted positions (nats)."""
    hook_point: str = ""
    """Where the SAE was spliced in."""
    skip_first_positions: int = DEFAULT_SKIP_FIRST_POSITIONS
    """Leading positions of each context left clean and uncounted."""

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _skip_for(sae: Sae, skip_first_positions: int | None) -> int:
    if skip_first_positions is not None:
        return skip_first_positions
    recorded = sae.cfg.metadata.get("skip_first_positions")
    return int(recorded) if isinstance(recorded, int) else DEFAULT_SKIP_FIRST_POSITIONS


def _logits(lm: LoadedModel, point: HookPoint, ids: Tensor, fn: HookFn) -> Tensor:
    """Logits [batch, seq, vocab] of a full forward pass with ``fn`` hooked at ``point``."""
    from saeserve.model.hookpoints import forward_until

    mask = torch.ones_like(ids)
    out = forward_until(lm, {point: fn}, None, input_ids=ids, attention_mask=mask, use_cache=False)
    logits: Tensor = out.logits
    return logits


def _replace_tail(skip: int, value: Tensor) -> HookFn:
    """A hook that writes ``value`` (broadcast) over positions >= skip of the activation."""

    def replace(x: Tensor) -> Tensor:
        out = x.clone()
        out[:, skip:] = value.to(x.dtype)
        return out

    return replace


def evaluate_contexts(
    lm: LoadedModel,
    sae: Sae,
    contexts: Tensor,
    *,
    batch_size: int = 8,
    skip_first_positions: int | None = None,
    hook_point: str | None = None,
) -> EvalResult:
    """Metrics of ``sae`` on token contexts [n_contexts, seq] (see the module docstring)."""
    from saeserve.model.hookpoints import resolve_hook_point

    name = hook_point or sae.cfg.hook_point
    require(bool(name), "hook_point: the SAE records none; pass one")
    point = resolve_hook_point(name, lm.layout, lm.model)
    skip = _skip_for(sae, skip_first_positions)
    require(
        0 <= skip < contexts.shape[1], f"skip_first_positions: must be in [0, {contexts.shape[1]})"
    )
    sae = sae.to(lm.device)
    recon = ReconstructionStats(sae.d_sae)
    splice = SpliceStats()

    with torch.no_grad():
        for start in range(0, contexts.shape[0], batch_size):
            ids = contexts[start : start + batch_size].to(lm.device)
            captured: list[Tensor] = []
            clean = _logits(lm, point, ids, captured.append)
            x_tail = captured[0][:, skip:]  # [batch, seq - skip, d] in model dtype
            enc = sae.encode_sparse(x_tail, k=0, reconstruct=True, count_fires=True)
            assert enc.reconstruction is not None and enc.fire_counts is not None
            x_hat_tail = enc.reconstruction  # [batch, seq - skip, d]
            recon.add(x_tail, x_hat_tail, enc.fire_counts)
            spliced = _logits(lm, point, ids, _replace_tail(skip, x_hat_tail))
            zero = _logits(lm, point, ids, _replace_tail(skip, torch.zeros((), device=lm.device)))
            splice.add(ids, clean, spliced, zero, from_position=skip)

    ce = splice.means()
    return EvalResult(
        tokens=recon.tokens,
        normalized_mse=recon.normalized_mse,
        explained_variance=recon.explained_variance,
        l0=recon.l0,
        dead_fraction=recon.dead_fraction,
        hook_point=point.name,
        skip_first_positions=skip,
        **ce,
    )


def evaluate_sae(
    lm: LoadedModel,
    sae: Sae,
    texts: Sequence[str] | Iterable[str],
    *,
    context_length: int = 128,
    batch_size: int = 8,
    max_tokens: int | None = None,
    skip_first_positions: int | None = None,
    hook_point: str | None = None,
) -> EvalResult:
    """Metrics of ``sae`` on ``texts`` (documents joined by end-of-text, cut into contexts)."""
    contexts = texts_to_contexts(
        lm.tokenizer, texts, context_length, separator_id=lm.eos_token_id, max_tokens=max_tokens
    )
    return evaluate_contexts(
        lm,
        sae,
        contexts,
        batch_size=batch_size,
        skip_first_positions=skip_first_positions,
        hook_point=hook_point,
    )


# --------------------------------------------------------------------------- subcommand


@dataclass
class EvalConfig:
    """Evaluate an SAE on held-out text: reconstruction, sparsity and spliced-in CE."""

    model: str
    """Folder of the Hugging Face causal LM."""
    sae: str
    """SAE to evaluate (any format ``load_sae`` reads)."""
    corpus: str
    """Held-out text: a .txt file or a folder of .txt files."""
    hook_point: str = ""
    """Hook point to splice at (default: the one the SAE records)."""
    context_length: int = 128
    """Tokens per context."""
    batch_size: int = 8
    """Contexts per forward pass."""
    max_tokens: int = 262_144
    """Corpus tokens to evaluate on (0: all)."""
    skip_first_positions: int | None = None
    """Leading positions per context left clean and uncounted (default: the SAE's training
    setting, else 1)."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    model_dtype: str = "float32"
    """dtype the model runs in."""
    json: bool = False
    """Print JSON instead of a table."""


_ROWS = [
    ("tokens", "tokens", "{:d}"),
    ("normalized MSE", "normalized_mse", "{:.4f}"),
    ("explained variance", "explained_variance", "{:.4f}"),
    ("L0", "l0", "{:.2f}"),
    ("dead latents", "dead_fraction", "{:.2%}"),
    ("CE clean", "ce_clean", "{:.4f}"),
    ("CE spliced", "ce_spliced", "{:.4f}"),
    ("CE zero-ablation", "ce_zero_ablation", "{:.4f}"),
    ("delta CE", "delta_ce", "{:+.4f}"),
    ("CE-loss score", "ce_loss_score", "{:.4f}"),
    ("KL(clean || spliced)", "kl_divergence", "{:.4f}"),
]


def format_table(result: EvalResult, title: str = "") -> str:
    """The result as a two-column text table."""
    values = result.to_dict()
    lines = [title] if title else []
    width = max(len(label) for label, _, _ in _ROWS)
    for label, key, fmt in _ROWS:
        value = values[key]
        shown = "nan" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
        lines.append(f"{label:<{width}}  {shown}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = EvalConfig.__doc__
    add_dataclass_flags(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    from saeserve.model.loader import load_model, resolve_device
    from saeserve.sae.formats import load_sae

    cfg = config_from_args(EvalConfig, args)
    device = resolve_device(cfg.device)
    lm = load_model(cfg.model, device=str(device), dtype=cfg.model_dtype)
    sae = load_sae(cfg.sae, device=device)
    result = evaluate_sae(
        lm,
        sae,
        read_documents(cfg.corpus),
        context_length=cfg.context_length,
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens or None,
        skip_first_positions=cfg.skip_first_positions,
        hook_point=cfg.hook_point or None,
    )
    if cfg.json:
        print(json.dumps({"model": cfg.model, "sae": cfg.sae, **result.to_dict()}, indent=2))
    else:
        print(format_table(result, f"{cfg.sae} @ {result.hook_point} on {cfg.model}"))
    return 0
