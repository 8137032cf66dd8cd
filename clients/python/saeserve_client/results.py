"""Typed values the client returns (and the ``Steer`` intervention it accepts).

Plain dataclasses with numpy arrays where the server sends per-token matrices: a
``SaeDecomposition``'s ``top_ids`` / ``top_values`` are ``[n_tokens, top_k]`` and its
``dense`` is ``[n_tokens, len(feature_ids)]``, reshaped from the packed row-major
arrays of the wire format. Enums become lower-case strings (``"topk"``, ``"steered"``,
``"length"``); float32 scalars are the shortest decimal that reads back as the same
float32. Nothing here knows about gRPC; ``convert`` builds these from protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------------------------------
# ListModels / Tokenize


@dataclass(frozen=True)
class SaeInfo:
    """An SAE hooked into a model. ``architecture`` is "topk", "jumprelu" or "relu"."""

    id: str
    hook_point: str
    d_in: int
    d_sae: int
    architecture: str
    k: int  # active features per token for topk SAEs, else 0
    has_feature_index: bool
    dtype: str = ""  # the weights' dtype: "float32", "bfloat16" or "float16"
    weight_bytes: int = 0  # bytes of the weights in that dtype (all shards together)
    shards: int = 1  # latent-range shards serving it (1: held whole)


@dataclass(frozen=True)
class ModelInfo:
    """A served model and its SAEs; the first model a server lists is its default."""

    name: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int
    max_positions: int
    dtype: str
    saes: tuple[SaeInfo, ...]
    has_chat_template: bool

    def sae(self, sae_id: str) -> SaeInfo:
        for info in self.saes:
            if info.id == sae_id:
                return info
        raise KeyError(f"model {self.name!r} has no SAE {sae_id!r}")


@dataclass(frozen=True, eq=False)
class Tokens:
    """A tokenized text: ``ids`` [n] int32, ``strings`` [n], ``offsets`` [n, 2] int32 byte
    ranges ``[start, end)`` into the UTF-8 text (start == end for BOS)."""

    ids: npt.NDArray[np.int32]
    strings: list[str]
    offsets: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.strings)


# ---------------------------------------------------------------------------------------
# Decompose


@dataclass(frozen=True, eq=False)
class SaeDecomposition:
    """One SAE's view of one text (n = the text's token count).

    ``top_ids`` / ``top_values``: [n, top_k] strongest features per token, strongest
    first (zeros beyond a topk SAE's k). ``dense``: [n, len(feature_ids)] activations of
    the requested ``feature_ids``. ``token_mse``: [n] normalized reconstruction error and
    ``explained_variance`` for the text, both None when reconstruction was not asked.
    """

    sae: str
    hook_point: str
    top_k: int
    top_ids: npt.NDArray[np.int32]
    top_values: npt.NDArray[np.float32]
    feature_ids: npt.NDArray[np.int32]
    dense: npt.NDArray[np.float32]
    token_mse: npt.NDArray[np.float32] | None
    explained_variance: float | None

    def top_features(self, token: int) -> list[tuple[int, float]]:
        """Token ``token``'s non-zero ``(feature, value)`` pairs, strongest first."""
        pairs = zip(self.top_ids[token], self.top_values[token], strict=True)
        # str() of a float32 is its shortest form: 8.1, not 8.100000381469727
        return [(int(f), float(str(v))) for f, v in pairs if v != 0.0]

    def feature_values(self, feature: int) -> npt.NDArray[np.float32]:
        """[n] activations of a feature asked for in ``feature_ids``."""
        where = np.flatnonzero(self.feature_ids == feature)
        if where.size == 0:
            raise KeyError(f"feature {feature} was not in the request's feature_ids")
        return self.dense[:, int(where[0])]


@dataclass(frozen=True, eq=False)
class TextDecomposition:
    """One text's decomposition: its tokens and, per SAE id (request order), the features."""

    text: str
    tokens: list[str]
    token_ids: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int32]  # [n, 2] UTF-8 byte ranges
    saes: dict[str, SaeDecomposition]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, sae_id: str) -> SaeDecomposition:
        return self.saes[sae_id]


