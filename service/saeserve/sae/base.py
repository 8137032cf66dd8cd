"""The SAE module every format loads into: TopK, JumpReLU and ReLU sparse autoencoders.

One parametrisation serves all formats (DESIGN.md, "SAE formats read"):

    x_n     = normalize(x)                      # none | per-token LayerNorm | dataset scale
    pre     = (x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc     # [..., d_sae]
    a       = act(pre)                          # topk: ReLU of the k largest; jumprelu: ReLU where pre > threshold; relu
    x_hat_n = a @ W_dec + b_dec                 # [..., d_in]
    x_hat   = denormalize(x_hat_n)

Readers in ``saeserve.sae.formats`` map each file layout onto these tensors; the engine
only ever sees ``Sae``. TopK SAEs also expose the sparse form (values, indices) so that
decoding is a gather over k rows of W_dec instead of a dense [tokens x d_sae] matmul.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeserve.errors import InvalidArgument

LAYERNORM_EPS = 1e-5  # OpenAI sparse_autoencoder's LN epsilon


class Activation(StrEnum):
    TOPK = "topk"
    JUMPRELU = "jumprelu"
    RELU = "relu"


class InputNorm(StrEnum):
    NONE = "none"
    LAYERNORM = "layernorm"  # per token: (x - mean) / (std + eps), undone on decode
    SCALE = "scale"  # dataset level: x * norm_scale, undone on decode


@dataclass
class SaeConfig:
    """What an SAE is and where it hooks; saved beside its weights."""

    d_in: int
    """Width of the hooked activation (the model's d_model for residual points)."""
    d_sae: int
    """Number of latents (features)."""
    activation: Activation = Activation.TOPK
    """Latent non-linearity."""
    k: int | None = None
    """Active latents per token for TopK SAEs; None otherwise."""
    hook_point: str = ""
    """Portable hook point name, e.g. ``resid_post.6`` (any alias is accepted on load)."""
    model: str = ""
    """Name of the model the SAE was trained on (informational)."""
    input_norm: InputNorm = InputNorm.NONE
    """How the input is normalised before encoding."""
    norm_scale: float = 1.0
    """Multiplier applied to the input when ``input_norm`` is ``scale``."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the (normalised) input before the encoder (False for Gemma Scope)."""
    id: str = ""
    """Identifier the service exposes; defaults to the folder name on load."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: tokens seen, training metrics, source format."""

    def __post_init__(self) -> None:
        self.activation = Activation(self.activation)
        self.input_norm = InputNorm(self.input_norm)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise InvalidArgument(
                f"SAE d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}"
            )
        if self.activation is Activation.TOPK and (self.k is None or not 0 < self.k <= self.d_sae):
            raise InvalidArgument(f"TopK SAE k must be in [1, d_sae={self.d_sae}], got {self.k}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["activation"] = str(self.activation)
        out["input_norm"] = str(self.input_norm)
        return out


class NormContext(NamedTuple):
    """Per-token statistics needed to map SAE space back to model space."""

    mean: Tensor | None  # [..., 1] for LayerNorm, else None
    scale: Tensor  # [..., 1] or scalar: model-space units per SAE-space unit


class SparseLatents(NamedTuple):
    """The k active latents per token of a TopK SAE (zeros where fewer than k are positive)."""

    values: Tensor  # [..., k]
    indices: Tensor  # [..., k] int64


def topk_largest(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries along the last dim of x, strongest first, and their indices.

    The same values as ``torch.topk(x, k)``; indices differ only between equal values.
    On CPU ``torch.topk`` over a wide row costs about as much as the encoder matmul that
    produced it. Here each row is cut into chunks of 4 strided elements (chunk j holds
    x[j], x[j+m], x[j+2m], x[j+3m]): the k largest entries lie in at most k chunks, so all
    of them lie in the k chunks with the largest maxima. One vectorised max gives the
    [rows, n/4] chunk maxima, the same search (one level down) picks their k best, and a
    top-k over those chunks' 4k entries finishes. Few rows, narrow rows and GPUs take
    ``torch.topk``.
    """
    n = x.shape[-1]
    rows = x.numel() // n if n else 0
    if x.device.type != "cpu" or rows < _CHUNKED_MIN_ROWS:
        top = torch.topk(x, k, dim=-1)
        return top.values, top.indices
    lead = x.shape[:-1]
    values, indices = _chunked_topk(x.reshape(rows, n), k, sorted=True)
    return values.view(*lead, k), indices.view(*lead, k)


_CHUNK = 4
_CHUNKED_MIN_ROWS = 64
"""Below this many rows the chunked top-k's extra kernels cost more than they save."""


def _chunked_topk(x: Tensor, k: int, *, sorted: bool) -> tuple[Tensor, Tensor]:
    """``torch.topk`` over the last dim of a 2-D x, by chunk maxima while rows are wide."""
    rows, n = x.shape
    m = n // _CHUNK
    if n <= 8 * k or n % _CHUNK or m < k:
        top = torch.topk(x, k, dim=-1, sorted=sorted)
        return top.values, top.indices
    chunk_max = x.view(rows, _CHUNK, m).amax(dim=1)  # [rows, m]
    _, chunks = _chunked_topk(chunk_max, k, sorted=False)  # [rows, k]
    offsets = torch.arange(0, n, m, device=x.device)  # [_CHUNK]
    candidates = (chunks.unsqueeze(-1) + offsets).view(rows, k * _CHUNK)
    top = torch.topk(x.gather(1, candidates), k, dim=-1, sorted=sorted)
    return top.values, candidates.gather(1, top.indices)


class Sae(nn.Module):
    """A sparse autoencoder; see the module docstring for the formula."""

    def __init__(self, cfg: SaeConfig, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))  # JumpReLU only

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def is_topk(self) -> bool:
        return self.cfg.activation is Activation.TOPK

    # --- normalisation -------------------------------------------------------------
    def normalize(self, x: Tensor) -> tuple[Tensor, NormContext]:
        """Map model-space x [..., d_in] into SAE space; returns the context to undo it."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.input_norm is InputNorm.LAYERNORM:
            mean = x.mean(dim=-1, keepdim=True)
            centered = x - mean
            std = centered.std(dim=-1, keepdim=True)
            return centered / (std + LAYERNORM_EPS), NormContext(mean, std)
        if self.cfg.input_norm is InputNorm.SCALE:
            scale = torch.tensor(self.cfg.norm_scale, dtype=x.dtype, device=x.device)
            return x * scale, NormContext(None, 1.0 / scale)
        return x, NormContext(None, torch.ones((), dtype=x.dtype, device=x.device))

    @staticmethod
    def denormalize(y: Tensor, ctx: NormContext) -> Tensor:
        """Map an SAE-space reconstruction back to model space."""
        y = y * ctx.scale
        return y + ctx.mean if ctx.mean is not None else y

    # --- encode ----------------------------------------------------------------------
    def pre_activations(self, x_n: Tensor) -> Tensor:
        """Encoder pre-activations [..., d_sae] of an already normalised input."""
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        flat = x_n.reshape(-1, self.d_in)  # one fused addmm instead of a matmul and an add
        return torch.addmm(self.b_enc, flat, self.W_enc).reshape(*x_n.shape[:-1], self.d_sae)

    def encode_sparse(self, x: Tensor) -> SparseLatents:
        """TopK latents of model-space x: ReLU of the k largest pre-activations."""
        if not self.is_topk:
            raise InvalidArgument(
                f"encode_sparse needs a TopK SAE, {self.cfg.id!r} is {self.cfg.activation}"
            )
        x_n, _ = self.normalize(x)
        return self.topk(self.pre_activations(x_n))

    def topk(self, pre: Tensor) -> SparseLatents:
        """TopK latents from pre-activations [..., d_sae]: the k largest, ReLU'd, strongest first."""
        values, indices = topk_largest(pre, self.cfg.k or 0)
        return SparseLatents(F.relu(values), indices)

    def activate(self, pre: Tensor) -> Tensor:
        """Dense latents [..., d_sae] from pre-activations."""
        act = self.cfg.activation
        if act is Activation.TOPK:
            values, indices = self.topk(pre)
            return torch.zeros_like(pre).scatter_(-1, indices, values)
        if act is Activation.JUMPRELU:
            # Gemma Scope and SAELens both ReLU the kept values (matters for thresholds < 0)
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae] of model-space x [..., d_in]."""
        x_n, _ = self.normalize(x)
        return self.activate(self.pre_activations(x_n))

    # --- decode ----------------------------------------------------------------------
    def decode_normalized(self, latents: Tensor) -> Tensor:
        """SAE-space reconstruction [..., d_in] of dense latents."""
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode_sparse_normalized(self, sparse: SparseLatents) -> Tensor:
        """SAE-space reconstruction from (values, indices): a gather over k rows of W_dec."""
        lead = sparse.indices.shape[:-1]
        k = sparse.indices.shape[-1]
        flat = F.embedding_bag(
            sparse.indices.reshape(-1, k),
            self.W_dec,
            per_sample_weights=sparse.values.reshape(-1, k).to(self.W_dec.dtype),
            mode="sum",
        )
        return flat.reshape(*lead, self.d_in) + self.b_dec

    def decode(self, latents: Tensor, ctx: NormContext | None = None) -> Tensor:
        """Model-space reconstruction of dense latents; ctx from ``normalize`` of the input."""
        y = self.decode_normalized(latents)
        return self.denormalize(y, ctx) if ctx is not None else y

    def forward(self, x: Tensor) -> Tensor:
        """Model-space reconstruction of x."""
        x_n, ctx = self.normalize(x)
        return self.denormalize(
            self.decode_normalized(self.activate(self.pre_activations(x_n))), ctx
        )

    def error(self, x: Tensor) -> Tensor:
        """The reconstruction error x - x_hat that interventions always keep."""
        return x.to(self.W_dec.dtype) - self(x)
