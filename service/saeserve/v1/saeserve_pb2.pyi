from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SaeArchitecture(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAE_ARCHITECTURE_UNSPECIFIED: _ClassVar[SaeArchitecture]
    SAE_ARCHITECTURE_TOPK: _ClassVar[SaeArchitecture]
    SAE_ARCHITECTURE_JUMPRELU: _ClassVar[SaeArchitecture]
    SAE_ARCHITECTURE_RELU: _ClassVar[SaeArchitecture]

class InterventionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERVENTION_MODE_UNSPECIFIED: _ClassVar[InterventionMode]
    INTERVENTION_MODE_ADD: _ClassVar[InterventionMode]
    INTERVENTION_MODE_CLAMP: _ClassVar[InterventionMode]
    INTERVENTION_MODE_SCALE: _ClassVar[InterventionMode]
    INTERVENTION_MODE_ABLATE: _ClassVar[InterventionMode]
    INTERVENTION_MODE_VECTOR: _ClassVar[InterventionMode]
    INTERVENTION_MODE_CLAMP_THRESHOLD: _ClassVar[InterventionMode]

class Positions(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSITIONS_UNSPECIFIED: _ClassVar[Positions]
    POSITIONS_ALL: _ClassVar[Positions]
    POSITIONS_PROMPT: _ClassVar[Positions]
    POSITIONS_GENERATED: _ClassVar[Positions]
    POSITIONS_INDICES: _ClassVar[Positions]

class Variant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VARIANT_UNSPECIFIED: _ClassVar[Variant]
    VARIANT_STEERED: _ClassVar[Variant]
    VARIANT_BASELINE: _ClassVar[Variant]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_CONDITION: _ClassVar[FinishReason]

class ExplanationSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLANATION_SOURCE_UNSPECIFIED: _ClassVar[ExplanationSource]
    EXPLANATION_SOURCE_IMPORTED: _ClassVar[ExplanationSource]
    EXPLANATION_SOURCE_GENERATED: _ClassVar[ExplanationSource]

class ActivityOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_ORDER_UNSPECIFIED: _ClassVar[ActivityOrder]
    ACTIVITY_ORDER_COUNT: _ClassVar[ActivityOrder]
    ACTIVITY_ORDER_MAX: _ClassVar[ActivityOrder]
    ACTIVITY_ORDER_SUM: _ClassVar[ActivityOrder]
    ACTIVITY_ORDER_MEAN_ACTIVE: _ClassVar[ActivityOrder]

class ContrastUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTRAST_UNIT_UNSPECIFIED: _ClassVar[ContrastUnit]
    CONTRAST_UNIT_TOKEN: _ClassVar[ContrastUnit]
    CONTRAST_UNIT_TEXT_MAX: _ClassVar[ContrastUnit]

class ContrastOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTRAST_ORDER_UNSPECIFIED: _ClassVar[ContrastOrder]
    CONTRAST_ORDER_MEAN_DIFF: _ClassVar[ContrastOrder]
    CONTRAST_ORDER_AUROC: _ClassVar[ContrastOrder]
SAE_ARCHITECTURE_UNSPECIFIED: SaeArchitecture
SAE_ARCHITECTURE_TOPK: SaeArchitecture
SAE_ARCHITECTURE_JUMPRELU: SaeArchitecture
SAE_ARCHITECTURE_RELU: SaeArchitecture
INTERVENTION_MODE_UNSPECIFIED: InterventionMode
INTERVENTION_MODE_ADD: InterventionMode
INTERVENTION_MODE_CLAMP: InterventionMode
INTERVENTION_MODE_SCALE: InterventionMode
INTERVENTION_MODE_ABLATE: InterventionMode
INTERVENTION_MODE_VECTOR: InterventionMode
INTERVENTION_MODE_CLAMP_THRESHOLD: InterventionMode
POSITIONS_UNSPECIFIED: Positions
POSITIONS_ALL: Positions
POSITIONS_PROMPT: Positions
POSITIONS_GENERATED: Positions
POSITIONS_INDICES: Positions
VARIANT_UNSPECIFIED: Variant
VARIANT_STEERED: Variant
VARIANT_BASELINE: Variant
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_CONDITION: FinishReason
EXPLANATION_SOURCE_UNSPECIFIED: ExplanationSource
EXPLANATION_SOURCE_IMPORTED: ExplanationSource
EXPLANATION_SOURCE_GENERATED: ExplanationSource
ACTIVITY_ORDER_UNSPECIFIED: ActivityOrder
ACTIVITY_ORDER_COUNT: ActivityOrder
ACTIVITY_ORDER_MAX: ActivityOrder
ACTIVITY_ORDER_SUM: ActivityOrder
ACTIVITY_ORDER_MEAN_ACTIVE: ActivityOrder
CONTRAST_UNIT_UNSPECIFIED: ContrastUnit
CONTRAST_UNIT_TOKEN: ContrastUnit
CONTRAST_UNIT_TEXT_MAX: ContrastUnit
CONTRAST_ORDER_UNSPECIFIED: ContrastOrder
CONTRAST_ORDER_MEAN_DIFF: ContrastOrder
CONTRAST_ORDER_AUROC: ContrastOrder

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "n_layers", "d_model", "vocab_size", "max_positions", "dtype", "saes", "has_chat_template")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int
    max_positions: int
    dtype: str
    saes: _containers.RepeatedCompositeFieldContainer[SaeInfo]
    has_chat_template: bool
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., n_layers: _Optional[int] = ..., d_model: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_positions: _Optional[int] = ..., dtype: _Optional[str] = ..., saes: _Optional[_Iterable[_Union[SaeInfo, _Mapping]]] = ..., has_chat_template: _Optional[bool] = ...) -> None: ...

