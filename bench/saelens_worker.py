"""Child process of the SAELens comparison, run by a Python that has SAELens.

That is the main environment when sae-lens is installed there (the dev extra), else the
bench environment ``.bench-venv``. The worker imports saeserve from the repository's
``service/`` folder and measures all three calls (SAELens as usually called, saeserve,
SAELens tuned) interleaved in one process. The model's GPT-2 weights are converted into a
``HookedSAETransformer`` with TransformerLens' own converter, without any weight
processing (folding or centering would change the residual basis the SAE reads), and
the SAE folder is loaded with ``SAE.load_from_disk``: nothing touches the hub.

Input: one JSON argument (model, sae, sae_id, texts, top_k, warmup, repeats, threads).
Output, as the last line: a JSON object with both sides' seconds per call, the tuned
SAELens call's seconds, and the largest differences of top-k values and activations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))

import torch  # noqa: E402
from sae_lens import SAE, HookedSAETransformer  # noqa: E402
from transformer_lens import HookedTransformerConfig  # noqa: E402
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights  # noqa: E402

from bench.stats import interleaved  # noqa: E402
from saeserve.engine.decompose import decompose  # noqa: E402
from saeserve.engine.served_model import ServedModel  # noqa: E402
from saeserve.engine.tokenize import tokenize  # noqa: E402
from saeserve.engine.types import DecomposeRequest  # noqa: E402


def hooked_gpt2(served: ServedModel) -> HookedSAETransformer:
    """The served GPT-2's weights in a HookedSAETransformer, unprocessed."""
    hf = served.lm.model
    c = hf.config
    if c.model_type != "gpt2":
        raise RuntimeError(f"only GPT-2 models are converted here, not {c.model_type}")
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_ctx=c.n_positions,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        act_fn=c.activation_function,
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        device="cpu",
    )
    model = HookedSAETransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.eval()


def main() -> None:
    args: dict[str, Any] = json.loads(sys.argv[1])
    torch.set_num_threads(int(args["threads"]))
    served = ServedModel.load(args["model"], [args["sae"]])
    lm, sae_id, top_k = served.lm, args["sae_id"], int(args["top_k"])
    texts: list[str] = args["texts"]
    req = DecomposeRequest(texts=texts, sae_ids=[sae_id], top_k=top_k)

    model = hooked_gpt2(served)
    sae = SAE.load_from_disk(args["sae"], device="cpu")
    ours = served.saes[sae_id].sae.cfg
    if ours.input_norm == "scale":  # SAELens applies a dataset scale only once folded in
        sae.fold_activation_norm_scaling_factor(ours.norm_scale)
    hook = sae.cfg.metadata.hook_name
    acts_name = f"{hook}.hook_sae_acts_post"
    rows = [tokenize(lm.tokenizer, t, max_tokens=lm.max_positions).token_ids for t in texts]
    n = max(len(r) for r in rows)
    # right padding: with causal attention, real tokens never see the pads after them
    tokens = torch.tensor([r + [lm.pad_token_id] * (n - len(r)) for r in rows])
    layer = int(hook.split(".")[1])

    def saelens_call() -> Any:
        with torch.inference_mode():
            return model.run_with_cache_with_saes(tokens, saes=[sae])

    def saelens_tuned() -> Any:
        with torch.inference_mode():
            return model.run_with_cache_with_saes(
                tokens, saes=[sae], names_filter=[acts_name], stop_at_layer=layer + 1
            )

    def saeserve_call() -> Any:
        return decompose(served, req)

    # numeric agreement on the real tokens: top-k values and the logits' hook activations
    _, cache = saelens_call()
    latents = cache[acts_name]  # [B, N, d_sae]
    ours = saeserve_call()
    max_value_diff, id_mismatch, n_tokens = 0.0, 0, 0
    for i, text in enumerate(ours.texts):
        d = text.saes[0]
        real = latents[i, : len(rows[i])]
        theirs = torch.topk(real, top_k, dim=-1)
        ours_vals = torch.from_numpy(d.top_values)
        max_value_diff = max(max_value_diff, float((theirs.values - ours_vals).abs().max()))
        got = torch.gather(real, 1, torch.from_numpy(d.top_ids).long().clamp_min(0))
        max_value_diff = max(max_value_diff, float((got - ours_vals).abs().max()))
        id_mismatch += int((torch.from_numpy(d.top_ids).long() != theirs.indices).sum())
        n_tokens += len(rows[i])

    warmup, repeats = int(args["warmup"]), int(args["repeats"])
    theirs_s, ours_s, tuned_s = interleaved(
        [saelens_call, saeserve_call, saelens_tuned], warmup=warmup, repeats=repeats
    )
    print(
        json.dumps(
            {
                "saelens_s": theirs_s,
                "saeserve_s": ours_s,
                "saelens_tuned_s": tuned_s,
                "n_tokens": n_tokens,
                "max_value_diff": max_value_diff,
                "id_mismatch": id_mismatch,
                "max_abs_latent": float(latents.abs().max()),
                "hook": hook,
            }
        )
    )


if __name__ == "__main__":
    main()
