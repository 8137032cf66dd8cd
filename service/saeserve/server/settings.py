"""Server settings: one pydantic-settings object, from defaults, a YAML file, env, flags.

``ServerSettings.load(config_file, **overrides)`` layers, lowest to highest priority:
field defaults (the built-in demo model and its SAEs), the YAML file (``config_file``, or
the file named by ``SAESERVE_CONFIG``), environment variables ``SAESERVE_<FIELD>`` with
``__`` between nested names (``SAESERVE_GRPC_PORT=9001``,
``SAESERVE_LIMITS__MAX_TOP_K=64``, ``SAESERVE_API_KEYS=key1,key2``), and keyword
overrides (what the ``saeserve serve`` flags parsed to). Nested values merge: a file that
sets one limit keeps the others' defaults. ``Limits`` are the per-request bounds the API
documents in protos/saeserve/v1/saeserve.proto as "limits.NAME (default N)"; a test keeps
the two in step. API keys are ``SecretStr`` so they never show in a repr or a log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from saeserve.engine.types import DEFAULT_GENERATE_MEMORY_BYTES
from saeserve.sae.ids import default_sae_id

DEMO_DATA = Path(__file__).resolve().parent.parent / "demo" / "data"
"""Folder of the built-in demo: ``model/`` (a causal LM folder) and ``saes/<id>/``."""

CONFIG_FILE_ENV = "SAESERVE_CONFIG"
"""Environment variable naming a YAML settings file when ``load`` is given none."""

_config_file: ContextVar[Path | None] = ContextVar("saeserve_config_file", default=None)


class SaeSharding(BaseModel):
    """An SAE split by latent range into shards, each its own Ray Serve deployment
    (``Shard_<model>_<sae>_<i>``, docs/large-saes.md): the model replica sends each shard
    the hook activations and merges their answers exactly."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    shards: int = Field(default=0, ge=0)
    """Split into this many near-equal latent ranges (0 = use ``ranges``)."""
    ranges: list[tuple[int, int]] = Field(default_factory=list)
    """Explicit [start, stop) latent ranges tiling [0, d_sae) in order; uneven widths
    allowed (the end is checked against the SAE's d_sae when it loads)."""
    replicas: int = Field(default=1, ge=1)
    """Replicas of each shard deployment."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs per shard replica."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per shard replica (fractional packs several shards onto one GPU)."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per shard replica: places shards on the nodes (KubeRay worker
    groups) that have them."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    """Torch device of a shard; auto = the replica's GPU if it has one, else cpu."""

    @model_validator(mode="after")
    def _one_way(self) -> SaeSharding:
        if (self.shards > 0) == bool(self.ranges):
            raise ValueError("sharding: give exactly one of shards (>= 1) or ranges")
        expected = 0
        for i, (start, stop) in enumerate(self.ranges):
            if start != expected or stop <= start:
                raise ValueError(
                    f"sharding.ranges[{i}]: [{start}, {stop}) must start at {expected} and be"
                    " non-empty (ranges tile [0, d_sae) in order)"
                )
            expected = stop
        return self

    @property
    def count(self) -> int:
        """How many shards (deployments) the SAE has."""
        return self.shards or len(self.ranges)