class SaeInfo(_message.Message):
    __slots__ = ("id", "hook_point", "d_in", "d_sae", "architecture", "k", "has_feature_index", "dtype", "weight_bytes", "shards")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    D_IN_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    HAS_FEATURE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    hook_point: str
    d_in: int
    d_sae: int
    architecture: SaeArchitecture
    k: int
    has_feature_index: bool
    dtype: str
    weight_bytes: int
    shards: int
    def __init__(self, id: _Optional[str] = ..., hook_point: _Optional[str] = ..., d_in: _Optional[int] = ..., d_sae: _Optional[int] = ..., architecture: _Optional[_Union[SaeArchitecture, str]] = ..., k: _Optional[int] = ..., has_feature_index: _Optional[bool] = ..., dtype: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., shards: _Optional[int] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "text")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: Tokens
    def __init__(self, tokens: _Optional[_Union[Tokens, _Mapping]] = ...) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("ids", "strings", "byte_starts", "byte_ends")
    IDS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    BYTE_STARTS_FIELD_NUMBER: _ClassVar[int]
    BYTE_ENDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    strings: _containers.RepeatedScalarFieldContainer[str]
    byte_starts: _containers.RepeatedScalarFieldContainer[int]
    byte_ends: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., strings: _Optional[_Iterable[str]] = ..., byte_starts: _Optional[_Iterable[int]] = ..., byte_ends: _Optional[_Iterable[int]] = ...) -> None: ...

class DecomposeRequest(_message.Message):
    __slots__ = ("model", "texts", "saes", "top_k", "feature_ids", "include_reconstruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FEATURE_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    saes: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    feature_ids: _containers.RepeatedScalarFieldContainer[int]
    include_reconstruction: bool
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., saes: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., feature_ids: _Optional[_Iterable[int]] = ..., include_reconstruction: _Optional[bool] = ...) -> None: ...

