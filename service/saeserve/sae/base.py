"""The SAE module every format loads into: TopK, JumpReLU and ReLU sparse autoencoders.

One parametrisation serves all formats (DESIGN.md, "SAE formats read"):

    x_n     = normalize(x)                      # none | per-token LayerNorm | dataset scale
    pre     = (x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc     # [..., d_sae]
    a       = act(pre)                          # topk: ReLU of the k largest; jumprelu: ReLU where pre > threshold; relu
    x_hat_n = a @ W_dec + b_dec                 # [..., d_in]
    x_hat   = denormalize(x_hat_n)

Readers in ``saeserve.sae.formats`` map each file layout onto these tensors; the engine
only ever sees ``Sae``. ``encode_sparse`` is the one path
the service reads latents by: a block of tokens at a time, the k strongest latents as
(values, indices), chosen features' exact values and the reconstruction, decoding a TopK
SAE by a gather over its k rows of W_dec; never a [tokens x d_sae] tensor at once.

Weights may be float32, bfloat16 or float16 (``SaeSpec.dtype``); the arithmetic is float32
whatever they are (``compute_dtype``): the input is never rounded to the weights' dtype,
and 16-bit encoder columns are widened a slice at a time into a float32 matmul, so which
latents are a TopK SAE's top k is decided exactly as float32 arithmetic on the same
(16-bit) weights decides it. torch's CPU matmul of two bfloat16 matrices returns bfloat16,
whose 8-bit mantissa would tie and reorder pre-activations near the k-th.
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


class ActiveLatents(NamedTuple):
    """Every non-zero latent of a set of tokens, as coordinates (exact, any architecture)."""

    rows: Tensor
    """[nnz] int64 the token (row of the flattened input) of each entry, ascending."""
    features: Tensor
    """[nnz] int64 the latent id of each entry."""
    values: Tensor
    """[nnz] its activation (> 0)."""


class Encoding(NamedTuple):
    """What one pass of ``Sae.encode_sparse`` over tokens x [..., d_in] gives."""

    values: Tensor
    """[..., k] the k strongest latents, strongest first (0 where fewer are active)."""
    indices: Tensor
    """[..., k] int64 their latent ids."""
    features: Tensor | None
    """[..., F] the exact activation of each asked feature (0 where it is not active)."""
    reconstruction: Tensor | None
    """[..., d_in] the model-space reconstruction x_hat."""
    fire_counts: Tensor | None
    """[d_sae] int64: how many of the tokens each latent is active on."""


ENCODE_BLOCK_BYTES = 64 << 20
"""Default memory budget of one ``encode_sparse`` block (``Sae.encode_block_bytes``; the
server sets it from ``SaeSpec.encode_block_bytes``): 64 MiB of float32 pre-activations,
512 tokens of a 32,768-latent SAE, so a long input never allocates [tokens x d_sae] at once.
Measured at GPT-2-small scale (d_in 768, d_sae 32,768, k 32, one CPU thread, median of
interleaved repeats): 1,024 tokens in 64 MiB blocks take 1.04x one whole block, 16 MiB
blocks 1.08x, but 4 MiB blocks (32 rows) 1.70x: the encoder matmul needs rows."""

MATMUL_ROWS = 512
"""Tokens a TopK block keeps however wide the SAE (``Sae.block_shape``): 512-row blocks
ran within 1.04x of one whole block in the measurement above, 32-row ones 1.70x."""

WIDEN_BLOCK_BYTES = 4 << 20
"""Float32 copy of 16-bit encoder columns one slice of the widened matmul makes (4 MiB:
1,365 columns at d_in 768): small enough to stay in cache, wide enough for the matmul."""

_WIDENED = (torch.bfloat16, torch.float16)


class Sae(nn.Module):
    """A sparse autoencoder; see the module docstring for the formula."""

    holds_encoder = True
    """Whether W_enc is in this process (a ``ShardedSae``'s is on its shards)."""

    @property
    def n_shards(self) -> int:
        """Latent-range shards serving this SAE (1: this process holds it whole)."""
        return 1

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are held in."""
        return self.b_dec.dtype

    def weight_bytes(self) -> int:
        """Bytes of all the SAE's weights, wherever they live."""
        return sum(p.nbytes for p in self.parameters())

    def __init__(self, cfg: SaeConfig, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))  # JumpReLU only
        self.encode_block_bytes = ENCODE_BLOCK_BYTES
        """Memory budget of one ``encode_sparse`` block (see ``block_shape``)."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def is_topk(self) -> bool:
        return self.cfg.activation is Activation.TOPK

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of every activation and sum: float32 for 16-bit weights, else theirs."""
        return torch.float32 if self.b_dec.dtype in _WIDENED else self.b_dec.dtype

    def block_shape(self, tokens: int, budget_bytes: int | None = None) -> tuple[int, int]:
        """(tokens, latents) of one ``encode_sparse`` block of pre-activations within
        ``budget_bytes`` (default ``encode_block_bytes``), for an input of ``tokens``.

        A dense SAE's block is all its latents: three [rows, d_sae] tensors
        (pre-activations, activations, their mask product) in the budget, at least one
        row. A TopK SAE's block is as many rows as fit at full width, if that is all the
        tokens or at least ``MATMUL_ROWS``; else ``MATMUL_ROWS`` rows (or all the tokens)
        and as many encoder columns as fit (``topk_by_columns``), so a wide SAE's encoder
        is still read once per ``MATMUL_ROWS`` tokens, not once per handful."""
        budget = self.encode_block_bytes if budget_bytes is None else budget_bytes
        size = torch.empty((), dtype=self.compute_dtype).element_size()
        if not self.is_topk:
            return max(1, budget // (3 * self.d_sae * size)), self.d_sae
        rows = budget // (self.d_sae * size)
        if rows >= min(tokens, MATMUL_ROWS):
            return max(1, rows), self.d_sae
        rows = max(1, min(tokens, MATMUL_ROWS))
        return rows, min(self.d_sae, max(self.cfg.k or 1, budget // (rows * size)))

    # --- normalisation -------------------------------------------------------------
    def normalize(self, x: Tensor) -> tuple[Tensor, NormContext]:
        """Map model-space x [..., d_in] into SAE space; returns the context to undo it."""
        x = x.to(self.compute_dtype)
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
        flat = self._centered(x_n).reshape(-1, self.d_in)
        return self._pre_columns(flat, 0, self.d_sae).reshape(*x_n.shape[:-1], self.d_sae)

    def _centered(self, x_n: Tensor) -> Tensor:
        return x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n

    def _pre_columns(self, x: Tensor, lo: int, hi: int) -> Tensor:
        """Pre-activations [rows, hi - lo] of latents lo..hi-1 of centred x [rows, d_in].

        16-bit weights are widened to float32 a slice of columns at a time
        (``WIDEN_BLOCK_BYTES``), never as a whole [d_in, d_sae] copy; products of 16-bit
        numbers are exact in float32, so this is float32 arithmetic on the stored weights."""
        if self.W_enc.dtype not in _WIDENED:  # one fused addmm instead of a matmul and an add
            return torch.addmm(self.b_enc[lo:hi], x, self.W_enc[:, lo:hi])
        out = x.new_empty(len(x), hi - lo)
        step = max(1, WIDEN_BLOCK_BYTES // (self.d_in * 4))
        for j in range(lo, hi, step):
            w = self.W_enc[:, j : min(j + step, hi)].float()  # [d_in, cols]
            b = self.b_enc[j : j + w.shape[1]].float()
            out[:, j - lo : j - lo + w.shape[1]] = torch.addmm(b, x, w)
        return out

    def topk_by_columns(self, x_n: Tensor, cols: int) -> SparseLatents:
        """TopK latents of normalised x_n [rows, d_in] computed ``cols`` encoder columns at
        a time: each slice's k largest pre-activations merge into the running k largest, so
        a block holds [rows, cols] pre-activations instead of [rows, d_sae] and the encoder
        is read once for all its rows. The same latents and values as
        ``topk(pre_activations(x_n))`` (exact ties may resolve to other ids)."""
        k = self.cfg.k or 0
        if cols >= self.d_sae:
            return self.topk(self.pre_activations(x_n))
        x = self._centered(x_n)
        values = indices = None
        for lo in range(0, self.d_sae, cols):
            pre = self._pre_columns(x, lo, min(lo + cols, self.d_sae))  # [rows, cols]
            top = torch.topk(pre, min(k, pre.shape[1]), dim=-1)
            v, i = top.values, top.indices + lo
            if values is not None and indices is not None:
                v, i = torch.cat([values, v], dim=-1), torch.cat([indices, i], dim=-1)
                top = torch.topk(v, k, dim=-1)
                v, i = top.values, i.gather(-1, top.indices)
            values, indices = v, i
        assert values is not None and indices is not None
        return SparseLatents(F.relu(values), indices)

    def topk(self, pre: Tensor) -> SparseLatents:
        """TopK latents from pre-activations [..., d_sae]: the k largest, ReLU'd, strongest
        first. The one place a TopK SAE decides which latents are active."""
        top = torch.topk(pre, self.cfg.k or 0, dim=-1)
        return SparseLatents(F.relu(top.values), top.indices)

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
        """Dense latents [..., d_sae] of model-space x [..., d_in] (small inputs and tests;
        the service reads latents through ``encode_sparse``)."""
        x_n, _ = self.normalize(x)
        return self.activate(self.pre_activations(x_n))

    def encode_sparse(
        self,
        x: Tensor,
        *,
        k: int | None = None,
        features: Tensor | None = None,
        reconstruct: bool = False,
        count_fires: bool = False,
        block_bytes: int | None = None,
    ) -> Encoding:
        """The SAE's latents of model-space x [..., d_in], kept sparse: decomposition,
        steering, index building and evaluation all read them here.

        A block of tokens at a time (``block_shape`` within ``block_bytes``, by default
        the SAE's ``encode_block_bytes``): normalise, pre-activations, activation, then the
        k strongest latents. For a TopK SAE k is at most (and by default) its own k, and
        these are exactly its active latents; for JumpReLU and ReLU SAEs k (default 0)
        says how many of the largest to report. ``features`` [F] (long) asks for those
        latents' exact activations, ``reconstruct`` for x_hat, ``count_fires`` for each
        latent's count of active tokens (see ``Encoding``).
        """
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        if self.is_topk:
            n_top = (self.cfg.k or 0) if k is None else min(k, self.cfg.k or 0)
        else:
            n_top = min(k or 0, self.d_sae)
        if features is not None and not (n_top or reconstruct or count_fires):
            own = self._feature_columns(flat, features, lead)
            if not self.is_topk:
                return own
            return self._topk_features(flat, features, own, lead, block_bytes)
        blocks = self._blocks(flat, n_top, features, reconstruct, count_fires, block_bytes)

        def joined(name: str, width: int) -> Tensor | None:
            parts = [getattr(b, name) for b in blocks]
            return None if parts[0] is None else torch.cat(parts).reshape(*lead, width)

        values, indices = joined("values", n_top), joined("indices", n_top)
        assert values is not None and indices is not None
        fires = [b.fire_counts for b in blocks if b.fire_counts is not None]
        return Encoding(
            values=values,
            indices=indices,
            features=joined("features", 0 if features is None else len(features)),
            reconstruction=joined("reconstruction", self.d_in),
            fire_counts=torch.stack(fires).sum(0) if fires else None,
        )

    def encode_bytes(self, tokens: int) -> int:
        """Bytes one ``encode_sparse`` block over at most ``tokens`` tokens allocates (a
        prompt, or the rows of a decode step): its pre-activations, twice (the top-k's
        workspace). What generation admission counts for steering's encode."""
        rows, cols = self.block_shape(max(tokens, 1))
        size = torch.empty((), dtype=self.compute_dtype).element_size()
        return 2 * min(rows, max(tokens, 1)) * cols * size

    def _blocks(
        self,
        flat: Tensor,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
        block_bytes: int | None,
    ) -> list[Encoding]:
        """``_encode_block`` over flat [tokens, d_in], a ``block_shape`` at a time."""
        rows, cols = self.block_shape(len(flat), block_bytes)
        return [  # at least one block, so that no tokens give empty tensors of their shape
            self._encode_block(flat[i : i + rows], cols, n_top, features, reconstruct, count_fires)
            for i in range(0, max(len(flat), 1), rows)
        ]

    def _topk_features(
        self,
        flat: Tensor,
        features: Tensor,
        own: Encoding,
        lead: torch.Size,
        block_bytes: int | None,
    ) -> Encoding:
        """``encode_sparse`` of a TopK SAE asked only for ``features`` (steering, tracking),
        given ``own``, their ReLU'd pre-activations alone (``_feature_columns``). A latent
        is active only if its pre-activation is positive (TopK keeps ReLU of the k
        largest), so the full encoder, which must rank every latent, runs only on the
        tokens where an asked feature's is. Exact. At 1,048,576 latents (d_in 768, one
        CPU thread) a token's full encoder reads 3 GiB of W_enc (~130 ms), its columns
        0.03 ms; ``python -m bench wide``: eight 960-token prompts CLAMPed at every position
        skip it on 48% of their tokens (half the prefill's encoder), though a decode step
        of a clamped active feature never does (it stays positive)."""
        a = own.features
        assert a is not None
        a = a.reshape(len(flat), -1)  # [tokens, F]
        live = (a > 0).any(-1).nonzero().flatten()  # tokens the full encoder must see
        if len(live) == len(flat):
            blocks = self._blocks(flat, 0, features, False, False, block_bytes)
            a = torch.cat([b.features for b in blocks if b.features is not None])
        elif len(live):
            blocks = self._blocks(flat[live], 0, features, False, False, block_bytes)
            exact = torch.cat([b.features for b in blocks if b.features is not None])
            a = torch.zeros_like(a).index_copy_(0, live, exact.to(a.dtype))
        return own._replace(features=a.reshape(*lead, -1))

    def encode_active(self, x: Tensor, *, block_bytes: int | None = None) -> ActiveLatents:
        """Every active latent of model-space x [tokens, d_in] (aggregated inspection and
        contrast need all of them, not the top k): for a TopK SAE its k per token, for
        JumpReLU and ReLU SAEs every non-zero one. A block of tokens at a time, as
        ``encode_sparse``; the result is O(active entries), never [tokens x d_sae]."""
        rows, cols = self.block_shape(len(x), block_bytes)
        parts = []
        for start in range(0, len(x), rows):
            x_n, _ = self.normalize(x[start : start + rows])
            if self.is_topk:
                values, indices = self.topk_by_columns(x_n, cols)  # [rows, k]
                row, col = (values > 0).nonzero(as_tuple=True)
                parts.append((row + start, indices[row, col], values[row, col]))
            else:
                a = self.activate(self.pre_activations(x_n))  # [rows, d_sae]
                row, feature = a.nonzero(as_tuple=True)  # row-major: rows ascending
                parts.append((row + start, feature, a[row, feature]))
        if not parts:
            empty = x.new_zeros(0, dtype=torch.long)
            return ActiveLatents(empty, empty, x.new_zeros(0, dtype=self.W_enc.dtype))
        return ActiveLatents(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def _encode_block(
        self,
        x: Tensor,
        cols: int,
        n_top: int,
        features: Tensor | None,
        reconstruct: bool,
        count_fires: bool,
    ) -> Encoding:
        """``encode_sparse`` of one block x [rows, d_in], ``cols`` latents at a time."""
        x_n, ctx = self.normalize(x)
        if self.is_topk:
            values, indices = self.topk_by_columns(x_n, cols)  # [rows, k]: every active latent
            feats = recon = fires = None
            if features is not None:  # [rows, F]: the value where f is among the k, else 0
                feats = (values.unsqueeze(-1) * (indices.unsqueeze(-1) == features)).sum(1)
            if reconstruct:  # a gather over k rows of W_dec, not a [rows x d_sae] matmul
                recon = self.denormalize(self._decode_sparse(values, indices), ctx)
            if count_fires:
                fires = torch.bincount(indices[values > 0], minlength=self.d_sae)
            return Encoding(values[:, :n_top], indices[:, :n_top], feats, recon, fires)
        a = self.activate(self.pre_activations(x_n))  # [rows, d_sae]
        top = torch.topk(a, n_top, dim=-1)
        return Encoding(
            top.values,
            top.indices,
            a.index_select(-1, features) if features is not None else None,
            self.decode(a, ctx) if reconstruct else None,
            (a != 0).sum(0) if count_fires else None,
        )

    def feature_columns(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder columns [d_in, F] and biases [F] of ``features`` [F], contiguous."""
        dt = self.compute_dtype  # 16-bit columns widened: float32 arithmetic, as the encoder
        return self.W_enc[:, features].to(dt).contiguous(), self.b_enc[features].to(dt)

    def feature_pre_activations(
        self, x: Tensor, features: Tensor, columns: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Encoder pre-activations [tokens, F] of ``features`` [F] alone at model-space x
        [tokens, d_in]: their encoder columns, [tokens, d_in] @ [d_in, F]; ``columns``:
        ``feature_columns(features)`` kept by a caller that reads them every decode step
        (gathering F columns of a memory-mapped [d_in, d_sae] W_enc touches d_in pages)."""
        x_n, _ = self.normalize(x)
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        weight, bias = columns if columns is not None else self.feature_columns(features)
        return torch.addmm(bias, x_n, weight)

    def _feature_columns(self, x: Tensor, features: Tensor, lead: torch.Size) -> Encoding:
        """``encode_sparse`` of a ReLU or JumpReLU SAE asked only for ``features`` (steering,
        tracking): their encoder columns alone, [tokens, d_in] @ [d_in, F], not the
        [tokens, d_sae] matmul. At d_in 768 and 32,768 latents, one token and 4 features
        (one CPU thread): 0.2 ms instead of 3.9 ms, per steered decode step. For a TopK SAE
        (ReLU'd, no threshold) the first step of ``_topk_features``."""
        pre = self.feature_pre_activations(x, features)  # [tokens, F]
        a = F.relu(pre)
        if self.cfg.activation is Activation.JUMPRELU:
            a = a * (pre > self.threshold[features].to(pre.dtype))
        none = a.new_zeros(*lead, 0)
        return Encoding(none, none.long(), a.reshape(*lead, -1), None, None)

    # --- decode ----------------------------------------------------------------------
    def decoder_rows(self, features: Tensor) -> Tensor:
        """[F, d_in] the decoder rows W_dec[f] of ``features`` [F] (long), stored dtype:
        the one way steering and feature math read decoder directions (a sharded SAE
        fetches them from the shards that own them)."""
        return self.W_dec[features.to(self.W_dec.device)]

    def _decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """SAE-space reconstruction [rows, d_in] of (values, indices) [rows, k]: a gather
        over k rows of W_dec instead of a dense [rows x d_sae] matmul."""
        if self.W_dec.dtype not in _WIDENED:
            recon = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        else:  # 16-bit rows widened, summed in float32: [rows, 1, k] @ [rows, k, d_in]
            rows = F.embedding(indices, self.W_dec).to(values.dtype)
            recon = torch.bmm(values.unsqueeze(1), rows).squeeze(1)
        return recon + self.b_dec

    def decode(self, latents: Tensor, ctx: NormContext | None = None) -> Tensor:
        """Reconstruction [..., d_in] of dense latents: model space given ctx from
        ``normalize`` of the input, else SAE space."""
        latents = latents.to(self.compute_dtype)
        if self.W_dec.dtype not in _WIDENED:
            y = latents @ self.W_dec + self.b_dec
        else:  # a slice of 16-bit decoder rows widened at a time, summed in float32
            flat = latents.reshape(-1, self.d_sae)
            y = self.b_dec.float().expand(len(flat), self.d_in).clone()
            rows = max(1, WIDEN_BLOCK_BYTES // (self.d_in * 4))
            for i in range(0, self.d_sae, rows):
                y.addmm_(flat[:, i : i + rows], self.W_dec[i : i + rows].float())
            y = y.reshape(*latents.shape[:-1], self.d_in)
        return self.denormalize(y, ctx) if ctx is not None else y

    def forward(self, x: Tensor) -> Tensor:
        """Model-space reconstruction of x."""
        x_n, ctx = self.normalize(x)
        return self.decode(self.activate(self.pre_activations(x_n)), ctx)