class SaeSpec(BaseModel):
    """One SAE to hook into a model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: Path
    """Folder (SAELens, sparsify hook point, Gemma Scope) or file (OpenAI ``.pt``) to load."""
    id: str = ""
    """Identifier in the API; empty = from the path (``saeserve.sae.ids``), may contain "/"."""
    hook_point: str = ""
    """Hook point override (any alias); empty = the one recorded with the SAE."""
    index: Path | None = None
    """Feature index folder (``saeserve index``); empty = ``<path>/feature_index`` if present."""
    sharding: SaeSharding | None = None
    """Split the SAE by latent range across shard deployments; none = the model replica
    holds it whole."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; auto = as stored in the file, memory-mapped with no copy. Another
    dtype converts the weights at load (a copy in memory, logged). Activations and sums
    are float32 whatever the weights are, so 16-bit weights pick the same top k as float32
    arithmetic on them (docs/sae-memory.md)."""
    residency: Literal["lazy", "pretouch", "mlock"] = "lazy"
    """What start-up does to the weights' pages: lazy = read on first use (the kernel may
    evict them under memory pressure); pretouch = read every page once, so the first
    request pays no disk reads; mlock = pre-touch and pin them in memory (needs
    RLIMIT_MEMLOCK or CAP_IPC_LOCK; refused, it pre-touches and logs a warning). The
    resident fraction is the metric ``saeserve_sae_resident_fraction``."""
    encode_block_bytes: int = Field(default=64 << 20, ge=1 << 20)
    """Memory budget of one SAE encode block: every encode (Decompose, steering, feature
    index, evaluation) runs the tokens in blocks whose [tokens x d_sae] float32
    pre-activations fit it (at least one token a block): 64 MiB is 512 tokens at 32k
    latents, 16 at 1M."""

    @property
    def index_folder(self) -> Path:
        """Where this SAE's feature index is looked for."""
        return self.index if self.index is not None else self.path / "feature_index"

    @property
    def effective_id(self) -> str:
        """The id the API uses for this SAE."""
        return self.id or default_sae_id(self.path)


class ModelSpec(BaseModel):
    """One causal language model with its SAEs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._\-]+$")
    """Name in the API's ``model`` fields."""
    path: Path
    """Hugging Face model folder (config.json, weights, tokenizer.json); never the hub."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; auto = bfloat16 on a GPU that supports it, else float32."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    """Torch device; auto = the replica's GPU if it has one, else cpu."""
    saes: list[SaeSpec] = Field(default_factory=list)
    """SAEs hooked into this model; ids must be unique within the model."""

    @model_validator(mode="after")
    def _unique_sae_ids(self) -> ModelSpec:
        ids = [s.effective_id for s in self.saes]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model {self.name!r}: duplicate SAE ids {duplicates}")
        return self


def demo_models() -> list[ModelSpec]:
    """The built-in demo: ``demo/data/model`` with every SAE folder in ``demo/data/saes``."""
    sae_dir = DEMO_DATA / "saes"
    saes = sorted(p for p in sae_dir.iterdir() if p.is_dir()) if sae_dir.is_dir() else []
    return [ModelSpec(name="demo", path=DEMO_DATA / "model", saes=[SaeSpec(path=p) for p in saes])]