# ---------------------------------------------------------------------------------------
# Generate


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class TokenLogprob:
    """A candidate token at one step with its natural-log probability."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, eq=False)
class GenerateChunk:
    """One streamed token of one variant ("steered" or "baseline").

    ``finish_reason`` ("length", "stop", "eos", "cancelled", "condition") and ``usage`` are
    set on a variant's last chunk only; a "cancelled" final chunk carries no token (id -1);
    a "condition" one says which of the request's ``stop_conditions`` held
    (``stop_condition``, its index) and the feature's activation (``stop_activation``).
    ``tracked`` holds the tracked features' activations in request order;
    ``top_logprobs`` the step's most likely tokens when the request asked for them.
    """

    variant: str
    index: int
    token_id: int
    text: str
    logprob: float | None
    tracked: npt.NDArray[np.float32]
    finish_reason: str | None
    usage: Usage | None
    top_logprobs: list[TokenLogprob] = field(default_factory=list)
    kl_from_baseline: float | None = None
    """STEERED chunks with ``kl_from_baseline=True``: KL(steered || baseline) in nats at
    this step, while the baseline still runs."""
    stop_condition: int | None = None
    stop_activation: float | None = None

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, eq=False)
class Generation:
    """A variant's whole continuation, gathered from its chunks by ``collect``."""

    variant: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    tracked: npt.NDArray[np.float32]  # [n_chunks, len(track)]
    finish_reason: str | None
    usage: Usage | None
    stop_condition: int | None = None
    """With finish_reason "condition": the index of the stop condition that held."""


def collect(chunks: Iterable[GenerateChunk]) -> dict[str, Generation]:
    """Gather a (finished) Generate stream into one ``Generation`` per variant."""
    grouped: dict[str, list[GenerateChunk]] = {}
    for chunk in chunks:
        grouped.setdefault(chunk.variant, []).append(chunk)
    out: dict[str, Generation] = {}
    for variant, items in grouped.items():
        final = items[-1] if items[-1].is_final else None
        with_token = [c for c in items if c.token_id >= 0]
        width = len(items[0].tracked)
        tracked = (
            np.stack([c.tracked for c in items]) if width else np.zeros((len(items), 0), np.float32)
        )
        out[variant] = Generation(
            variant=variant,
            text="".join(c.text for c in items),
            token_ids=[c.token_id for c in with_token],
            logprobs=[c.logprob for c in with_token if c.logprob is not None],
            tracked=tracked.astype(np.float32),
            finish_reason=final.finish_reason if final else None,
            usage=final.usage if final else None,
            stop_condition=final.stop_condition if final else None,
        )
    return out


# ---------------------------------------------------------------------------------------
# GetFeature / SearchFeatures


@dataclass(frozen=True)
class Explanation:
    """A feature's label; ``source`` is "imported", "generated" or "unspecified"."""

    text: str
    source: str


@dataclass(frozen=True, eq=False)
class Histogram:
    bin_edges: npt.NDArray[np.float32]  # [n_bins + 1]
    counts: npt.NDArray[np.int64]  # [n_bins]


@dataclass(frozen=True, eq=False)
class ActivatingContext:
    """A window of tokens around one of the feature's strongest activations."""

    tokens: list[str]
    values: npt.NDArray[np.float32]  # [len(tokens)]
    max_index: int
    max_value: float


@dataclass(frozen=True, eq=False)
class QuantileSamples:
    """Contexts sampled from one band of a feature's activations, below the top ones."""

    min_activation: float
    max_activation: float
    contexts: list[ActivatingContext]  # strongest first


@dataclass(frozen=True)
class FeatureNeighbour:
    """Another feature of the same SAE and its cosine similarity with this one."""

    feature: int
    cosine: float


@dataclass(frozen=True)
class TokenEffect:
    token: str
    token_id: int
    logit_effect: float


@dataclass(frozen=True, eq=False)
class Feature:
    """Everything the server knows about one feature (GetFeature).

    Without a feature index (``has_statistics`` false) only ``top_promoted`` and
    ``top_suppressed`` are filled; ``histogram`` and ``explanation`` may be None.
    """

    sae: str
    feature: int
    has_statistics: bool
    density: float
    max_activation: float
    mean_activation: float
    tokens_indexed: int
    histogram: Histogram | None
    top_contexts: list[ActivatingContext]
    top_promoted: list[TokenEffect]
    top_suppressed: list[TokenEffect]
    explanation: Explanation | None
    quantiles: list[QuantileSamples]
    """Sampled contexts below the top ones, highest band first (empty without an index)."""
    decoder_neighbours: list[FeatureNeighbour]
    """Nearest features by decoder-row cosine, largest first."""
    encoder_neighbours: list[FeatureNeighbour]
    """Nearest features by encoder-column cosine, largest first."""


@dataclass(frozen=True)
class FeatureMatch:
    """A SearchFeatures hit; ``score`` is comparable within one response only."""

    sae: str
    feature: int
    score: float
    explanation: Explanation | None
    top_tokens: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# InspectFeatures / ContrastFeatures


