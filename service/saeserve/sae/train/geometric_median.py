"""Geometric median of a point cloud by Weiszfeld's algorithm, for the pre-decoder bias init.

The geometric median minimises the sum of Euclidean distances to the points, so unlike the
mean it is barely moved by a few huge-norm activations (Gao et al., 2024 initialise b_dec
with it). Weiszfeld iterates ``m <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / |x_i - m|``,
starting from the mean; distances are clamped below by ``eps`` so a point that coincides with
the current estimate cannot divide by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeserve.errors import require


def geometric_median(
    points: Tensor, *, max_iter: int = 200, tol: float = 1e-6, eps: float = 1e-8
) -> Tensor:
    """The point [d] minimising ``sum_i |points[i] - m|`` over rows of ``points`` [n, d].

    Stops when an update moves the estimate by less than ``tol`` times its scale.
    Computed in float64 and returned in the input's dtype.
    """
    require(
        points.ndim == 2 and points.shape[0] > 0,
        f"points: need [n, d] with n > 0, got {tuple(points.shape)}",
    )
    x = points.to(torch.float64)
    median = x.mean(dim=0)
    scale = x.norm(dim=-1).mean().clamp_min(eps)
    for _ in range(max_iter):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)  # [n]
        updated = (weights[:, None] * x).sum(dim=0) / weights.sum()
        moved = (updated - median).norm()
        median = updated
        if moved <= tol * scale:
            break
    return median.to(points.dtype)


def sum_of_distances(points: Tensor, center: Tensor) -> float:
    """``sum_i |points[i] - center|``: the objective the geometric median minimises."""
    return float((points.to(torch.float64) - center.to(torch.float64)).norm(dim=-1).sum())
