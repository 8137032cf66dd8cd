"""The one place protobuf messages become engine types and back.

Request conversion maps fields, applies the documented defaults (0 = default) and rejects
what has no engine value (an unset enum); the engine's request types then validate
themselves against the server's limits (``GenerateRequest.validate``, under the proto's
field path), and checks that need the tokenizer or the SAEs run in the engine. Every
error names the proto field and the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from saeserve.engine.attribution import (
    AttributionResult,
    EffectTerms,
    FeatureEffect,
    FeatureInputResult,
    TokenLogit,
)
from saeserve.engine.feature_stats import (
    ActivityOrder,
    ContrastOrder,
    ContrastRequest,
    ContrastUnit,
    InspectRequest,
    SaeActivity,
    SaeContrast,
)
from saeserve.engine.types import (
    DecomposeRequest,
    DecomposeResult,
    FeatureCondition,
    FinishReason,
    GenerateRequest,
    Intervention,
    InterventionMode,
    PositionKind,
    SamplingParams,
    TokenEvent,
    Tokenization,
    TrackedFeature,
    Variant,
    at_most,
)
from saeserve.errors import InvalidArgument
from saeserve.server.settings import Limits
from saeserve.v1 import saeserve_pb2 as pb

R = TypeVar("R")

DEFAULT_TOP_K = 16
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SEARCH_LIMIT = 10

_MODES = {
    pb.INTERVENTION_MODE_ADD: InterventionMode.ADD,
    pb.INTERVENTION_MODE_CLAMP: InterventionMode.CLAMP,
    pb.INTERVENTION_MODE_SCALE: InterventionMode.SCALE,
    pb.INTERVENTION_MODE_ABLATE: InterventionMode.ABLATE,
    pb.INTERVENTION_MODE_VECTOR: InterventionMode.VECTOR,
    pb.INTERVENTION_MODE_CLAMP_THRESHOLD: InterventionMode.CLAMP_THRESHOLD,
}
_POSITIONS = {
    pb.POSITIONS_UNSPECIFIED: PositionKind.ALL,
    pb.POSITIONS_ALL: PositionKind.ALL,
    pb.POSITIONS_PROMPT: PositionKind.PROMPT,
    pb.POSITIONS_GENERATED: PositionKind.GENERATED,
    pb.POSITIONS_INDICES: PositionKind.INDICES,
}
_VARIANTS = {Variant.STEERED: pb.VARIANT_STEERED, Variant.BASELINE: pb.VARIANT_BASELINE}
_FINISH = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.CONDITION: pb.FINISH_REASON_CONDITION,
}


# --- Tokenize / Decompose -----------------------------------------------------------------
def tokens_to_proto(t: Tokenization) -> pb.Tokens:
    return pb.Tokens(
        ids=t.token_ids,
        strings=t.tokens,
        byte_starts=[s for s, _ in t.offsets],
        byte_ends=[e for _, e in t.offsets],
    )


def decompose_from_proto(msg: pb.DecomposeRequest, limits: Limits) -> DecomposeRequest:
    if not msg.texts:
        raise InvalidArgument("decompose.texts: at least one text is required")
    at_most(len(msg.texts), limits.max_texts_per_request, "decompose.texts (count)")
    top_k = msg.top_k or DEFAULT_TOP_K
    if top_k < 1:
        raise InvalidArgument(f"decompose.top_k: {top_k} must be >= 1 (0 = {DEFAULT_TOP_K})")
    at_most(top_k, limits.max_top_k, "decompose.top_k")
    at_most(len(msg.feature_ids), limits.max_feature_ids, "decompose.feature_ids (count)")
    return DecomposeRequest(
        texts=list(msg.texts),
        sae_ids=list(msg.saes),
        top_k=top_k,
        feature_ids=list(msg.feature_ids),
        include_reconstruction=msg.include_reconstruction
        if msg.HasField("include_reconstruction")
        else True,
    )


def decompose_to_proto(result: DecomposeResult) -> pb.DecomposeResponse:
    out = pb.DecomposeResponse()
    for text in result.texts:
        t = out.texts.add(tokens=tokens_to_proto(text.tokenization))
        for s in text.saes:
            d = t.saes.add(
                sae=s.sae_id,
                hook_point=s.hook_point,
                top_k=int(s.top_ids.shape[1]),
                top_ids=s.top_ids.reshape(-1).tolist(),
                top_values=s.top_values.reshape(-1).tolist(),
                dense_values=s.dense_values.reshape(-1).tolist(),
            )
            if s.token_mse is not None:
                d.token_mse.extend(np.asarray(s.token_mse).tolist())
            if s.explained_variance is not None:
                d.explained_variance = s.explained_variance
    return out


# --- Generate ---------------------------------------------------------------------------------
@dataclass
class GenerateSpec:
    """A Generate request before tokenization (the ingress tokenizes it: ``request``)."""

    prompt: str
    messages: list[tuple[str, str]]
    sampling: SamplingParams
    interventions: list[Intervention] = field(default_factory=list)
    include_baseline: bool = False
    track: list[TrackedFeature] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    kl_from_baseline: bool = False
    stop_conditions: list[FeatureCondition] = field(default_factory=list)

    def request(self, prompt_ids: list[int]) -> GenerateRequest:
        """The engine's request, with the prompt (or the rendered messages) as ids."""
        return GenerateRequest(
            prompt_ids=prompt_ids,
            sampling=self.sampling,
            interventions=self.interventions,
            include_baseline=self.include_baseline,
            track=self.track,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            kl_from_baseline=self.kl_from_baseline,
            stop_conditions=self.stop_conditions,
        )


