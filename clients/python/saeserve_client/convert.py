"""Conversions between the wire format (``saeserve.v1`` protobuf) and the client's types.

One place for both directions: requests are built here from plain Python arguments and
``Steer`` values, and responses become the dataclasses of ``results``. Packed row-major
arrays are reshaped to ``[n_tokens, width]`` numpy arrays; enums become lower-case
strings with their prefix removed (``SAE_ARCHITECTURE_TOPK`` -> ``"topk"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from saeserve.v1 import saeserve_pb2 as pb
from saeserve_client.results import (
    ActivatingContext,
    Attribution,
    AttributionTerms,
    Condition,
    Explanation,
    Feature,
    FeatureActivity,
    FeatureAttribution,
    FeatureContrast,
    FeatureInputAttribution,
    FeatureMatch,
    FeatureNeighbour,
    GenerateChunk,
    Histogram,
    Inspection,
    ModelInfo,
    PositionAttribution,
    QuantileSamples,
    SaeActivity,
    SaeAttribution,
    SaeContrast,
    SaeDecomposition,
    SaeInfo,
    Steer,
    TextDecomposition,
    TokenEffect,
    TokenLogit,
    TokenLogprob,
    Tokens,
    Usage,
)


def enum_name(wrapper: EnumTypeWrapper, value: int, prefix: str) -> str:
    """``FINISH_REASON_LENGTH`` -> ``"length"``; a value this client does not know -> its number."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def f32(value: float) -> float:
    """A float32 field as the shortest decimal that reads back as the same float32
    (0.0125, not 0.012500000186264515), so printed values look like what was meant."""
    return float(str(np.float32(value)))


def _matrix(
    values: Iterable[float], rows: int, width: int, dtype: npt.DTypeLike, what: str
) -> npt.NDArray[Any]:
    flat = np.asarray(values, dtype=dtype)
    if flat.size != rows * width:
        raise ValueError(f"server sent {flat.size} {what}, expected {rows} x {width}")
    return flat.reshape(rows, width)


# ---------------------------------------------------------------------------------------
# responses


def sae_info(msg: pb.SaeInfo) -> SaeInfo:
    return SaeInfo(
        id=msg.id,
        hook_point=msg.hook_point,
        d_in=msg.d_in,
        d_sae=msg.d_sae,
        architecture=enum_name(pb.SaeArchitecture, msg.architecture, "SAE_ARCHITECTURE_"),
        k=msg.k,
        has_feature_index=msg.has_feature_index,
        dtype=msg.dtype,
        weight_bytes=msg.weight_bytes,
        shards=msg.shards or 1,
    )


def model_info(msg: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=msg.name,
        family=msg.family,
        n_layers=msg.n_layers,
        d_model=msg.d_model,
        vocab_size=msg.vocab_size,
        max_positions=msg.max_positions,
        dtype=msg.dtype,
        saes=tuple(sae_info(s) for s in msg.saes),
        has_chat_template=msg.has_chat_template,
    )


def models(msg: pb.ListModelsResponse) -> list[ModelInfo]:
    return [model_info(m) for m in msg.models]


def _offsets(msg: pb.Tokens) -> npt.NDArray[np.int32]:
    starts = np.asarray(msg.byte_starts, dtype=np.int32)
    ends = np.asarray(msg.byte_ends, dtype=np.int32)
    if starts.shape != ends.shape:
        raise ValueError("server sent byte_starts and byte_ends of different lengths")
    return np.stack([starts, ends], axis=1) if starts.size else np.zeros((0, 2), np.int32)


def tokens(msg: pb.Tokens) -> Tokens:
    return Tokens(
        ids=np.asarray(msg.ids, dtype=np.int32), strings=list(msg.strings), offsets=_offsets(msg)
    )