@dataclass(frozen=True, eq=False)
class FeatureActivity:
    """One feature over a whole inspected text: ``count`` active tokens, its max (at
    ``max_position``), sum, mean over all tokens and over the active ones, and its first
    active ``positions`` [<= max_positions] with their ``values``."""

    feature: int
    count: int
    max_activation: float
    max_position: int
    sum_activation: float
    mean_over_tokens: float
    mean_over_active: float
    positions: npt.NDArray[np.int32]
    values: npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class SaeActivity:
    """One SAE's top features over an inspected text, best first by the request's order."""

    sae: str
    hook_point: str
    active_features: int
    """Distinct features active at one token or more."""
    features: list[FeatureActivity]


@dataclass(frozen=True, eq=False)
class Inspection:
    """An InspectFeatures result: the tokens (for chat messages, the template's, with zero
    byte offsets) and, per SAE id, its ``SaeActivity``."""

    tokens: Tokens
    saes: dict[str, SaeActivity]

    def __getitem__(self, sae_id: str) -> SaeActivity:
        return self.saes[sae_id]


@dataclass(frozen=True)
class FeatureContrast:
    """One feature over the samples of set A and set B: means, ``mean_diff`` (A - B),
    ``auroc`` (P(a > b) + P(a = b) / 2), Cohen's d (None where the pooled standard
    deviation is 0) and the fraction of each set's samples where it is active."""

    feature: int
    mean_a: float
    mean_b: float
    mean_diff: float
    auroc: float
    cohens_d: float | None
    active_fraction_a: float
    active_fraction_b: float


@dataclass(frozen=True)
class SaeContrast:
    """A ContrastFeatures result for one SAE: samples per set (tokens, or texts for
    ``unit="text_max"``) and the top features each way."""

    sae: str
    hook_point: str
    samples_a: int
    samples_b: int
    active_features: int
    more_in_a: list[FeatureContrast]
    more_in_b: list[FeatureContrast]


# ---------------------------------------------------------------------------------------
# Steering (a request value, kept beside the results so one import has every type)

MODES = ("add", "clamp", "scale", "ablate", "vector", "clamp_threshold")
POSITION_NAMES = ("all", "prompt", "generated")


CONDITION_OPS = ("above", "below")


@dataclass(frozen=True)
class Condition:
    """A test on one feature at one token: its activation ``above`` (``>``) or ``below``
    (``<``) ``threshold``. Steers only there (``Steer.when``), or stops a variant where it
    holds (``stop_conditions=``). The activation is the SAE's own of the activation arriving
    at its hook point (after steering at earlier points, before steering at its own)."""

    sae: str
    feature: int
    threshold: float = 0.0
    op: str = "above"

    def __post_init__(self) -> None:
        if self.op not in CONDITION_OPS:
            raise ValueError(f"condition op must be 'above' or 'below', got {self.op!r}")

    @classmethod
    def above(cls, sae: str, feature: int, threshold: float = 0.0) -> Condition:
        """Holds where the feature's activation is > threshold (0: wherever it is active)."""
        return cls(sae, feature, threshold, "above")

    @classmethod
    def below(cls, sae: str, feature: int, threshold: float) -> Condition:
        """Holds where the feature's activation is < threshold."""
        return cls(sae, feature, threshold, "below")


