"""``saeserve train-sae``: train a TopK SAE on one hook point; flags are ``TrainConfig``'s fields.

    saeserve train-sae --model models/demo --hook-point resid_post.2 --corpus corpus/ \\
        --k 32 --n 4096 --tokens 2000000 --out saes/demo-resid_post.2

Prints the final metrics and the output folder; ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json

from saeserve.sae.train.config import TrainConfig
from saeserve.sae.train.flags import add_dataclass_flags, config_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = TrainConfig.__doc__
    add_dataclass_flags(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from saeserve.sae.train.loop import train_sae

    result = train_sae(config_from_args(TrainConfig, args))
    summary = {
        "path": str(result.path) if result.path else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        **result.metrics,
    }
    print(json.dumps(summary, indent=2))
    return 0