class Limits(BaseModel):
    """Per-request bounds; beyond one the server answers INVALID_ARGUMENT naming it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_texts_per_request: int = Field(default=64, ge=1)
    """Decompose: texts in one request."""
    max_tokens_per_text: int = Field(default=1024, ge=1)
    """Tokenize/Decompose texts and Generate prompts, in tokens (BOS included)."""
    max_new_tokens: int = Field(default=512, ge=1)
    """Generate: sampling.max_new_tokens."""
    max_top_k: int = Field(default=256, ge=1)
    """Decompose: top_k."""
    max_feature_ids: int = Field(default=1024, ge=0)
    """Decompose: feature_ids reported densely."""
    max_dense_values: int = Field(default=4_194_304, ge=0)
    """Decompose: texts x tokens x feature_ids x SAEs dense values in one response."""
    max_interventions: int = Field(default=16, ge=0)
    """Generate: interventions in one request."""
    max_abs_intervention_value: float = Field(default=1000.0, gt=0)
    """Generate: |value| of an intervention."""
    max_tracked_features: int = Field(default=64, ge=0)
    """Generate: features in track."""
    max_stop_strings: int = Field(default=8, ge=0)
    """Generate: sampling.stop strings."""
    max_stop_string_bytes: int = Field(default=256, ge=1)
    """Generate: UTF-8 bytes of one stop string."""
    max_query_bytes: int = Field(default=1000, ge=1)
    """SearchFeatures: UTF-8 bytes of the query."""
    max_search_results: int = Field(default=100, ge=1)
    """SearchFeatures: limit."""
    max_top_logprobs: int = Field(default=20, ge=0)
    """Generate: top_logprobs alternatives per token."""
    max_stop_conditions: int = Field(default=8, ge=0)
    """Generate: stop_conditions."""
    max_vector_values: int = Field(default=16384, ge=1)
    """Generate: values in one VECTOR intervention's vector (checked before it is read)."""
    max_contrast_texts: int = Field(default=64, ge=1)
    """ContrastFeatures: texts in each of texts_a and texts_b."""
    max_ranked_features: int = Field(default=256, ge=1)
    """InspectFeatures and ContrastFeatures: top_n features reported (each way) per SAE."""
    max_feature_positions: int = Field(default=1024, ge=1)
    """InspectFeatures: max_positions reported per feature."""
    max_queue_length: int = Field(default=256, ge=1)
    """Requests waiting (per model in each ingress, and per model replica) before new ones
    get RESOURCE_EXHAUSTED."""
    max_batch_size: int = Field(default=16, ge=1)
    """Decompose: requests in one batched forward pass (dynamic batching; 1 = off)."""
    max_decompose_batches_in_flight: int = Field(default=0, ge=0)
    """Decompose: batches one ingress replica has at one model at a time; 0 = the model's
    replicas (settings.replicas). With autoscaling, set it to the most replicas. Unused
    when max_batch_size is 1: then every request goes to the model at once."""
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    """Decompose: seconds a batch that is not full may wait for company once the model is
    free; 0 = go at once (requests that arrive during a forward pass still batch)."""
    max_concurrent_streams: int = Field(default=32, ge=1)
    """Generate: sequences decoded together per replica; more wait in the queue."""
    generate_memory_bytes: int = Field(default=DEFAULT_GENERATE_MEMORY_BYTES, ge=0)
    """Generate: bytes a replica's generation batch may need beyond the weights: every
    sequence's KV cache at its full length (prompt + max_new_tokens, padded to the
    longest), and a prefill's activations and steering encode block
    (engine/generation_memory.py has the arithmetic). A request that needs more on its
    own is INVALID_ARGUMENT naming this limit; requests that fit alone but not beside the
    running ones wait as when the batch is full (max_waiting_streams). 0 = unchecked."""
    max_waiting_streams: int = Field(default=64, ge=0)
    """Generate: requests a replica holds while its batch is full, in arrival order;
    beyond it RESOURCE_EXHAUSTED at once (0 = refuse whenever the batch is full)."""
    max_stream_wait_s: float = Field(default=30.0, ge=0)
    """Generate: the longest a request waits for room in the batch before
    RESOURCE_EXHAUSTED."""
    stream_interval_s: float = Field(default=0.02, ge=0, le=1)
    """Generate: a replica hands a stream's tokens to the ingress in groups (the client
    still gets one chunk per token): tokens made within this long of the stream's last
    group wait for its next, when it is the replica's only stream; with n streams open a
    group waits up to n times this, at most max_stream_interval_s, so a replica sends
    about 1/stream_interval_s groups a second however many streams it serves. The first
    and last tokens never wait. 0 = every step at once."""
    max_stream_interval_s: float = Field(default=0.1, ge=0, le=1)
    """Generate: the longest a token waits for its group, however many streams are open
    (never less than stream_interval_s)."""
    max_attribution_top_n: int = Field(default=100, ge=1)
    """Attribute / AttributeFeature: top_n, the features (positions) listed per ranking."""

    def tokens_per_text(self, max_positions: int) -> int:
        """Tokens one text or prompt may have on a model with context `max_positions`."""
        return min(self.max_tokens_per_text, max_positions)