def sae_decomposition(
    msg: pb.SaeDecomposition, n_tokens: int, feature_ids: npt.NDArray[np.int32]
) -> SaeDecomposition:
    n_dense = len(feature_ids)
    has_rec = msg.HasField("explained_variance") or len(msg.token_mse) > 0
    return SaeDecomposition(
        sae=msg.sae,
        hook_point=msg.hook_point,
        top_k=msg.top_k,
        top_ids=_matrix(msg.top_ids, n_tokens, msg.top_k, np.int32, "top_ids"),
        top_values=_matrix(msg.top_values, n_tokens, msg.top_k, np.float32, "top_values"),
        feature_ids=feature_ids,
        dense=_matrix(msg.dense_values, n_tokens, n_dense, np.float32, "dense_values"),
        token_mse=np.asarray(msg.token_mse, dtype=np.float32) if has_rec else None,
        explained_variance=(
            f32(msg.explained_variance) if msg.HasField("explained_variance") else None
        ),
    )


def text_decomposition(
    msg: pb.TextDecomposition, text: str, feature_ids: Sequence[int]
) -> TextDecomposition:
    ids = np.asarray(feature_ids, dtype=np.int32)
    n = len(msg.tokens.ids)
    return TextDecomposition(
        text=text,
        tokens=list(msg.tokens.strings),
        token_ids=np.asarray(msg.tokens.ids, dtype=np.int32),
        offsets=_offsets(msg.tokens),
        saes={s.sae: sae_decomposition(s, n, ids) for s in msg.saes},
    )


def decompositions(
    msg: pb.DecomposeResponse, texts: Sequence[str], feature_ids: Sequence[int]
) -> list[TextDecomposition]:
    if len(msg.texts) != len(texts):
        raise ValueError(f"server sent {len(msg.texts)} decompositions for {len(texts)} texts")
    return [text_decomposition(m, t, feature_ids) for m, t in zip(msg.texts, texts, strict=True)]


def generate_chunk(msg: pb.GenerateChunk) -> GenerateChunk:
    final = msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    return GenerateChunk(
        variant=enum_name(pb.Variant, msg.variant, "VARIANT_"),
        index=msg.index,
        token_id=msg.token_id,
        text=msg.text,
        logprob=f32(msg.logprob) if msg.HasField("logprob") else None,
        tracked=np.asarray(msg.tracked, dtype=np.float32),
        finish_reason=enum_name(pb.FinishReason, msg.finish_reason, "FINISH_REASON_")
        if final
        else None,
        usage=Usage(msg.usage.prompt_tokens, msg.usage.generated_tokens)
        if msg.HasField("usage")
        else None,
        top_logprobs=[TokenLogprob(t.token_id, t.token, f32(t.logprob)) for t in msg.top_logprobs],
        kl_from_baseline=f32(msg.kl_from_baseline) if msg.HasField("kl_from_baseline") else None,
        stop_condition=msg.stop_condition if msg.HasField("stop_condition") else None,
        stop_activation=f32(msg.stop_activation) if msg.HasField("stop_activation") else None,
    )


def explanation(msg: pb.Explanation) -> Explanation:
    source = enum_name(pb.ExplanationSource, msg.source, "EXPLANATION_SOURCE_")
    return Explanation(text=msg.text, source=source)


def _effects(msgs: Sequence[pb.TokenEffect]) -> list[TokenEffect]:
    return [TokenEffect(m.token, m.token_id, f32(m.logit_effect)) for m in msgs]


def feature(msg: pb.GetFeatureResponse) -> Feature:
    hist = msg.histogram
    return Feature(
        sae=msg.feature.sae,
        feature=msg.feature.feature,
        has_statistics=msg.has_statistics,
        density=f32(msg.density),
        max_activation=f32(msg.max_activation),
        mean_activation=f32(msg.mean_activation),
        tokens_indexed=msg.tokens_indexed,
        histogram=Histogram(
            bin_edges=np.asarray(hist.bin_edges, dtype=np.float32),
            counts=np.asarray(hist.counts, dtype=np.int64),
        )
        if msg.HasField("histogram")
        else None,
        top_contexts=_contexts(msg.top_contexts),
        top_promoted=_effects(msg.top_promoted),
        top_suppressed=_effects(msg.top_suppressed),
        explanation=explanation(msg.explanation) if msg.HasField("explanation") else None,
        quantiles=[
            QuantileSamples(
                min_activation=f32(q.min_activation),
                max_activation=f32(q.max_activation),
                contexts=_contexts(q.contexts),
            )
            for q in msg.quantiles
        ],
        decoder_neighbours=_neighbours(msg.decoder_neighbours),
        encoder_neighbours=_neighbours(msg.encoder_neighbours),
    )