@dataclass(frozen=True)
class Steer:
    """One intervention of a Generate call; build it with the class methods.

    ``positions`` is "all", "prompt", "generated", or a sequence of prompt token indices.
    Semantics (see DESIGN.md, "Steering semantics"): ``add`` h += value * d_f; ``clamp``
    pins the feature at value; ``scale`` multiplies it by value; ``ablate`` removes it;
    ``vector`` adds value * a raw direction at a hook point; ``clamp_threshold`` is an
    approximate clamp that counts the feature active where its own pre-activation exceeds
    ``threshold`` instead of testing TopK membership (cheap on very wide TopK SAEs).
    ``when(condition)`` limits it to the tokens where a ``Condition`` holds (its SAE hooked
    at the steered point or an earlier one).
    """

    mode: str
    sae: str = ""
    feature: int = 0
    value: float = 0.0
    hook_point: str = ""
    direction: tuple[float, ...] = ()  # vector mode: the raw direction, d_model floats
    normalize: bool = False
    positions: str | tuple[int, ...] = "all"
    condition: Condition | None = None
    threshold: float = 0.0  # clamp_threshold mode: the pre-activation it counts as active above

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"steer mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if isinstance(self.positions, str):
            if self.positions not in POSITION_NAMES:
                raise ValueError(
                    f"positions must be one of {', '.join(POSITION_NAMES)} or token indices"
                )
        else:
            object.__setattr__(self, "positions", tuple(int(i) for i in self.positions))

    def when(self, condition: Condition) -> Steer:
        """This intervention, applied only at the tokens where ``condition`` holds."""
        return replace(self, condition=condition)

    @classmethod
    def add(
        cls,
        sae: str,
        feature: int,
        value: float,
        *,
        normalize: bool = False,
        positions: str | Sequence[int] = "all",
    ) -> Steer:
        return cls("add", sae, feature, value, normalize=normalize, positions=_pos(positions))

    @classmethod
    def clamp(
        cls, sae: str, feature: int, value: float, *, positions: str | Sequence[int] = "all"
    ) -> Steer:
        return cls("clamp", sae, feature, value, positions=_pos(positions))

    @classmethod
    def clamp_threshold(
        cls,
        sae: str,
        feature: int,
        value: float,
        threshold: float = 0.0,
        *,
        positions: str | Sequence[int] = "all",
    ) -> Steer:
        """Approximate clamp: the feature counts as active (at its pre-activation) where
        that exceeds ``threshold``; no TopK membership test (see the proto's
        INTERVENTION_MODE_CLAMP_THRESHOLD)."""
        return cls(
            "clamp_threshold", sae, feature, value, threshold=threshold, positions=_pos(positions)
        )

    @classmethod
    def scale(
        cls, sae: str, feature: int, factor: float, *, positions: str | Sequence[int] = "all"
    ) -> Steer:
        return cls("scale", sae, feature, factor, positions=_pos(positions))

    @classmethod
    def ablate(cls, sae: str, feature: int, *, positions: str | Sequence[int] = "all") -> Steer:
        return cls("ablate", sae, feature, 0.0, positions=_pos(positions))

    @classmethod
    def vector(
        cls,
        hook_point: str,
        values: Sequence[float] | npt.ArrayLike,
        value: float = 1.0,
        *,
        normalize: bool = False,
        positions: str | Sequence[int] = "all",
    ) -> Steer:
        direction = tuple(float(x) for x in np.asarray(values, dtype=np.float64).ravel())
        return cls(
            "vector",
            value=value,
            hook_point=hook_point,
            direction=direction,
            normalize=normalize,
            positions=_pos(positions),
        )


def _pos(positions: str | Sequence[int]) -> str | tuple[int, ...]:
    return positions if isinstance(positions, str) else tuple(int(i) for i in positions)


# ---------------------------------------------------------------------------------------
# Attribute / AttributeFeature


@dataclass(frozen=True)
class TokenLogit:
    """A next token at the prompt's last position: its logit and probability."""

    token_id: int
    token: str
    logit: float
    probability: float


@dataclass(frozen=True)
class FeatureAttribution:
    """One active feature's contributions to the explained metric (see ``Attribution``)."""

    feature: int
    activation: float
    direct_effect: float
    """Through the residual stream straight to the unembedding (frozen final norm)."""
    total_effect: float
    """Activation x gradient through every later block."""


@dataclass(frozen=True)
class AttributionTerms:
    """How one measure splits: ``features + error + bias == whole``."""

    features: float
    error: float
    bias: float
    whole: float


@dataclass(frozen=True)
class SaeAttribution:
    """One SAE's features at the prompt's last token, ranked four ways (top_n each)."""

    sae: str
    hook_point: str
    active_features: int
    has_direct_path: bool
    top_direct_positive: list[FeatureAttribution]
    top_direct_negative: list[FeatureAttribution]
    top_total_positive: list[FeatureAttribution]
    top_total_negative: list[FeatureAttribution]
    direct: AttributionTerms
    total: AttributionTerms


@dataclass(frozen=True, eq=False)
class Attribution:
    """Which features drove the next token (Attribute): ``metric`` is the target's logit,
    less the contrast's when one was given; ``saes`` in request order."""

    tokens: Tokens
    target: TokenLogit
    contrast: TokenLogit | None
    metric: float
    saes: list[SaeAttribution]

    def __getitem__(self, sae: str) -> SaeAttribution:
        for s in self.saes:
            if s.sae == sae:
                return s
        raise KeyError(f"no SAE {sae!r} in this attribution (has {[s.sae for s in self.saes]})")


@dataclass(frozen=True)
class PositionAttribution:
    position: int
    token: str
    attribution: float


@dataclass(frozen=True, eq=False)
class FeatureInputAttribution:
    """Which earlier tokens drove a feature at ``position`` (AttributeFeature):
    ``attributions`` [position + 1] gradient x input per position."""

    tokens: Tokens
    position: int
    pre_activation: float
    activation: float
    attributions: npt.NDArray[np.float32]
    top_positive: list[PositionAttribution]
    top_negative: list[PositionAttribution]
