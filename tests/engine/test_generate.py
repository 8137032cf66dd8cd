"""Batched generation: equals transformers' greedy generate, seeds, steering, joins, cancel."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from saeserve.engine.generate import BatchGenerator, generate, generated_text
from saeserve.engine.served_model import ServedModel
from saeserve.engine.types import (
    FinishReason,
    GenerateRequest,
    Intervention,
    InterventionMode,
    PositionKind,
    SamplingParams,
    TokenEvent,
    TrackedFeature,
    Variant,
)
from saeserve.sae.base import Sae
from tests.engine import reference

PROMPTS = ["The cat sat", "Once upon a time, in a land far away", "Hello"]


def _ids(served: ServedModel, text: str) -> list[int]:
    return served.lm.tokenizer(text)["input_ids"]


def _run(served: ServedModel, req: GenerateRequest) -> list[TokenEvent]:
    return list(generate(served, req))


def _tokens(events: list[TokenEvent], variant: Variant = Variant.STEERED) -> list[int]:
    return [e.token_id for e in events if e.variant is variant]


def test_greedy_equals_transformers_generate(served: ServedModel) -> None:
    model = served.lm.model
    for prompt in PROMPTS:
        ids = _ids(served, prompt)
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=served.lm.eos_token_id,
                pad_token_id=served.lm.eos_token_id,
            )[0, len(ids):].tolist()  # fmt: skip
        ours = _tokens(
            _run(served, GenerateRequest(ids, SamplingParams(max_new_tokens=16, temperature=0)))
        )
        assert ours == hf


def test_sequences_joining_a_running_batch_match_running_alone(served: ServedModel) -> None:
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    alone = [_tokens(_run(served, GenerateRequest(_ids(served, p), greedy))) for p in PROMPTS]
    gen = BatchGenerator(served)
    rids = [gen.submit(GenerateRequest(_ids(served, PROMPTS[0]), greedy))]
    events: list[TokenEvent] = []
    for step in range(40):
        if step in (3, 5):  # later streams join mid-flight
            rids.append(gen.submit(GenerateRequest(_ids(served, PROMPTS[len(rids)]), greedy)))
        if not gen.has_work():
            break
        events += gen.step()
    for rid, want in zip(rids, alone, strict=True):
        assert [e.token_id for e in events if e.request_id == rid] == want


def test_rows_with_different_interventions_equal_each_row_alone(served: ServedModel) -> None:
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    reqs = [
        GenerateRequest(
            _ids(served, PROMPTS[0]), greedy, [Intervention(InterventionMode.ADD, 8.0, "post0", 3)]
        ),
        GenerateRequest(
            _ids(served, PROMPTS[1]), greedy, [Intervention(InterventionMode.CLAMP, 5.0, "mid1", 7)]
        ),
        GenerateRequest(_ids(served, PROMPTS[2]), greedy),
    ]
    alone = [_tokens(_run(served, r)) for r in reqs]
    gen = BatchGenerator(served)
    rids = [gen.submit(r) for r in reqs]
    events: list[TokenEvent] = []
    while gen.has_work():
        events += gen.step()
    assert [[e.token_id for e in events if e.request_id == rid] for rid in rids] == alone


def test_seeded_sampling_is_reproducible(served: ServedModel) -> None:
    ids = _ids(served, PROMPTS[1])
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=123)
    a = _tokens(_run(served, GenerateRequest(ids, sampling)))
    b = _tokens(_run(served, GenerateRequest(ids, sampling)))
    c = _tokens(
        _run(
            served,
            GenerateRequest(ids, SamplingParams(max_new_tokens=12, temperature=1.0, seed=124)),
        )
    )
    assert a == b
    assert a != c


def test_strong_add_changes_text_and_baseline_stays_unsteered(served: ServedModel) -> None:
    ids = _ids(served, PROMPTS[0])
    sampling = SamplingParams(max_new_tokens=12, temperature=0.0)
    plain = _run(served, GenerateRequest(ids, sampling))
    steer = Intervention(InterventionMode.ADD, 40.0, "post0", 5)
    both = _run(served, GenerateRequest(ids, sampling, [steer], include_baseline=True))
    assert _tokens(both, Variant.BASELINE) == _tokens(plain)
    assert _tokens(both, Variant.STEERED) != _tokens(plain)
    assert generated_text(both, Variant.BASELINE) == generated_text(plain)


def test_tracked_features_equal_a_manual_forward_over_the_generated_text(
    served: ServedModel,
) -> None:
    ids = _ids(served, PROMPTS[0])
    track = [TrackedFeature("post0", 6), TrackedFeature("jump1", 2), TrackedFeature("post0", 1)]
    events = _run(
        served, GenerateRequest(ids, SamplingParams(max_new_tokens=5, temperature=0), track=track)
    )
    full = ids + [e.token_id for e in events]
    acts = reference.capture(served.lm.model, served.lm.layout.family, full[:-1])
    for j, t in enumerate(track):
        hooked = served.saes[t.sae_id]
        a, _ = reference.encode(hooked.sae, acts[hooked.hook_point.name])
        # each token's tracked value is read at the position that predicted it
        want = a[len(ids) - 1 :, t.feature]
        got = np.array([e.tracked[j] for e in events])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_logprobs_stop_strings_and_finish_reasons(served: ServedModel) -> None:
    ids = _ids(served, PROMPTS[1])
    sampling = SamplingParams(max_new_tokens=20, temperature=1.0, seed=0)
    free = _run(served, GenerateRequest(ids, sampling, logprobs=True))
    assert all(e.logprob is not None and e.logprob <= 0 for e in free)
    assert free[-1].finish_reason in (FinishReason.LENGTH, FinishReason.EOS)
    text = generated_text(free)
    # a stop string from the middle of the sampled text (random tiny models also emit partial UTF-8)
    starts = [i for i in range(1, len(text) - 1) if "\ufffd" not in text[i : i + 2]]
    assert starts, text
    stop = text[starts[len(starts) // 2] : starts[len(starts) // 2] + 2]
    stopped = _run(
        served,
        GenerateRequest(
            ids, SamplingParams(max_new_tokens=20, temperature=1.0, seed=0, stop=[stop])
        ),
    )
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert generated_text(stopped) == text[: text.find(stop)]


def test_top_logprobs_are_the_models_own_distribution(served: ServedModel) -> None:
    """Each step's logprob and top-N alternatives equal a plain forward's log-softmax over
    the prompt plus the tokens generated so far (the model's distribution, before
    temperature); a row asking for fewer alternatives in the same batch gets fewer."""
    ids = _ids(served, PROMPTS[0])
    sampling = SamplingParams(max_new_tokens=5, temperature=0.8, seed=3)
    gen = BatchGenerator(served)
    wide = gen.submit(GenerateRequest(ids, sampling, logprobs=True, top_logprobs=4))
    narrow = gen.submit(GenerateRequest(ids, sampling, logprobs=True, top_logprobs=1))
    events: list[TokenEvent] = []
    while gen.has_work():
        events.extend(gen.step())
    mine = [e for e in events if e.request_id == wide]
    assert all(len(e.top_logprobs) == 1 for e in events if e.request_id == narrow)
    context = list(ids)
    for e in mine:
        with torch.no_grad():
            logits = served.lm.model(torch.tensor([context])).logits[0, -1].float()
        want = torch.log_softmax(logits, dim=-1)
        top = torch.topk(want, 4)
        assert [i for i, _ in e.top_logprobs] == top.indices.tolist()
        np.testing.assert_allclose([v for _, v in e.top_logprobs], top.values, atol=1e-4)
        assert e.logprob is not None and abs(e.logprob - want[e.token_id].item()) < 1e-4
        context.append(e.token_id)


def test_closing_the_stream_stops_the_work(served: ServedModel) -> None:
    gen = BatchGenerator(served)
    req = GenerateRequest(
        _ids(served, PROMPTS[0]), SamplingParams(max_new_tokens=50, temperature=0)
    )
    stream = generate(served, req, generator=gen)
    for _ in range(3):
        next(stream)
    stream.close()
    assert not gen.has_work()
    assert gen.steps == 3


def test_ignore_eos_generates_past_end_of_sequence(served: ServedModel) -> None:
    ids = _ids(served, PROMPTS[0])
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    lm = served.lm
    try:
        served.lm = replace(lm, stop_token_ids=())
        free = _tokens(_run(served, GenerateRequest(ids, greedy)))
        # make the 4th greedy token an end-of-sequence token
        served.lm = replace(lm, stop_token_ids=(free[3],))
        ended = _run(served, GenerateRequest(ids, greedy))
        past = _run(served, GenerateRequest(ids, replace(greedy, ignore_eos=True)))
    finally:
        served.lm = lm
    cut = free.index(free[3]) + 1
    assert _tokens(ended) == free[:cut]
    assert ended[-1].finish_reason is FinishReason.EOS
    assert _tokens(past) == free
    assert past[-1].finish_reason is FinishReason.LENGTH


def test_steered_rows_joining_and_leaving_each_match_running_alone(served: ServedModel) -> None:
    # one row only ADDs (no encoder), one CLAMPs the same SAE, one steers its prompt only;
    # rows join mid-flight and leave at different steps, so the batch's plan is rebuilt
    M = InterventionMode
    reqs = [
        GenerateRequest(
            _ids(served, PROMPTS[0]),
            SamplingParams(max_new_tokens=6, temperature=0),
            [Intervention(M.ADD, 6.0, "post0", 3), Intervention(M.ADD, 3.0, "relu0", 2)],
            track=[TrackedFeature("post0", 3)],
        ),
        GenerateRequest(
            _ids(served, PROMPTS[1]),
            SamplingParams(max_new_tokens=9, temperature=0),
            [Intervention(M.CLAMP, 5.0, "post0", 7), Intervention(M.ADD, -2.0, "post0", 3)],
            logprobs=True,
        ),
        GenerateRequest(
            _ids(served, PROMPTS[2]),
            SamplingParams(max_new_tokens=7, temperature=0),
            [
                Intervention(M.CLAMP, 9.0, "mid1", 1, positions=PositionKind.PROMPT),
                Intervention(M.SCALE, 0.0, "jump1", 2, positions=PositionKind.GENERATED),
            ],
            track=[TrackedFeature("jump1", 2), TrackedFeature("mid1", 1)],
        ),
    ]
    alone = [_run(served, r) for r in reqs]
    gen = BatchGenerator(served)
    rids = [gen.submit(reqs[0])]
    events: list[TokenEvent] = []
    for step in range(40):
        if step in (2, 4):
            rids.append(gen.submit(reqs[len(rids)]))
        if not gen.has_work():
            break
        events += gen.step()
    for rid, want in zip(rids, alone, strict=True):
        got = [e for e in events if e.request_id == rid]
        assert [e.token_id for e in got] == [e.token_id for e in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.tracked, w.tracked, rtol=1e-4, atol=1e-5)
            assert (g.logprob is None) == (w.logprob is None)
            if g.logprob is not None and w.logprob is not None:
                assert abs(g.logprob - w.logprob) < 1e-4


def test_decode_hooks_act_only_inside_decode_steps(served: ServedModel) -> None:
    from saeserve.engine.decompose import decompose
    from saeserve.engine.types import DecomposeRequest

    def n_hooks() -> int:
        return sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) for m in served.lm.model.modules()
        )

    req = DecomposeRequest(texts=PROMPTS, top_k=4, feature_ids=[3, 7])
    before = decompose(served, req)
    n_before = n_hooks()  # transformers may keep hooks of its own
    steer = [
        Intervention(InterventionMode.ADD, 40.0, "post0", 5),
        Intervention(InterventionMode.CLAMP, 9.0, "mid1", 7),
    ]
    gen = BatchGenerator(served)
    rid = gen.submit(
        GenerateRequest(
            _ids(served, PROMPTS[0]), SamplingParams(max_new_tokens=30, temperature=0), steer
        )
    )
    for _ in range(3):
        gen.step()
    assert n_hooks() > n_before  # kept between decode steps
    between = decompose(served, req)  # a forward by someone else between two steps
    for a, b in zip(before.texts, between.texts, strict=True):
        for sa, sb in zip(a.saes, b.saes, strict=True):
            np.testing.assert_array_equal(sa.top_values, sb.top_values)
            np.testing.assert_array_equal(sa.dense_values, sb.dense_values)
    gen.cancel(rid)
    assert not gen.has_work()
    gen.step()  # an empty step takes the hooks off
    assert n_hooks() == n_before


def test_a_generator_dropped_mid_batch_takes_its_hooks_along(served: ServedModel) -> None:
    import gc

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) for m in served.lm.model.modules())

    n_before = n_hooks()
    gen = BatchGenerator(served)
    steer = [Intervention(InterventionMode.SCALE, 2.0, "post0", 5)]
    gen.submit(GenerateRequest(_ids(served, PROMPTS[1]), SamplingParams(max_new_tokens=20), steer))
    for _ in range(3):
        gen.step()
    assert n_hooks() > n_before
    del gen
    gc.collect()
    assert n_hooks() == n_before


def _first_block(served: ServedModel) -> torch.nn.Module:
    model = served.lm.model
    layers = model.transformer.h if served.lm.layout.family == "gpt2" else model.model.layers
    return layers[0]


def test_kl_from_baseline_equals_two_manual_forwards(served: ServedModel) -> None:
    """Each steered step's KL(steered || baseline) equals the one computed from a plain
    forward of each variant's own context, the steered one with the VECTOR added to the
    first block's output by hand; baseline events carry none."""
    ids = _ids(served, PROMPTS[0])
    direction = torch.randn(served.lm.layout.d_model, generator=torch.Generator().manual_seed(5))
    steer = Intervention(
        mode=InterventionMode.VECTOR,
        value=4.0,
        hook_point="resid_post.0",
        vector=direction.tolist(),
    )
    sampling = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    req = GenerateRequest(ids, sampling, [steer], include_baseline=True, kl_from_baseline=True)
    events = _run(served, req)
    steered = [e for e in events if e.variant is Variant.STEERED]
    baseline = [e for e in events if e.variant is Variant.BASELINE]
    assert all(e.kl_from_baseline is None for e in baseline)

    def add_direction(_: object, __: object, out: object) -> object:
        if isinstance(out, tuple):
            return (out[0] + 4.0 * direction, *out[1:])
        return out + 4.0 * direction  # type: ignore[operator]

    def next_logprobs(context: list[int], steered_forward: bool) -> torch.Tensor:
        handle = (
            _first_block(served).register_forward_hook(add_direction) if steered_forward else None
        )
        try:
            with torch.no_grad():
                logits = served.lm.model(torch.tensor([context])).logits[0, -1].double()
        finally:
            if handle is not None:
                handle.remove()
        return torch.log_softmax(logits, dim=-1)

    kls = []
    for i, event in enumerate(steered):
        log_s = next_logprobs(ids + [e.token_id for e in steered[:i]], True)
        log_b = next_logprobs(ids + [e.token_id for e in baseline[:i]], False)
        want = float((log_s.exp() * (log_s - log_b)).sum())
        assert event.kl_from_baseline is not None
        assert abs(event.kl_from_baseline - want) < 1e-4 * max(1.0, want)
        kls.append(want)
    assert max(kls) > 1e-3  # the steering moved the distribution