def _contexts(contexts: Iterable[pb.ActivatingContext]) -> list[ActivatingContext]:
    return [
        ActivatingContext(
            tokens=list(c.tokens),
            values=np.asarray(c.values, dtype=np.float32),
            max_index=c.max_index,
            max_value=f32(c.max_value),
        )
        for c in contexts
    ]


def _neighbours(neighbours: Iterable[pb.FeatureNeighbour]) -> list[FeatureNeighbour]:
    return [FeatureNeighbour(feature=n.feature, cosine=f32(n.cosine)) for n in neighbours]


def feature_matches(msg: pb.SearchFeaturesResponse) -> list[FeatureMatch]:
    return [
        FeatureMatch(
            sae=m.feature.sae,
            feature=m.feature.feature,
            score=f32(m.score),
            explanation=explanation(m.explanation) if m.HasField("explanation") else None,
            top_tokens=tuple(m.top_tokens),
        )
        for m in msg.matches
    ]


def inspection(msg: pb.InspectFeaturesResponse) -> Inspection:
    return Inspection(
        tokens=tokens(msg.tokens),
        saes={
            s.sae: SaeActivity(
                sae=s.sae,
                hook_point=s.hook_point,
                active_features=s.active_features,
                features=[
                    FeatureActivity(
                        feature=f.feature,
                        count=f.count,
                        max_activation=f32(f.max_activation),
                        max_position=f.max_position,
                        sum_activation=f32(f.sum_activation),
                        mean_over_tokens=f32(f.mean_over_tokens),
                        mean_over_active=f32(f.mean_over_active),
                        positions=np.asarray(f.positions, dtype=np.int32),
                        values=np.asarray(f.values, dtype=np.float32),
                    )
                    for f in s.features
                ],
            )
            for s in msg.saes
        },
    )


def _contrast_rows(rows: Iterable[pb.FeatureContrast]) -> list[FeatureContrast]:
    return [
        FeatureContrast(
            feature=r.feature,
            mean_a=f32(r.mean_a),
            mean_b=f32(r.mean_b),
            mean_diff=f32(r.mean_diff),
            auroc=f32(r.auroc),
            cohens_d=f32(r.cohens_d) if r.HasField("cohens_d") else None,
            active_fraction_a=f32(r.active_fraction_a),
            active_fraction_b=f32(r.active_fraction_b),
        )
        for r in rows
    ]


def contrasts(msg: pb.ContrastFeaturesResponse) -> dict[str, SaeContrast]:
    return {
        s.sae: SaeContrast(
            sae=s.sae,
            hook_point=s.hook_point,
            samples_a=s.samples_a,
            samples_b=s.samples_b,
            active_features=s.active_features,
            more_in_a=_contrast_rows(s.more_in_a),
            more_in_b=_contrast_rows(s.more_in_b),
        )
        for s in msg.saes
    }


# ---------------------------------------------------------------------------------------
# requests


def decompose_request(
    model: str,
    texts: Sequence[str],
    saes: Sequence[str],
    top_k: int,
    feature_ids: Sequence[int],
    include_reconstruction: bool,
) -> pb.DecomposeRequest:
    return pb.DecomposeRequest(
        model=model,
        texts=list(texts),
        saes=list(saes),
        top_k=top_k,
        feature_ids=[int(f) for f in feature_ids],
        include_reconstruction=include_reconstruction,
    )


# A chat message: {"role": ..., "content": ...} (as in chat-completion APIs) or (role, content).
ChatInput = Mapping[str, str] | tuple[str, str]


def chat_messages(messages: Sequence[ChatInput]) -> list[pb.ChatMessage]:
    out = []
    for message in messages:
        if isinstance(message, Mapping):
            if set(message) - {"role", "content"} or "role" not in message:
                raise ValueError(f"a chat message has keys role and content, got {sorted(message)}")
            out.append(pb.ChatMessage(role=message["role"], content=message.get("content", "")))
        else:
            role, content = message
            out.append(pb.ChatMessage(role=role, content=content))
    if not out:
        raise ValueError("generate needs a non-empty prompt or at least one chat message")
    return out


