"""TopK encoding and decoding for training, with backward passes that touch only selected latents.

The encoder's forward pass is one dense matmul ``pre = x_c @ W_enc + b_enc`` [batch, n] (run
without autograd). Only the selected pre-activations (the top k, the top 4k for Multi-TopK,
the top k_aux dead ones for AuxK) enter the loss, so their gradient is a sparse [batch, n]
matrix with a handful of entries per row. ``gather_pre_activations`` returns those entries
with a backward that builds the sparse matrix G once and computes ``G^T @ x_c`` (W_enc),
``G @ W_enc^T`` (x_c, hence b_dec) and per-latent sums (b_enc) in O(batch * selected * d)
instead of three dense [batch x n x d] products. ``decode_sparse`` is the matching gather
over W_dec rows (``embedding_bag``), whose backward is also sparse. Gradients equal the dense
formulas; tests compare them with plain autograd.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with (
        warnings.catch_warnings()
    ):  # CSR support is "beta"; these tensors are valid by construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _rows_csr(indices: Tensor, values: Tensor, n: int) -> Tensor:
    """G [batch, n] as CSR with ``indices``/``values`` [batch, m] as the nonzeros of each row."""
    batch, m = indices.shape
    crow = torch.arange(0, batch * m + 1, m, device=indices.device, dtype=torch.int64)
    return _csr(crow, indices.reshape(-1), values.reshape(-1), (batch, n))


def _columns_csr(indices: Tensor, values: Tensor, n: int) -> Tensor:
    """G^T [n, batch] as CSR: the same nonzeros sorted by latent."""
    batch, m = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = torch.arange(batch, device=indices.device).repeat_interleave(m)[order]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n).cumsum(0)
    return _csr(crow, rows, values.reshape(-1)[order], (n, batch))


class _GatherPreActivations(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, indices: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x_c, W_enc, indices)
        return pre.gather(-1, indices).to(x_c.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_c, W_enc, indices = ctx.saved_tensors
        n = W_enc.shape[1]
        grad = grad.to(W_enc.dtype).contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _rows_csr(indices, grad, n) @ W_enc.T.to(grad.dtype)  # [batch, d]
        if ctx.needs_input_grad[1]:
            grad_W = (_columns_csr(indices, grad, n) @ x_c.to(grad.dtype)).T  # [d, n]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


def gather_pre_activations(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, indices: Tensor
) -> Tensor:
    """``pre.gather(-1, indices)`` [batch, m], differentiable w.r.t. x_c, W_enc and b_enc.

    ``pre`` must equal ``x_c @ W_enc + b_enc`` (computed without autograd, in any precision);
    the backward pass uses only the selected entries.
    """
    out: Tensor = _GatherPreActivations.apply(x_c, W_enc, b_enc, pre, indices)
    return out


def decode_sparse(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_j values[:, j] * W_dec[indices[:, j]]`` [batch, d] (no bias): a sparse decode."""
    return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