class DecomposeResponse(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedCompositeFieldContainer[TextDecomposition]
    def __init__(self, texts: _Optional[_Iterable[_Union[TextDecomposition, _Mapping]]] = ...) -> None: ...

class TextDecomposition(_message.Message):
    __slots__ = ("tokens", "saes")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    tokens: Tokens
    saes: _containers.RepeatedCompositeFieldContainer[SaeDecomposition]
    def __init__(self, tokens: _Optional[_Union[Tokens, _Mapping]] = ..., saes: _Optional[_Iterable[_Union[SaeDecomposition, _Mapping]]] = ...) -> None: ...

class SaeDecomposition(_message.Message):
    __slots__ = ("sae", "hook_point", "top_k", "top_ids", "top_values", "dense_values", "token_mse", "explained_variance")
    SAE_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_VALUES_FIELD_NUMBER: _ClassVar[int]
    DENSE_VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_MSE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    sae: str
    hook_point: str
    top_k: int
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_values: _containers.RepeatedScalarFieldContainer[float]
    dense_values: _containers.RepeatedScalarFieldContainer[float]
    token_mse: _containers.RepeatedScalarFieldContainer[float]
    explained_variance: float
    def __init__(self, sae: _Optional[str] = ..., hook_point: _Optional[str] = ..., top_k: _Optional[int] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_values: _Optional[_Iterable[float]] = ..., dense_values: _Optional[_Iterable[float]] = ..., token_mse: _Optional[_Iterable[float]] = ..., explained_variance: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "messages", "sampling", "interventions", "include_baseline", "track", "logprobs", "top_logprobs", "kl_from_baseline", "stop_conditions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BASELINE_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    KL_FROM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    STOP_CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: SamplingParams
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    include_baseline: bool
    track: _containers.RepeatedCompositeFieldContainer[FeatureRef]
    logprobs: bool
    top_logprobs: int
    kl_from_baseline: bool
    stop_conditions: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ..., include_baseline: _Optional[bool] = ..., track: _Optional[_Iterable[_Union[FeatureRef, _Mapping]]] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., kl_from_baseline: _Optional[bool] = ..., stop_conditions: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("mode", "sae", "feature", "value", "hook_point", "vector", "normalize", "positions", "indices", "condition", "threshold")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    mode: InterventionMode
    sae: str
    feature: int
    value: float
    hook_point: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    normalize: bool
    positions: Positions
    indices: _containers.RepeatedScalarFieldContainer[int]
    condition: FeatureCondition
    threshold: float
    def __init__(self, mode: _Optional[_Union[InterventionMode, str]] = ..., sae: _Optional[str] = ..., feature: _Optional[int] = ..., value: _Optional[float] = ..., hook_point: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., normalize: _Optional[bool] = ..., positions: _Optional[_Union[Positions, str]] = ..., indices: _Optional[_Iterable[int]] = ..., condition: _Optional[_Union[FeatureCondition, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class FeatureCondition(_message.Message):
    __slots__ = ("sae", "feature", "threshold", "below")
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BELOW_FIELD_NUMBER: _ClassVar[int]
    sae: str
    feature: int
    threshold: float
    below: bool
    def __init__(self, sae: _Optional[str] = ..., feature: _Optional[int] = ..., threshold: _Optional[float] = ..., below: _Optional[bool] = ...) -> None: ...

class FeatureRef(_message.Message):
    __slots__ = ("sae", "feature")
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    sae: str
    feature: int
    def __init__(self, sae: _Optional[str] = ..., feature: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("variant", "index", "token_id", "text", "logprob", "tracked", "finish_reason", "usage", "top_logprobs", "kl_from_baseline", "stop_condition", "stop_activation")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TRACKED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    KL_FROM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    STOP_CONDITION_FIELD_NUMBER: _ClassVar[int]
    STOP_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    variant: Variant
    index: int
    token_id: int
    text: str
    logprob: float
    tracked: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: FinishReason
    usage: Usage
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    kl_from_baseline: float
    stop_condition: int
    stop_activation: float
    def __init__(self, variant: _Optional[_Union[Variant, str]] = ..., index: _Optional[int] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ..., tracked: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., top_logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., kl_from_baseline: _Optional[float] = ..., stop_condition: _Optional[int] = ..., stop_activation: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "token", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ...) -> None: ...

class GetFeatureRequest(_message.Message):
    __slots__ = ("model", "sae", "feature")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    feature: int
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., feature: _Optional[int] = ...) -> None: ...

class GetFeatureResponse(_message.Message):
    __slots__ = ("feature", "has_statistics", "density", "max_activation", "mean_activation", "tokens_indexed", "histogram", "top_contexts", "top_promoted", "top_suppressed", "explanation", "quantiles", "decoder_neighbours", "encoder_neighbours")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    HAS_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    TOP_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_PROMOTED_FIELD_NUMBER: _ClassVar[int]
    TOP_SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    DECODER_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    feature: FeatureRef
    has_statistics: bool
    density: float
    max_activation: float
    mean_activation: float
    tokens_indexed: int
    histogram: Histogram
    top_contexts: _containers.RepeatedCompositeFieldContainer[ActivatingContext]
    top_promoted: _containers.RepeatedCompositeFieldContainer[TokenEffect]
    top_suppressed: _containers.RepeatedCompositeFieldContainer[TokenEffect]
    explanation: Explanation
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantileSamples]
    decoder_neighbours: _containers.RepeatedCompositeFieldContainer[FeatureNeighbour]
    encoder_neighbours: _containers.RepeatedCompositeFieldContainer[FeatureNeighbour]
    def __init__(self, feature: _Optional[_Union[FeatureRef, _Mapping]] = ..., has_statistics: _Optional[bool] = ..., density: _Optional[float] = ..., max_activation: _Optional[float] = ..., mean_activation: _Optional[float] = ..., tokens_indexed: _Optional[int] = ..., histogram: _Optional[_Union[Histogram, _Mapping]] = ..., top_contexts: _Optional[_Iterable[_Union[ActivatingContext, _Mapping]]] = ..., top_promoted: _Optional[_Iterable[_Union[TokenEffect, _Mapping]]] = ..., top_suppressed: _Optional[_Iterable[_Union[TokenEffect, _Mapping]]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., quantiles: _Optional[_Iterable[_Union[QuantileSamples, _Mapping]]] = ..., decoder_neighbours: _Optional[_Iterable[_Union[FeatureNeighbour, _Mapping]]] = ..., encoder_neighbours: _Optional[_Iterable[_Union[FeatureNeighbour, _Mapping]]] = ...) -> None: ...

class QuantileSamples(_message.Message):
    __slots__ = ("min_activation", "max_activation", "contexts")
    MIN_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    min_activation: float
    max_activation: float
    contexts: _containers.RepeatedCompositeFieldContainer[ActivatingContext]
    def __init__(self, min_activation: _Optional[float] = ..., max_activation: _Optional[float] = ..., contexts: _Optional[_Iterable[_Union[ActivatingContext, _Mapping]]] = ...) -> None: ...

class FeatureNeighbour(_message.Message):
    __slots__ = ("feature", "cosine")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    feature: int
    cosine: float
    def __init__(self, feature: _Optional[int] = ..., cosine: _Optional[float] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bin_edges", "counts")
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bin_edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ActivatingContext(_message.Message):
    __slots__ = ("tokens", "values", "max_index", "max_value")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MAX_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    max_index: int
    max_value: float
    def __init__(self, tokens: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., max_index: _Optional[int] = ..., max_value: _Optional[float] = ...) -> None: ...

class TokenEffect(_message.Message):
    __slots__ = ("token", "token_id", "logit_effect")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGIT_EFFECT_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: int
    logit_effect: float
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[int] = ..., logit_effect: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("text", "source")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    source: ExplanationSource
    def __init__(self, text: _Optional[str] = ..., source: _Optional[_Union[ExplanationSource, str]] = ...) -> None: ...

class SearchFeaturesRequest(_message.Message):
    __slots__ = ("model", "sae", "query", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    query: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchFeaturesResponse(_message.Message):
    __slots__ = ("matches",)
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[FeatureMatch]
    def __init__(self, matches: _Optional[_Iterable[_Union[FeatureMatch, _Mapping]]] = ...) -> None: ...

class FeatureMatch(_message.Message):
    __slots__ = ("feature", "score", "explanation", "top_tokens")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    TOP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    feature: FeatureRef
    score: float
    explanation: Explanation
    top_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature: _Optional[_Union[FeatureRef, _Mapping]] = ..., score: _Optional[float] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., top_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenChoice(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class AttributeRequest(_message.Message):
    __slots__ = ("model", "prompt", "target", "contrast", "saes", "top_n")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    target: TokenChoice
    contrast: TokenChoice
    saes: _containers.RepeatedScalarFieldContainer[str]
    top_n: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., target: _Optional[_Union[TokenChoice, _Mapping]] = ..., contrast: _Optional[_Union[TokenChoice, _Mapping]] = ..., saes: _Optional[_Iterable[str]] = ..., top_n: _Optional[int] = ...) -> None: ...

class AttributeResponse(_message.Message):
    __slots__ = ("tokens", "target", "contrast", "metric", "saes")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    tokens: Tokens
    target: TokenLogit
    contrast: TokenLogit
    metric: float
    saes: _containers.RepeatedCompositeFieldContainer[SaeAttribution]
    def __init__(self, tokens: _Optional[_Union[Tokens, _Mapping]] = ..., target: _Optional[_Union[TokenLogit, _Mapping]] = ..., contrast: _Optional[_Union[TokenLogit, _Mapping]] = ..., metric: _Optional[float] = ..., saes: _Optional[_Iterable[_Union[SaeAttribution, _Mapping]]] = ...) -> None: ...

class TokenLogit(_message.Message):
    __slots__ = ("token_id", "token", "logit", "probability")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logit: float
    probability: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logit: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class AttributionTerms(_message.Message):
    __slots__ = ("features", "error", "bias", "whole")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    features: float
    error: float
    bias: float
    whole: float
    def __init__(self, features: _Optional[float] = ..., error: _Optional[float] = ..., bias: _Optional[float] = ..., whole: _Optional[float] = ...) -> None: ...

class FeatureAttribution(_message.Message):
    __slots__ = ("feature", "activation", "direct_effect", "total_effect")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DIRECT_EFFECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EFFECT_FIELD_NUMBER: _ClassVar[int]
    feature: int
    activation: float
    direct_effect: float
    total_effect: float
    def __init__(self, feature: _Optional[int] = ..., activation: _Optional[float] = ..., direct_effect: _Optional[float] = ..., total_effect: _Optional[float] = ...) -> None: ...

class SaeAttribution(_message.Message):
    __slots__ = ("sae", "hook_point", "active_features", "has_direct_path", "top_direct_positive", "top_direct_negative", "top_total_positive", "top_total_negative", "direct", "total")
    SAE_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HAS_DIRECT_PATH_FIELD_NUMBER: _ClassVar[int]
    TOP_DIRECT_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    TOP_DIRECT_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    TOP_TOTAL_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    TOP_TOTAL_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    sae: str
    hook_point: str
    active_features: int
    has_direct_path: bool
    top_direct_positive: _containers.RepeatedCompositeFieldContainer[FeatureAttribution]
    top_direct_negative: _containers.RepeatedCompositeFieldContainer[FeatureAttribution]
    top_total_positive: _containers.RepeatedCompositeFieldContainer[FeatureAttribution]
    top_total_negative: _containers.RepeatedCompositeFieldContainer[FeatureAttribution]
    direct: AttributionTerms
    total: AttributionTerms
    def __init__(self, sae: _Optional[str] = ..., hook_point: _Optional[str] = ..., active_features: _Optional[int] = ..., has_direct_path: _Optional[bool] = ..., top_direct_positive: _Optional[_Iterable[_Union[FeatureAttribution, _Mapping]]] = ..., top_direct_negative: _Optional[_Iterable[_Union[FeatureAttribution, _Mapping]]] = ..., top_total_positive: _Optional[_Iterable[_Union[FeatureAttribution, _Mapping]]] = ..., top_total_negative: _Optional[_Iterable[_Union[FeatureAttribution, _Mapping]]] = ..., direct: _Optional[_Union[AttributionTerms, _Mapping]] = ..., total: _Optional[_Union[AttributionTerms, _Mapping]] = ...) -> None: ...

class AttributeFeatureRequest(_message.Message):
    __slots__ = ("model", "prompt", "sae", "feature", "position", "top_n")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    sae: str
    feature: int
    position: int
    top_n: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., sae: _Optional[str] = ..., feature: _Optional[int] = ..., position: _Optional[int] = ..., top_n: _Optional[int] = ...) -> None: ...

class AttributeFeatureResponse(_message.Message):
    __slots__ = ("tokens", "position", "pre_activation", "activation", "attributions", "top_positive", "top_negative")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PRE_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    TOP_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    tokens: Tokens
    position: int
    pre_activation: float
    activation: float
    attributions: _containers.RepeatedScalarFieldContainer[float]
    top_positive: _containers.RepeatedCompositeFieldContainer[PositionAttribution]
    top_negative: _containers.RepeatedCompositeFieldContainer[PositionAttribution]
    def __init__(self, tokens: _Optional[_Union[Tokens, _Mapping]] = ..., position: _Optional[int] = ..., pre_activation: _Optional[float] = ..., activation: _Optional[float] = ..., attributions: _Optional[_Iterable[float]] = ..., top_positive: _Optional[_Iterable[_Union[PositionAttribution, _Mapping]]] = ..., top_negative: _Optional[_Iterable[_Union[PositionAttribution, _Mapping]]] = ...) -> None: ...

class PositionAttribution(_message.Message):
    __slots__ = ("position", "token", "attribution")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    position: int
    token: str
    attribution: float
    def __init__(self, position: _Optional[int] = ..., token: _Optional[str] = ..., attribution: _Optional[float] = ...) -> None: ...

class InspectFeaturesRequest(_message.Message):
    __slots__ = ("model", "text", "messages", "saes", "order_by", "top_n", "max_positions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    saes: _containers.RepeatedScalarFieldContainer[str]
    order_by: ActivityOrder
    top_n: int
    max_positions: int
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., saes: _Optional[_Iterable[str]] = ..., order_by: _Optional[_Union[ActivityOrder, str]] = ..., top_n: _Optional[int] = ..., max_positions: _Optional[int] = ...) -> None: ...

class InspectFeaturesResponse(_message.Message):
    __slots__ = ("tokens", "saes")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    tokens: Tokens
    saes: _containers.RepeatedCompositeFieldContainer[SaeActivity]
    def __init__(self, tokens: _Optional[_Union[Tokens, _Mapping]] = ..., saes: _Optional[_Iterable[_Union[SaeActivity, _Mapping]]] = ...) -> None: ...

class SaeActivity(_message.Message):
    __slots__ = ("sae", "hook_point", "active_features", "features")
    SAE_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    sae: str
    hook_point: str
    active_features: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureActivity]
    def __init__(self, sae: _Optional[str] = ..., hook_point: _Optional[str] = ..., active_features: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureActivity, _Mapping]]] = ...) -> None: ...

class FeatureActivity(_message.Message):
    __slots__ = ("feature", "count", "max_activation", "max_position", "sum_activation", "mean_over_tokens", "mean_over_active", "positions", "values")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_FIELD_NUMBER: _ClassVar[int]
    SUM_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVER_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    feature: int
    count: int
    max_activation: float
    max_position: int
    sum_activation: float
    mean_over_tokens: float
    mean_over_active: float
    positions: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, feature: _Optional[int] = ..., count: _Optional[int] = ..., max_activation: _Optional[float] = ..., max_position: _Optional[int] = ..., sum_activation: _Optional[float] = ..., mean_over_tokens: _Optional[float] = ..., mean_over_active: _Optional[float] = ..., positions: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ContrastFeaturesRequest(_message.Message):
    __slots__ = ("model", "texts_a", "texts_b", "saes", "unit", "order_by", "top_n")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_A_FIELD_NUMBER: _ClassVar[int]
    TEXTS_B_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts_a: _containers.RepeatedScalarFieldContainer[str]
    texts_b: _containers.RepeatedScalarFieldContainer[str]
    saes: _containers.RepeatedScalarFieldContainer[str]
    unit: ContrastUnit
    order_by: ContrastOrder
    top_n: int
    def __init__(self, model: _Optional[str] = ..., texts_a: _Optional[_Iterable[str]] = ..., texts_b: _Optional[_Iterable[str]] = ..., saes: _Optional[_Iterable[str]] = ..., unit: _Optional[_Union[ContrastUnit, str]] = ..., order_by: _Optional[_Union[ContrastOrder, str]] = ..., top_n: _Optional[int] = ...) -> None: ...

class ContrastFeaturesResponse(_message.Message):
    __slots__ = ("saes",)
    SAES_FIELD_NUMBER: _ClassVar[int]
    saes: _containers.RepeatedCompositeFieldContainer[SaeContrast]
    def __init__(self, saes: _Optional[_Iterable[_Union[SaeContrast, _Mapping]]] = ...) -> None: ...

class SaeContrast(_message.Message):
    __slots__ = ("sae", "hook_point", "samples_a", "samples_b", "active_features", "more_in_a", "more_in_b")
    SAE_FIELD_NUMBER: _ClassVar[int]
    HOOK_POINT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_A_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_B_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MORE_IN_A_FIELD_NUMBER: _ClassVar[int]
    MORE_IN_B_FIELD_NUMBER: _ClassVar[int]
    sae: str
    hook_point: str
    samples_a: int
    samples_b: int
    active_features: int
    more_in_a: _containers.RepeatedCompositeFieldContainer[FeatureContrast]
    more_in_b: _containers.RepeatedCompositeFieldContainer[FeatureContrast]
    def __init__(self, sae: _Optional[str] = ..., hook_point: _Optional[str] = ..., samples_a: _Optional[int] = ..., samples_b: _Optional[int] = ..., active_features: _Optional[int] = ..., more_in_a: _Optional[_Iterable[_Union[FeatureContrast, _Mapping]]] = ..., more_in_b: _Optional[_Iterable[_Union[FeatureContrast, _Mapping]]] = ...) -> None: ...

class FeatureContrast(_message.Message):
    __slots__ = ("feature", "mean_a", "mean_b", "mean_diff", "auroc", "cohens_d", "active_fraction_a", "active_fraction_b")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    MEAN_A_FIELD_NUMBER: _ClassVar[int]
    MEAN_B_FIELD_NUMBER: _ClassVar[int]
    MEAN_DIFF_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    COHENS_D_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FRACTION_A_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FRACTION_B_FIELD_NUMBER: _ClassVar[int]
    feature: int
    mean_a: float
    mean_b: float
    mean_diff: float
    auroc: float
    cohens_d: float
    active_fraction_a: float
    active_fraction_b: float
    def __init__(self, feature: _Optional[int] = ..., mean_a: _Optional[float] = ..., mean_b: _Optional[float] = ..., mean_diff: _Optional[float] = ..., auroc: _Optional[float] = ..., cohens_d: _Optional[float] = ..., active_fraction_a: _Optional[float] = ..., active_fraction_b: _Optional[float] = ...) -> None: ...
