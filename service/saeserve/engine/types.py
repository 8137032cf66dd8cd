"""Typed inputs and outputs of the engine; the server converts protobuf to and from these.

Arrays returned to callers are numpy (already on the host, already small: top-k and the
requested dense features, never the full [tokens x d_sae] latent tensor).

Generate's request types validate themselves (``validate``) against ``GenerateLimits``:
every check that needs no model lives here, once, and the transports only map fields and
call it; checks that need the model or its SAEs (prompt length, SAE ids, feature ranges)
run when the generator takes the request. A message starts with the field path under the
``field`` it is given (the server passes the proto's, ``generate``), then the value and
the limit: ``generate.sampling.max_new_tokens: 600 > limit 512``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

import numpy as np

from saeserve.errors import InvalidArgument


# --- tokenization -------------------------------------------------------------------
@dataclass
class Tokenization:
    token_ids: list[int]
    tokens: list[str]
    """Each token's text (decoded on its own; byte-level tokens may be partial characters)."""
    offsets: list[tuple[int, int]]
    """(start, end) byte offsets of each token in the UTF-8 encoded input."""


# --- decomposition ------------------------------------------------------------------
@dataclass
class DecomposeRequest:
    texts: list[str]
    sae_ids: list[str] = field(default_factory=list)
    """SAEs to run; empty means every SAE loaded for the model."""
    top_k: int = 16
    """Features reported per token (at most the SAE's k for TopK SAEs is not required)."""
    feature_ids: list[int] = field(default_factory=list)
    """Features whose activations are reported densely for every token."""
    include_reconstruction: bool = True
    """Report per-token normalized MSE and per-text explained variance."""


@dataclass
class SaeDecomposition:
    sae_id: str
    hook_point: str
    top_ids: np.ndarray
    """[n_tokens, top_k] int32, strongest first."""
    top_values: np.ndarray
    """[n_tokens, top_k] float32."""
    dense_values: np.ndarray
    """[n_tokens, len(feature_ids)] float32."""
    token_mse: np.ndarray | None
    """[n_tokens] float32: |x - x_hat|^2 / |x - mean_text(x)|^2 per token, or None."""
    explained_variance: float | None
    """1 - sum|x - x_hat|^2 / sum|x - mean_text(x)|^2 over the text's tokens, or None."""


@dataclass
class TextDecomposition:
    tokenization: Tokenization
    saes: list[SaeDecomposition]


@dataclass
class DecomposeResult:
    texts: list[TextDecomposition]
    n_tokens: int
    """Real (unpadded) tokens run through the model."""
    sae_seconds: float
    """Wall time spent in SAE encode/decode inside the forward (for metrics)."""


# --- limits ---------------------------------------------------------------------------
class GenerateLimits(Protocol):
    """The per-request limits a Generate request is checked against (the server's
    ``Limits`` has these fields; ``EngineLimits`` holds the engine's own defaults)."""

    max_new_tokens: int
    max_stop_strings: int
    max_stop_string_bytes: int
    max_interventions: int
    max_abs_intervention_value: float
    max_tracked_features: int
    max_top_logprobs: int
    max_stop_conditions: int
    generate_memory_bytes: int


DEFAULT_GENERATE_MEMORY_BYTES = 4 << 30
"""A replica's generation batch budget (KV cache, prefill, steering encode): 4 GiB."""


@dataclass
class EngineLimits:
    """``GenerateLimits`` for the engine used without a server."""

    max_new_tokens: int = 1024
    max_stop_strings: int = 64
    max_stop_string_bytes: int = 1024
    max_interventions: int = 256
    max_abs_intervention_value: float = math.inf
    max_tracked_features: int = 256
    max_top_logprobs: int = 20
    max_stop_conditions: int = 64
    generate_memory_bytes: int = DEFAULT_GENERATE_MEMORY_BYTES


def at_most(value: float, limit: float, where: str) -> None:
    """Raise InvalidArgument("where: value > limit limit") when value exceeds limit."""
    if value > limit:
        raise InvalidArgument(f"{where}: {value} > limit {limit}")


def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


# --- interventions --------------------------------------------------------------------
class InterventionMode(StrEnum):
    ADD = "add"  # h += value * d_f
    CLAMP = "clamp"  # h += (value - a_f) * d_f
    SCALE = "scale"  # h += (value - 1) * a_f * d_f
    ABLATE = "ablate"  # h -= a_f * d_f
    VECTOR = "vector"  # h += value * v
    CLAMP_THRESHOLD = "clamp_threshold"  # CLAMP with a_f ~ relu(pre_f) where pre_f > threshold


