"""Default SAE ids from paths: unique across the published layouts whose names repeat.
Run: ``pytest tests/sae/test_ids.py -q``."""

from __future__ import annotations

from pathlib import Path

import pytest

from saeserve.sae.ids import default_sae_id

GEMMA = "/saes/gemma-scope-2b-pt-res"
OPENAI = "/saes/gpt2-small"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{GEMMA}/layer_12/width_16k/average_l0_82", "layer_12/width_16k/average_l0_82"),
        (
            f"{GEMMA}/layer_12/width_16k/average_l0_82/params.npz",
            "layer_12/width_16k/average_l0_82",
        ),
        (f"{GEMMA}/layer_20/width_1m/canonical", "layer_20/width_1m/canonical"),
        (f"{GEMMA}/embedding/width_4k/average_l0_6", "embedding/width_4k/average_l0_6"),
        (f"{OPENAI}/resid_post_mlp_v5_32k/autoencoders/8.pt", "resid_post_mlp_v5_32k/8"),
        (f"{OPENAI}/resid_delta_attn_v5_128k/autoencoders/0.pt", "resid_delta_attn_v5_128k/0"),
        ("/saes/mine/3.pth", "mine/3"),
        ("3.pt", "3"),
        ("/saes/openai/resid_post_mlp_6.pt", "resid_post_mlp_6"),
        ("/saes/res-jb/blocks.8.hook_resid_pre", "blocks.8.hook_resid_pre"),
        ("/saes/run/layers.6", "layers.6"),
    ],
)
def test_default_sae_id(path: str, expected: str) -> None:
    assert default_sae_id(Path(path)) == expected