def test_kl_from_baseline_needs_the_baseline(served: ServedModel) -> None:
    import pytest

    from saeserve.errors import InvalidArgument

    req = GenerateRequest(
        _ids(served, "Hi"), SamplingParams(max_new_tokens=2), kl_from_baseline=True
    )
    with pytest.raises(InvalidArgument, match="kl_from_baseline: needs include_baseline"):
        BatchGenerator(served).submit(req)


def test_topk_steering_tokens_equal_ranking_every_token(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of rows steering different TopK features (CLAMP, SCALE, ABLATE) writes the
    same greedy tokens, with the same logprobs, whether the steering read ranks every
    token's latents (the path before the shortcut) or only those where a steered feature's
    own pre-activation is positive; and the shortcut did skip tokens."""
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    modes = [
        (InterventionMode.CLAMP, 6.0),
        (InterventionMode.SCALE, 3.0),
        (InterventionMode.ABLATE, 0.0),
    ]
    reqs = [
        GenerateRequest(
            _ids(served, p),
            greedy,
            logprobs=True,
            interventions=[
                Intervention(m, v, sae, f)
                for (m, v), sae, f in zip(modes, ["post0", "mid1", "post0"], feats, strict=True)
            ],
        )
        for p, feats in zip(PROMPTS, [(3, 5, 9), (7, 1, 2), (11, 4, 6)], strict=True)
    ]

    def batch() -> list[list[tuple[int, float | None]]]:
        gen = BatchGenerator(served)
        rids = [gen.submit(r) for r in reqs]
        events: list[TokenEvent] = []
        while gen.has_work():
            events += gen.step()
        return [[(e.token_id, e.logprob) for e in events if e.request_id == rid] for rid in rids]

    skipped: list[int] = []
    shortcut = Sae._topk_features

    def counting(self: Sae, flat: torch.Tensor, features: torch.Tensor, own, lead, block_bytes):  # type: ignore[no-untyped-def]
        skipped.append(int((own.features.reshape(len(flat), -1) <= 0).all(-1).sum()))
        return shortcut(self, flat, features, own, lead, block_bytes)

    def rank_all(self: Sae, flat: torch.Tensor, features: torch.Tensor, own, lead, block_bytes):  # type: ignore[no-untyped-def]
        blocks = self._blocks(flat, 0, features, False, False, block_bytes)
        a = torch.cat([b.features for b in blocks if b.features is not None])
        return own._replace(features=a.reshape(*lead, -1))

    monkeypatch.setattr(Sae, "_topk_features", counting)
    fast = batch()
    monkeypatch.setattr(Sae, "_topk_features", rank_all)
    assert fast == batch()
    assert sum(skipped) > 0
    unsteered = [_tokens(_run(served, GenerateRequest(r.prompt_ids, greedy))) for r in reqs]
    assert [[t for t, _ in row] for row in fast] != unsteered  # the steering acts