_POSITIONS = {
    "all": pb.POSITIONS_ALL,
    "prompt": pb.POSITIONS_PROMPT,
    "generated": pb.POSITIONS_GENERATED,
}


def intervention(steer: Steer) -> pb.Intervention:
    mode = pb.InterventionMode.Value(f"INTERVENTION_MODE_{steer.mode.upper()}")
    msg = pb.Intervention(
        mode=mode,
        sae=steer.sae,
        feature=steer.feature,
        value=steer.value,
        hook_point=steer.hook_point,
        vector=list(steer.direction),
        normalize=steer.normalize,
        threshold=steer.threshold,
    )
    if isinstance(steer.positions, str):
        msg.positions = _POSITIONS[steer.positions]
    else:
        msg.positions = pb.POSITIONS_INDICES
        msg.indices.extend(steer.positions)
    if steer.condition is not None:
        msg.condition.CopyFrom(condition(steer.condition))
    return msg


def condition(c: Condition) -> pb.FeatureCondition:
    return pb.FeatureCondition(
        sae=c.sae, feature=c.feature, threshold=c.threshold, below=c.op == "below"
    )


def generate_request(
    *,
    model: str,
    prompt: str | Sequence[ChatInput],
    max_new_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int,
    seed: int | None,
    stop: Sequence[str],
    ignore_eos: bool,
    interventions: Sequence[Steer],
    include_baseline: bool,
    track: Sequence[tuple[str, int]],
    logprobs: bool,
    top_logprobs: int,
    kl_from_baseline: bool,
    stop_conditions: Sequence[Condition] = (),
) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(
        max_new_tokens=max_new_tokens, top_k=top_k, stop=list(stop), ignore_eos=ignore_eos
    )
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if seed is not None:
        sampling.seed = seed
    text, messages = (prompt, []) if isinstance(prompt, str) else ("", chat_messages(prompt))
    return pb.GenerateRequest(
        model=model,
        prompt=text,
        messages=messages,
        sampling=sampling,
        interventions=[intervention(s) for s in interventions],
        include_baseline=include_baseline,
        track=[pb.FeatureRef(sae=s, feature=int(f)) for s, f in track],
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        kl_from_baseline=kl_from_baseline,
        stop_conditions=[condition(c) for c in stop_conditions],
    )


# ---------------------------------------------------------------------------------------
# grpc.health.v1 (optional dependency)


def health_modules() -> tuple[Any, Any]:
    """The grpc.health.v1 message and stub modules from grpcio-health-checking.

    Imported on first use only, so the client works without that package; ``health()``
    alone needs it.
    """
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:
        raise RuntimeError(
            "health() needs the grpcio-health-checking package (pip install "
            "grpcio-health-checking); every other client method works without it"
        ) from exc
    return health_pb2, health_pb2_grpc


def serving_status(reply: Any) -> str:
    """A HealthCheckResponse's status name, e.g. "SERVING"."""
    health_pb2, _ = health_modules()
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# ---------------------------------------------------------------------------------------
# attribution


def token_choice(token: int | str | None) -> pb.TokenChoice | None:
    """A token by id (int) or by text (str); None names none."""
    if token is None:
        return None
    if isinstance(token, str):
        return pb.TokenChoice(text=token)
    return pb.TokenChoice(id=token)


def attribute_request(
    model: str,
    prompt: str,
    target: int | str | None,
    contrast: int | str | None,
    saes: Sequence[str],
    top_n: int,
) -> pb.AttributeRequest:
    return pb.AttributeRequest(
        model=model,
        prompt=prompt,
        target=token_choice(target),
        contrast=token_choice(contrast),
        saes=list(saes),
        top_n=top_n,
    )


def attribute_feature_request(
    model: str, prompt: str, sae: str, feature: int, position: int | None, top_n: int
) -> pb.AttributeFeatureRequest:
    return pb.AttributeFeatureRequest(
        model=model, prompt=prompt, sae=sae, feature=feature, position=position, top_n=top_n
    )