def generate_from_proto(msg: pb.GenerateRequest, limits: Limits) -> GenerateSpec:
    if bool(msg.prompt) == bool(msg.messages):
        raise InvalidArgument("generate: exactly one of prompt and messages must be non-empty")
    # before the list is copied (GenerateRequest.validate checks it again, for the engine)
    at_most(
        len(msg.stop_conditions), limits.max_stop_conditions, "generate.stop_conditions (count)"
    )
    spec = GenerateSpec(
        prompt=msg.prompt,
        messages=[(m.role, m.content) for m in msg.messages],
        sampling=_sampling(msg.sampling),
        interventions=[_intervention(iv, i, limits) for i, iv in enumerate(msg.interventions)],
        include_baseline=msg.include_baseline,
        track=[TrackedFeature(t.sae, t.feature) for t in msg.track],
        logprobs=msg.logprobs,
        top_logprobs=msg.top_logprobs,
        kl_from_baseline=msg.kl_from_baseline,
        stop_conditions=[_condition(c) for c in msg.stop_conditions],
    )
    spec.request(prompt_ids=[]).validate(limits, "generate")  # the prompt is checked later
    return spec


def _sampling(msg: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=msg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=msg.temperature if msg.HasField("temperature") else 1.0,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=list(msg.stop),
        ignore_eos=msg.ignore_eos,
    )


def _intervention(msg: pb.Intervention, i: int, limits: Limits) -> Intervention:
    where = f"generate.interventions[{i}]"
    # before the lists are copied: bounded work whatever the message holds
    at_most(len(msg.vector), limits.max_vector_values, f"{where}.vector (count)")
    at_most(len(msg.indices), limits.max_tokens_per_text, f"{where}.indices (count)")
    if msg.mode not in _MODES:
        raise InvalidArgument(
            f"{where}.mode: required (ADD, CLAMP, SCALE, ABLATE, VECTOR or CLAMP_THRESHOLD)"
        )
    if msg.positions not in _POSITIONS:
        raise InvalidArgument(f"{where}.positions: unknown value {msg.positions}")
    mode = _MODES[msg.mode]
    return Intervention(
        mode=mode,
        value=msg.value,
        sae_id=msg.sae if mode is not InterventionMode.VECTOR else "",
        feature=msg.feature,
        hook_point=msg.hook_point,
        vector=list(msg.vector) if mode is InterventionMode.VECTOR else None,
        normalize=msg.normalize,
        positions=_POSITIONS[msg.positions],
        indices=list(msg.indices),
        condition=_condition(msg.condition) if msg.HasField("condition") else None,
        threshold=msg.threshold,
    )


def _condition(msg: pb.FeatureCondition) -> FeatureCondition:
    return FeatureCondition(msg.sae, msg.feature, msg.threshold, msg.below)


TokenStrings = Callable[[Sequence[int]], list[str]]
"""Each token id decoded on its own (``engine.tokenize.token_strings`` for a tokenizer)."""


def chunk_to_proto(
    event: TokenEvent, index: int, prompt_tokens: int, token_strings: TokenStrings
) -> pb.GenerateChunk:
    chunk = pb.GenerateChunk(
        variant=_VARIANTS[event.variant],
        index=index,
        token_id=event.token_id,
        text=event.text,
        tracked=event.tracked,
    )
    if event.top_logprobs:
        ids = [i for i, _ in event.top_logprobs]
        chunk.top_logprobs.extend(
            pb.TokenLogprob(token_id=i, token=t, logprob=lp)
            for (i, lp), t in zip(event.top_logprobs, token_strings(ids), strict=True)
        )
    if event.logprob is not None:
        chunk.logprob = event.logprob
    if event.kl_from_baseline is not None:
        chunk.kl_from_baseline = event.kl_from_baseline
    if event.stop_condition is not None:
        chunk.stop_condition = event.stop_condition
    if event.stop_activation is not None:
        chunk.stop_activation = event.stop_activation
    if event.finish_reason is not None:
        chunk.finish_reason = _FINISH[event.finish_reason]
        chunk.usage.CopyFrom(pb.Usage(prompt_tokens=prompt_tokens, generated_tokens=index + 1))
    return chunk