class PositionKind(StrEnum):
    ALL = "all"
    PROMPT = "prompt"
    GENERATED = "generated"
    INDICES = "indices"  # explicit prompt token indices


@dataclass
class FeatureCondition:
    """Holds at a token when feature ``feature`` of SAE ``sae_id`` is above ``threshold``
    there (below it with ``below``); the activation read is the SAE's own of the activation
    arriving at its hook point in that forward (``engine.interventions``, "Conditions")."""

    sae_id: str
    feature: int
    threshold: float
    below: bool = False

    def validate(self, where: str) -> None:
        if not math.isfinite(self.threshold):
            raise InvalidArgument(f"{where}.threshold: must be finite, got {self.threshold}")


@dataclass
class Intervention:
    mode: InterventionMode
    value: float
    sae_id: str = ""
    """The SAE whose feature is steered; empty for VECTOR."""
    feature: int = -1
    """Feature id for ADD/CLAMP/SCALE/ABLATE."""
    hook_point: str = ""
    """Hook point for VECTOR (any alias); SAE interventions use the SAE's hook point."""
    vector: list[float] | None = None
    """Raw direction of size d_in for VECTOR."""
    normalize: bool = False
    """ADD/VECTOR: use the unit direction instead of the raw decoder row / vector."""
    positions: PositionKind = PositionKind.ALL
    indices: list[int] = field(default_factory=list)
    """Prompt token indices when positions is INDICES."""
    condition: FeatureCondition | None = None
    """Apply only at the tokens (of those ``positions`` selects) where this holds."""
    threshold: float = 0.0
    """CLAMP_THRESHOLD: the pre-activation above which the feature counts as active."""

    def validate(self, limits: GenerateLimits, where: str) -> None:
        """The checks that need no model (``where`` is this intervention's field path)."""
        try:
            InterventionMode(self.mode)
        except ValueError:
            raise InvalidArgument(f"{where}.mode: unknown mode {self.mode!r}") from None
        try:
            positions = PositionKind(self.positions)
        except ValueError:
            raise InvalidArgument(f"{where}.positions: unknown value {self.positions!r}") from None
        if not math.isfinite(self.value):
            raise InvalidArgument(f"{where}.value: must be finite, got {self.value}")
        at_most(abs(self.value), limits.max_abs_intervention_value, f"{where}.value (absolute)")
        if not math.isfinite(self.threshold):
            raise InvalidArgument(f"{where}.threshold: must be finite, got {self.threshold}")
        at_most(
            abs(self.threshold), limits.max_abs_intervention_value, f"{where}.threshold (absolute)"
        )
        if self.threshold and self.mode != InterventionMode.CLAMP_THRESHOLD:
            raise InvalidArgument(f"{where}.threshold: only for CLAMP_THRESHOLD, not {self.mode}")
        if positions is PositionKind.INDICES and not self.indices:
            raise InvalidArgument(f"{where}.indices: positions INDICES needs at least one index")
        if positions is not PositionKind.INDICES and self.indices:
            raise InvalidArgument(
                f"{where}.indices: only allowed with positions INDICES, got {positions}"
            )
        if self.condition is not None:
            self.condition.validate(f"{where}.condition")