class KeyLimits(BaseModel):
    """Rate limits of one API key (settings ``key_limits``); 0 = unlimited."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    requests_per_s: float = Field(default=0.0, ge=0)
    """Requests a second, sustained."""
    request_burst: int = Field(default=0, ge=0)
    """Requests at once after a quiet spell; 0 = max(1, requests_per_s)."""
    tokens_per_s: float = Field(default=0.0, ge=0)
    """Tokens a second: tokenized, decomposed, prompt and generated tokens."""
    token_burst: int = Field(default=0, ge=0)
    """Tokens at once after a quiet spell; 0 = max(1, tokens_per_s)."""


class ServerSettings(BaseSettings):
    """Everything ``saeserve serve`` needs: models, ports, resources, keys and limits."""

    model_config = SettingsConfigDict(
        env_prefix="SAESERVE_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    models: list[ModelSpec] = Field(default_factory=demo_models, min_length=1)
    """Models to serve; the first is the default for requests with an empty model."""
    host: str = "127.0.0.1"
    """Address the gRPC server (in each ingress replica) and Ray's HTTP proxy bind; loopback
    by default, ``0.0.0.0`` for every interface (the container and KubeRay settings). A
    local Ray cluster started by ``saeserve serve`` stays on loopback when this is."""
    grpc_port: int = Field(default=9000, ge=1, le=65535)
    """gRPC port (the API, health and reflection)."""
    http_port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port (Ray Serve's HTTP proxy): the OpenAI-compatible API, the JSON API, the
    web UI, ``/openapi.json`` and Serve's ``/-/healthz``."""
    max_http_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest HTTP request body; larger ones get 413 before they are parsed."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the HTTP API from a browser (CORS); empty = CORS off."""
    metrics_port: int = Field(default=8080, ge=1, le=65535)
    """Port where Ray exports Prometheus metrics (``ray_serve_*`` and ``saeserve_*``); on a
    local cluster with a loopback ``host`` it, like every Ray port, listens on loopback."""
    ingress_replicas: int = Field(default=1, ge=1)
    """gRPC ingress replicas; those on one node share grpc_port (SO_REUSEPORT)."""
    ingress_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each ingress replica needs: pins the gRPC port to the nodes
    that have them (on KubeRay, the pods the gRPC Service selects)."""
    replicas: int = Field(default=1, ge=1)
    """Model replicas per model; each holds the model and its SAEs."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per model replica; fractional (0.5) packs replicas onto one GPU; 0 = CPU."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs per model replica."""
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024)
    """Largest gRPC message sent (a Decompose answer can be large); clients need a
    matching receive limit."""
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest gRPC request message: a larger one is INVALID_ARGUMENT before it is parsed
    (every request's work is bounded by it; a Generate request must also fit Ray's 4 MiB
    message between replicas). HTTP bodies have max_http_body_bytes."""
    api_keys_file: Path | None = None
    """File of API keys, one per line, ``#`` comments; none and no api_keys = open server."""
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """API keys; from the environment as ``SAESERVE_API_KEYS=key1,key2`` (named key-1, ...)."""
    key_limits: dict[str, KeyLimits] = Field(default_factory=dict)
    """Rate limits by API key name; ``"*"`` applies to every key without its own (on a
    server without keys every caller is ``anonymous``). Per ingress replica."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the server's own loggers."""
    limits: Limits = Field(default_factory=Limits)
    """Per-request bounds."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _unique_model_names(self) -> ServerSettings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names {duplicates}")
        ports = {"grpc_port": self.grpc_port, "http_port": self.http_port}
        ports["metrics_port"] = self.metrics_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ: {ports}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> ServerSettings:
        """Build settings from defaults < YAML file < environment < ``overrides``.

        ``config_file`` defaults to ``$SAESERVE_CONFIG`` when set; a missing file is an
        error (a typo must not silently serve the demo). Overrides may be nested dicts,
        merged into the lower layers (``limits={"max_top_k": 8}`` keeps other limits).
        """
        path = config_file if config_file is not None else os.environ.get(CONFIG_FILE_ENV)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"settings file not found: {path}")
        with _reading(Path(path) if path is not None else None):
            return cls(**overrides)

    def api_key_values(self) -> list[str]:
        """The keys set directly (not from api_keys_file), unwrapped; never log these."""
        return [k.get_secret_value() for k in self.api_keys]


def overrides_from_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Turn ``--set`` style ``a.b=value`` strings into nested overrides for ``load``.

    Values are read as YAML scalars or flow collections (``8``, ``0.5``, ``true``,
    ``[a, b]``), so ``limits.max_top_k=8`` becomes ``{"limits": {"max_top_k": 8}}``.
    """
    out: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected NAME=VALUE, got {assignment!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{key}: {part} is set both as a value and a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return out


@contextmanager
def _reading(config_file: Path | None) -> Iterator[None]:
    token = _config_file.set(config_file)
    try:
        yield
    finally:
        _config_file.reset(token)
