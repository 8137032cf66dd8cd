"""The trainer's configuration: one dataclass whose field docstrings are ``saeserve train-sae --help``.

Defaults follow "Scaling and evaluating sparse autoencoders" (Gao et al., 2024) where the
paper gives a value (Adam betas and eps, lr = 2e-4 / sqrt(n / 2^14), k_aux = d_in / 2, AuxK
coefficient 1/32, dead after 10M tokens), scaled down where a small run needs it (the dead
threshold, the warm-up). ``None`` means "derive from the other fields"; ``resolved`` returns
the numbers actually used, which the trainer records beside the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from saeserve.errors import require
from saeserve.sae.base import InputNorm

PAPER_DEAD_TOKENS = 10_000_000
ENCODER_PRECISIONS = ("auto", "bfloat16", "float32")
# Fields that may differ between a run and its resumption (they do not change the numbers).
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "progress",
        "checkpoint_every",
        "keep_checkpoint",
        "stop_after_steps",
        "device",
        "threads",
    }
)


@dataclass
class TrainConfig:
    """Train a TopK SAE on one hook point of a model over a text corpus."""

    model: str
    """Folder of the Hugging Face causal LM whose activations are encoded."""
    hook_point: str
    """Hook point to train on, e.g. ``resid_post.2`` (any alias the model layer accepts)."""
    corpus: str
    """A .txt file or a folder of .txt files (searched recursively) to stream activations from."""
    out: str
    """Output folder for the SAE (native SAELens layout) and its checkpoint."""
    k: int = 32
    """Active latents per token (TopK)."""
    n: int = 4096
    """Number of latents."""
    tokens: int = 2_000_000
    """Training tokens (activation vectors) to consume."""
    batch_size: int = 1024
    """Tokens per optimizer step (short CPU runs gain more from steps than from batch size;
    raise it on a GPU)."""
    context_length: int = 128
    """Tokens per context fed to the model; the corpus is cut into contexts of this length."""
    skip_first_positions: int = 1
    """Leading positions of each context left out of training (position 0 is an attention
    sink with an outlier norm in most models)."""
    buffer_tokens: int = 262_144
    """Activations gathered, shuffled across contexts and consumed before the next refill."""
    model_batch_size: int = 32
    """Contexts per model forward pass while filling the buffer."""
    input_norm: InputNorm = InputNorm.SCALE
    """Input normalisation: ``scale`` (one dataset-level factor so that E|x|^2 = d_in),
    ``layernorm`` (per token: centre, divide by the std, as OpenAI's TopK SAEs) or ``none``."""
    init_sample_tokens: int = 32_768
    """Tokens from the start of the stream used for the dataset scale and the geometric median."""
    lr: float | None = None
    """Peak learning rate; default 2e-4 / sqrt(n / 2^14)."""
    lr_warmup_steps: int | None = None
    """Linear warm-up steps; default min(1000, 5% of the steps)."""
    lr_decay_fraction: float = 0.2
    """Fraction of the steps, at the end, over which the lr decays linearly to zero."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 6.25e-10
    """Adam epsilon."""
    auxk_coefficient: float = 1 / 32
    """Weight of the AuxK loss on dead latents (0 disables it)."""
    k_aux: int | None = None
    """Dead latents used by the AuxK loss per token; default d_in / 2."""
    dead_tokens_threshold: int | None = None
    """A latent is dead after this many tokens without activating; default
    min(10M, max(tokens / 20, batch_size)) so that short runs still revive latents."""
    multi_topk: bool = False
    """Add the Multi-TopK loss L(4k) / 8 to L(k)."""
    seed: int = 0
    """Seed of the initialisation and of the data order."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    model_dtype: str = "float32"
    """dtype the model runs in (``float32``, ``bfloat16``, ``float16``)."""
    encoder_precision: str = "auto"
    """dtype of the dense encoder matmul that selects the top k (the only [batch x n] product):
    ``bfloat16``, ``float32``, or ``auto`` (bfloat16 on CUDA and on CPUs with native bf16,
    as the paper's bf16 autocast; gradients and everything else stay float32)."""
    threads: int = 0
    """CPU threads torch may use (0: torch's default). On a busy machine, fewer threads than
    cores is often faster."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only when the run ends or is interrupted)."""
    resume: bool = False
    """Continue from ``OUT/checkpoint.pt`` when it exists (same settings required)."""
    keep_checkpoint: bool = False
    """Keep ``OUT/checkpoint.pt`` after the run completes (by default it is deleted)."""
    stop_after_steps: int | None = None
    """Stop this invocation after this many steps, leaving a checkpoint to resume from."""
    sae_id: str = ""
    """Identifier recorded in the SAE config (default: the output folder's name)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.input_norm = InputNorm(self.input_norm)
        require(self.n > 0, f"n: must be positive, got {self.n}")
        require(0 < self.k <= self.n, f"k: must be in [1, n={self.n}], got {self.k}")
        require(self.tokens > 0, f"tokens: must be positive, got {self.tokens}")
        require(self.batch_size > 0, f"batch_size: must be positive, got {self.batch_size}")
        require(
            0 <= self.skip_first_positions < self.context_length,
            f"skip_first_positions: must be in [0, context_length={self.context_length}), "
            f"got {self.skip_first_positions}",
        )
        require(
            self.buffer_tokens >= self.batch_size,
            f"buffer_tokens: must be >= batch_size={self.batch_size}, got {self.buffer_tokens}",
        )
        require(0 <= self.lr_decay_fraction <= 1, "lr_decay_fraction: must be in [0, 1]")
        require(self.auxk_coefficient >= 0, "auxk_coefficient: must be >= 0")
        require(self.checkpoint_every >= 0, "checkpoint_every: must be >= 0")
        require(
            self.encoder_precision in ENCODER_PRECISIONS,
            f"encoder_precision: must be one of {', '.join(ENCODER_PRECISIONS)}, "
            f"got {self.encoder_precision!r}",
        )

    @property
    def total_steps(self) -> int:
        """Optimizer steps: ceil(tokens / batch_size)."""
        return math.ceil(self.tokens / self.batch_size)

    def resolved(self, d_in: int) -> TrainConfig:
        """A copy with every ``None`` replaced by the value derived for an input of width d_in."""
        steps = self.total_steps
        return replace(
            self,
            lr=self.lr if self.lr is not None else 2e-4 / math.sqrt(self.n / 2**14),
            lr_warmup_steps=(
                self.lr_warmup_steps
                if self.lr_warmup_steps is not None
                else min(1000, max(1, steps // 20))
            ),
            k_aux=self.k_aux if self.k_aux is not None else min(max(1, d_in // 2), self.n),
            dead_tokens_threshold=(
                self.dead_tokens_threshold
                if self.dead_tokens_threshold is not None
                else min(PAPER_DEAD_TOKENS, max(self.tokens // 20, self.batch_size))
            ),
        )
