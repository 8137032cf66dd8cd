"""Training TopK sparse autoencoders with the recipe of Gao et al. (2024).

``train_sae(TrainConfig(...)) -> TrainResult`` is the whole run (``saeserve train-sae``);
``SaeTrainer`` is the recipe over plain activation tensors; ``ActivationBuffer`` streams
shuffled activations of a hook point; ``geometric_median`` initialises the decoder bias.
"""

from __future__ import annotations

from saeserve.sae.train.activations import ActivationBuffer, hook_point_activations
from saeserve.sae.train.config import TrainConfig
from saeserve.sae.train.geometric_median import geometric_median
from saeserve.sae.train.loop import TrainResult, train_sae
from saeserve.sae.train.trainer import SaeTrainer, StepMetrics

__all__ = [
    "ActivationBuffer",
    "SaeTrainer",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "geometric_median",
    "hook_point_activations",
    "train_sae",
]