# --- generation -----------------------------------------------------------------------
@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k cut."""
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    """Generate past end-of-sequence tokens, until max_new_tokens or a stop string."""

    def validate(self, limits: GenerateLimits, where: str = "sampling") -> None:
        if self.max_new_tokens < 1:
            raise InvalidArgument(f"{where}.max_new_tokens: {self.max_new_tokens} must be >= 1")
        at_most(self.max_new_tokens, limits.max_new_tokens, f"{where}.max_new_tokens")
        at_most(len(self.stop), limits.max_stop_strings, f"{where}.stop (count)")
        for i, s in enumerate(self.stop):
            if not s:
                raise InvalidArgument(f"{where}.stop[{i}]: must not be empty")
            at_most(len(s.encode()), limits.max_stop_string_bytes, f"{where}.stop[{i}] (bytes)")
        t, p = self.temperature, self.top_p
        if not (math.isfinite(t) and 0 <= t <= 100):
            raise InvalidArgument(f"{where}.temperature: {t} must be in [0, 100]")
        if not (math.isfinite(p) and 0 < p <= 1):
            raise InvalidArgument(f"{where}.top_p: {p} must be in (0, 1]")
        if self.top_k < 0:
            raise InvalidArgument(f"{where}.top_k: {self.top_k} must be >= 0 (0 = no cut)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidArgument(f"{where}.seed: {self.seed} must be in [0, 2^63)")


@dataclass
class TrackedFeature:
    sae_id: str
    feature: int


@dataclass
class GenerateRequest:
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    interventions: list[Intervention] = field(default_factory=list)
    include_baseline: bool = False
    """Also run the prompt unsteered with the same seed, as its own variant."""
    track: list[TrackedFeature] = field(default_factory=list)
    """Features whose activation is reported for every generated token."""
    logprobs: bool = False
    top_logprobs: int = 0
    """With logprobs: also report this many most likely tokens per step."""
    kl_from_baseline: bool = False
    """With include_baseline: report at each step KL(steered || baseline) of the two
    variants' next-token distributions (how far steering moved the model)."""
    stop_conditions: list[FeatureCondition] = field(default_factory=list)
    """Each variant (the baseline too) finishes (``FinishReason.CONDITION``) at the first
    step whose input position satisfies any of these."""

    def validate(self, limits: GenerateLimits, where: str = "") -> None:
        """Every check that needs no model; the prompt is the generator's to check."""
        at_most(
            len(self.interventions), limits.max_interventions, _path(where, "interventions (count)")
        )
        at_most(len(self.track), limits.max_tracked_features, _path(where, "track (count)"))
        top_logprobs = _path(where, "top_logprobs")
        if self.top_logprobs < 0:
            raise InvalidArgument(f"{top_logprobs}: {self.top_logprobs} must be >= 0")
        at_most(self.top_logprobs, limits.max_top_logprobs, top_logprobs)
        if self.top_logprobs and not self.logprobs:
            raise InvalidArgument(f"{top_logprobs}: needs logprobs to be true")
        if self.kl_from_baseline and not self.include_baseline:
            raise InvalidArgument(
                f"{_path(where, 'kl_from_baseline')}: needs include_baseline to be true"
            )
        at_most(
            len(self.stop_conditions),
            limits.max_stop_conditions,
            _path(where, "stop_conditions (count)"),
        )
        self.sampling.validate(limits, _path(where, "sampling"))
        for i, iv in enumerate(self.interventions):
            iv.validate(limits, _path(where, f"interventions[{i}]"))
        for i, c in enumerate(self.stop_conditions):
            c.validate(_path(where, f"stop_conditions[{i}]"))


class Variant(StrEnum):
    STEERED = "steered"
    BASELINE = "baseline"


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"  # a stop string matched
    EOS = "eos"
    CONDITION = "condition"  # a stop condition held


@dataclass
class TokenEvent:
    """One generated token of one variant of one request, as streamed."""

    request_id: int
    variant: Variant
    token_id: int
    text: str
    """Text delta this token adds (may be empty while a UTF-8 character is incomplete)."""
    logprob: float | None
    tracked: list[float]
    """Activations of the request's tracked features at this token, in request order."""
    finish_reason: FinishReason | None = None
    """Set on the last event of the variant."""
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    """The request's top_logprobs most likely (token id, logprob) at this step."""
    kl_from_baseline: float | None = None
    """STEERED events of a request asking for it, while its baseline also runs:
    KL(steered || baseline) in nats of the two variants' next-token distributions at
    this step (each given its own tokens so far; before temperature)."""
    stop_condition: int | None = None
    """With finish reason CONDITION: the index in the request's stop_conditions of the
    (first) one that held."""
    stop_activation: float | None = None
    """With finish reason CONDITION: that condition's feature activation."""


# --- feature math -------------------------------------------------------------------
class TokenEffect(NamedTuple):
    """A token and the logit change one unit of a feature's activation causes for it."""

    token: str
    effect: float
    token_id: int


@dataclass
class LogitEffects:
    """The n most promoted and most suppressed tokens of each of F features (host arrays).

    Row i belongs to the i-th feature asked for; n is 0 for an SAE whose width is not the
    model's (no direct path to the unembedding).
    """

    promoted_ids: np.ndarray
    """[F, n] int64 token ids, largest effect first."""
    promoted: np.ndarray
    """[F, n] float32 effects of ``promoted_ids``."""
    suppressed_ids: np.ndarray
    """[F, n] int64 token ids, most negative effect first."""
    suppressed: np.ndarray
    """[F, n] float32 effects of ``suppressed_ids``."""


class FeatureNeighbour(NamedTuple):
    """Another feature of the same SAE and its cosine similarity with the one asked about."""

    feature: int
    cosine: float


@dataclass
class FeatureNeighbours:
    """A feature's nearest features by decoder-row and by encoder-column cosine."""

    decoder: list[FeatureNeighbour]
    """By cosine of ``W_dec[g]`` with ``W_dec[f]``, largest first (ties: lower id first)."""
    encoder: list[FeatureNeighbour]
    """By cosine of ``W_enc[:, g]`` with ``W_enc[:, f]``, the same order."""