# --- features -----------------------------------------------------------------------------------
def search_limit(msg: pb.SearchFeaturesRequest, limits: Limits) -> int:
    if not msg.query.strip():
        raise InvalidArgument("search_features.query: required")
    at_most(len(msg.query.encode()), limits.max_query_bytes, "search_features.query (bytes)")
    limit = msg.limit or DEFAULT_SEARCH_LIMIT
    if limit < 1:
        raise InvalidArgument(
            f"search_features.limit: {limit} must be >= 1 (0 = {DEFAULT_SEARCH_LIMIT})"
        )
    at_most(limit, limits.max_search_results, "search_features.limit")
    return limit


# --- attribution --------------------------------------------------------------------------------
DEFAULT_ATTRIBUTION_TOP_N = 10


def attribution_top_n(top_n: int, limits: Limits, where: str) -> int:
    """``top_n`` of an Attribute / AttributeFeature request, defaulted and checked."""
    top_n = top_n or DEFAULT_ATTRIBUTION_TOP_N
    if top_n < 1:
        raise InvalidArgument(
            f"{where}.top_n: {top_n} must be >= 1 (0 = {DEFAULT_ATTRIBUTION_TOP_N})"
        )
    at_most(top_n, limits.max_attribution_top_n, f"{where}.top_n")
    return top_n


def _token_logit(t: TokenLogit, token_strings: TokenStrings) -> pb.TokenLogit:
    return pb.TokenLogit(
        token_id=t.token_id,
        token=token_strings([t.token_id])[0],
        logit=t.logit,
        probability=t.probability,
    )


def _feature_attributions(effects: list[FeatureEffect]) -> list[pb.FeatureAttribution]:
    return [
        pb.FeatureAttribution(
            feature=e.feature, activation=e.activation, direct_effect=e.direct, total_effect=e.total
        )
        for e in effects
    ]


def _terms(t: EffectTerms) -> pb.AttributionTerms:
    return pb.AttributionTerms(features=t.features, error=t.error, bias=t.bias, whole=t.whole)


def attribution_to_proto(
    result: AttributionResult, tokens: Tokenization, token_strings: TokenStrings
) -> pb.AttributeResponse:
    out = pb.AttributeResponse(
        tokens=tokens_to_proto(tokens),
        target=_token_logit(result.target, token_strings),
        metric=result.metric,
    )
    if result.contrast is not None:
        out.contrast.CopyFrom(_token_logit(result.contrast, token_strings))
    for s in result.saes:
        out.saes.add(
            sae=s.sae_id,
            hook_point=s.hook_point,
            active_features=s.active,
            has_direct_path=s.has_direct_path,
            top_direct_positive=_feature_attributions(s.direct_positive),
            top_direct_negative=_feature_attributions(s.direct_negative),
            top_total_positive=_feature_attributions(s.total_positive),
            top_total_negative=_feature_attributions(s.total_negative),
            direct=_terms(s.direct),
            total=_terms(s.total),
        )
    return out


def feature_input_to_proto(
    result: FeatureInputResult, tokens: Tokenization
) -> pb.AttributeFeatureResponse:
    def positions(ps: list[int]) -> list[pb.PositionAttribution]:
        return [
            pb.PositionAttribution(
                position=p, token=tokens.tokens[p], attribution=result.attributions[p]
            )
            for p in ps
        ]

    return pb.AttributeFeatureResponse(
        tokens=tokens_to_proto(tokens),
        position=result.position,
        pre_activation=result.pre_activation,
        activation=result.activation,
        attributions=result.attributions,
        top_positive=positions(result.top_positive),
        top_negative=positions(result.top_negative),
    )


# --- InspectFeatures / ContrastFeatures -----------------------------------------------------------
DEFAULT_TOP_FEATURES = 20
DEFAULT_FEATURE_POSITIONS = 16

_ACTIVITY_ORDERS = {
    pb.ACTIVITY_ORDER_UNSPECIFIED: ActivityOrder.COUNT,
    pb.ACTIVITY_ORDER_COUNT: ActivityOrder.COUNT,
    pb.ACTIVITY_ORDER_MAX: ActivityOrder.MAX,
    pb.ACTIVITY_ORDER_SUM: ActivityOrder.SUM,
    pb.ACTIVITY_ORDER_MEAN_ACTIVE: ActivityOrder.MEAN_ACTIVE,
}
_CONTRAST_UNITS = {
    pb.CONTRAST_UNIT_UNSPECIFIED: ContrastUnit.TOKEN,
    pb.CONTRAST_UNIT_TOKEN: ContrastUnit.TOKEN,
    pb.CONTRAST_UNIT_TEXT_MAX: ContrastUnit.TEXT_MAX,
}
_CONTRAST_ORDERS = {
    pb.CONTRAST_ORDER_UNSPECIFIED: ContrastOrder.MEAN_DIFF,
    pb.CONTRAST_ORDER_MEAN_DIFF: ContrastOrder.MEAN_DIFF,
    pb.CONTRAST_ORDER_AUROC: ContrastOrder.AUROC,
}