def _token_logit(msg: pb.TokenLogit) -> TokenLogit:
    return TokenLogit(msg.token_id, msg.token, f32(msg.logit), f32(msg.probability))


def _feature_attributions(msgs: Iterable[pb.FeatureAttribution]) -> list[FeatureAttribution]:
    return [
        FeatureAttribution(m.feature, f32(m.activation), f32(m.direct_effect), f32(m.total_effect))
        for m in msgs
    ]


def _terms(msg: pb.AttributionTerms) -> AttributionTerms:
    return AttributionTerms(f32(msg.features), f32(msg.error), f32(msg.bias), f32(msg.whole))


def attribution(msg: pb.AttributeResponse) -> Attribution:
    return Attribution(
        tokens=tokens(msg.tokens),
        target=_token_logit(msg.target),
        contrast=_token_logit(msg.contrast) if msg.HasField("contrast") else None,
        metric=f32(msg.metric),
        saes=[
            SaeAttribution(
                sae=s.sae,
                hook_point=s.hook_point,
                active_features=s.active_features,
                has_direct_path=s.has_direct_path,
                top_direct_positive=_feature_attributions(s.top_direct_positive),
                top_direct_negative=_feature_attributions(s.top_direct_negative),
                top_total_positive=_feature_attributions(s.top_total_positive),
                top_total_negative=_feature_attributions(s.top_total_negative),
                direct=_terms(s.direct),
                total=_terms(s.total),
            )
            for s in msg.saes
        ],
    )


def feature_input_attribution(msg: pb.AttributeFeatureResponse) -> FeatureInputAttribution:
    def positions(msgs: Iterable[pb.PositionAttribution]) -> list[PositionAttribution]:
        return [PositionAttribution(m.position, m.token, f32(m.attribution)) for m in msgs]

    return FeatureInputAttribution(
        tokens=tokens(msg.tokens),
        position=msg.position,
        pre_activation=f32(msg.pre_activation),
        activation=f32(msg.activation),
        attributions=np.asarray(msg.attributions, dtype=np.float32),
        top_positive=positions(msg.top_positive),
        top_negative=positions(msg.top_negative),
    )


def _enum_value(wrapper: EnumTypeWrapper, prefix: str, name: str, argument: str) -> str:
    """``"text_max"`` -> ``"CONTRAST_UNIT_TEXT_MAX"``; ValueError naming the argument."""
    names = [n for n in wrapper.DESCRIPTOR.values_by_name if not n.endswith("_UNSPECIFIED")]
    full = prefix + name.upper()
    if full not in names:
        known = ", ".join(n.removeprefix(prefix).lower() for n in names)
        raise ValueError(f"{argument}: {name!r} is not one of {known}")
    return full


def inspect_request(
    model: str,
    text: str | Sequence[ChatInput],
    saes: Sequence[str],
    order_by: str,
    top_n: int,
    max_positions: int,
) -> pb.InspectFeaturesRequest:
    request = pb.InspectFeaturesRequest(
        model=model,
        saes=list(saes),
        order_by=_enum_value(pb.ActivityOrder, "ACTIVITY_ORDER_", order_by, "order_by"),
        top_n=top_n,
        max_positions=max_positions,
    )
    if isinstance(text, str):
        request.text = text
    else:
        request.messages.extend(chat_messages(text))
    return request


def contrast_request(
    model: str,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    saes: Sequence[str],
    unit: str,
    order_by: str,
    top_n: int,
) -> pb.ContrastFeaturesRequest:
    for name, texts in (("texts_a", texts_a), ("texts_b", texts_b)):
        if isinstance(texts, str):
            raise ValueError(f"{name}: a sequence of texts, not one string")
    return pb.ContrastFeaturesRequest(
        model=model,
        texts_a=list(texts_a),
        texts_b=list(texts_b),
        saes=list(saes),
        unit=_enum_value(pb.ContrastUnit, "CONTRAST_UNIT_", unit, "unit"),
        order_by=_enum_value(pb.ContrastOrder, "CONTRAST_ORDER_", order_by, "order_by"),
        top_n=top_n,
    )