def _enum(value: int, known: Mapping[Any, R], where: str) -> R:
    if value not in known:
        raise InvalidArgument(f"{where}: unknown value {value}")
    return known[value]


def _top_n(value: int, limits: Limits, where: str) -> int:
    top_n = value or DEFAULT_TOP_FEATURES
    if top_n < 1:
        raise InvalidArgument(f"{where}: {top_n} must be >= 1 (0 = {DEFAULT_TOP_FEATURES})")
    at_most(top_n, limits.max_ranked_features, where)
    return top_n


@dataclass
class InspectSpec:
    """An InspectFeatures request before tokenization: its text or messages, and the rest."""

    text: str
    messages: list[tuple[str, str]]
    request: InspectRequest


def inspect_from_proto(msg: pb.InspectFeaturesRequest, limits: Limits) -> InspectSpec:
    if bool(msg.text) == bool(msg.messages):
        raise InvalidArgument(
            "inspect_features: exactly one of text and messages must be non-empty"
        )
    max_positions = msg.max_positions or DEFAULT_FEATURE_POSITIONS
    if max_positions < 1:
        raise InvalidArgument(
            f"inspect_features.max_positions: {max_positions} must be >= 1"
            f" (0 = {DEFAULT_FEATURE_POSITIONS})"
        )
    at_most(max_positions, limits.max_feature_positions, "inspect_features.max_positions")
    return InspectSpec(
        text=msg.text,
        messages=[(m.role, m.content) for m in msg.messages],
        request=InspectRequest(
            sae_ids=list(msg.saes),
            order_by=_enum(msg.order_by, _ACTIVITY_ORDERS, "inspect_features.order_by"),
            top_n=_top_n(msg.top_n, limits, "inspect_features.top_n"),
            max_positions=max_positions,
        ),
    )


def inspect_to_proto(tokens: Tokenization, result: list[SaeActivity]) -> pb.InspectFeaturesResponse:
    out = pb.InspectFeaturesResponse(tokens=tokens_to_proto(tokens))
    for s in result:
        sae = out.saes.add(sae=s.sae_id, hook_point=s.hook_point, active_features=s.active_features)
        for f in s.features:
            sae.features.add(
                feature=f.feature,
                count=f.count,
                max_activation=f.max_activation,
                max_position=f.max_position,
                sum_activation=f.sum_activation,
                mean_over_tokens=f.mean_over_tokens,
                mean_over_active=f.mean_over_active,
                positions=f.positions,
                values=f.values,
            )
    return out


def contrast_from_proto(msg: pb.ContrastFeaturesRequest, limits: Limits) -> ContrastRequest:
    """The request's options; its texts are the caller's to tokenize (``texts_a[i]``)."""
    for name, texts in (("texts_a", msg.texts_a), ("texts_b", msg.texts_b)):
        if not texts:
            raise InvalidArgument(f"contrast_features.{name}: at least one text is required")
        at_most(len(texts), limits.max_contrast_texts, f"contrast_features.{name} (count)")
    return ContrastRequest(
        sae_ids=list(msg.saes),
        unit=_enum(msg.unit, _CONTRAST_UNITS, "contrast_features.unit"),
        order_by=_enum(msg.order_by, _CONTRAST_ORDERS, "contrast_features.order_by"),
        top_n=_top_n(msg.top_n, limits, "contrast_features.top_n"),
    )


def contrast_to_proto(result: list[SaeContrast]) -> pb.ContrastFeaturesResponse:
    out = pb.ContrastFeaturesResponse()
    for s in result:
        sae = out.saes.add(
            sae=s.sae_id,
            hook_point=s.hook_point,
            samples_a=s.samples_a,
            samples_b=s.samples_b,
            active_features=s.active_features,
        )
        for rows, side in ((s.more_in_a, sae.more_in_a), (s.more_in_b, sae.more_in_b)):
            for r in rows:
                f = side.add(
                    feature=r.feature,
                    mean_a=r.mean_a,
                    mean_b=r.mean_b,
                    mean_diff=r.mean_diff,
                    auroc=r.auroc,
                    active_fraction_a=r.active_fraction_a,
                    active_fraction_b=r.active_fraction_b,
                )
                if r.cohens_d is not None:
                    f.cohens_d = r.cohens_d
    return out
