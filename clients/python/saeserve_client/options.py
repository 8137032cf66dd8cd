"""How the client connects: target, API key, TLS, deadlines, retries, message size.

``ClientOptions`` is a frozen dataclass shared by the sync and the asyncio client;
``ClientOptions.from_env()`` reads ``SAESERVE_TARGET`` and ``SAESERVE_API_KEY``.
``RetryPolicy`` is handed to gRPC as the channel's service config, so gRPC itself
retries: only on ``UNAVAILABLE`` (the server is starting or draining, so nothing ran),
with exponential backoff and jitter, within the call's deadline, and only until the
server has answered (for Generate: before the first chunk).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:9000"
# Decompose responses with dense features can be large; gRPC's own default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
USER_AGENT = "saeserve-client/0.1"
# gRPC clamps a retry policy's maxAttempts to 5 (and logs it), so more is refused here.
GRPC_MAX_ATTEMPTS = 5
# The services whose calls the retry policy covers.
RETRIED_SERVICES = ("saeserve.v1.Saeserve", "grpc.health.v1.Health")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retries of a call that failed with one of ``retry_codes`` (UNAVAILABLE only
    by default).

    After attempt ``n`` (1-based) fails, gRPC waits a random time of at most
    ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds before attempt
    ``n + 1``; at most ``max_attempts`` attempts in all (1 = never retry; gRPC allows no
    more than 5). The call's deadline covers every attempt and pause. gRPC retries a call
    only until the server has sent its response headers, which saeserve sends with a
    Generate stream's first chunk: a stream is retried only while it has yielded no chunk.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1  # seconds
    max_backoff: float = 5.0  # seconds
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= GRPC_MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be in [1, {GRPC_MAX_ATTEMPTS}] (gRPC's limit), "
                f"got {self.max_attempts}"
            )
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.multiplier < 1:
            raise ValueError("backoffs must be > 0 and multiplier >= 1")
        if not self.retry_codes:
            raise ValueError("retry_codes must not be empty (use NO_RETRY to never retry)")

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config (as JSON data) whose ``retryPolicy`` is this policy.

        Empty for a single attempt: gRPC refuses a ``retryPolicy`` with fewer than 2.
        """
        if self.max_attempts == 1:
            return {}
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": sorted(code.name for code in self.retry_codes),
        }
        names = [{"service": service} for service in RETRIED_SERVICES]
        return {"methodConfig": [{"name": names, "retryPolicy": policy}]}


def _duration(seconds: float) -> str:
    """Seconds as a google.protobuf.Duration in JSON: ``0.1`` -> ``"0.1s"``, ``5`` -> ``"5s"``."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings for ``SaeserveClient`` and ``AsyncSaeserveClient``.

    ``timeout`` is the default deadline in seconds of each unary call (retries
    included) and ``generate_timeout`` that of a whole Generate stream; None means no
    deadline. Every method also takes ``timeout=`` for one call. TLS is used when
    ``secure`` is true or ``root_certificates`` (PEM bytes) are given; with ``secure`` and
    no certificates the system roots are used. The API key travels as
    ``authorization: Bearer <key>`` metadata on every call.
    """

    target: str = DEFAULT_TARGET
    api_key: str | None = None
    secure: bool = False
    root_certificates: bytes | None = None
    timeout: float | None = 30.0
    generate_timeout: float | None = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Extra grpc channel arguments, e.g. (("grpc.ssl_target_name_override", "host"),).
    channel_args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_env(cls, **overrides: Any) -> ClientOptions:
        """Options from ``SAESERVE_TARGET`` / ``SAESERVE_API_KEY``, then ``overrides``."""
        values: dict[str, Any] = {}
        if os.environ.get("SAESERVE_TARGET"):
            values["target"] = os.environ["SAESERVE_TARGET"]
        if os.environ.get("SAESERVE_API_KEY"):
            values["api_key"] = os.environ["SAESERVE_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def uses_tls(self) -> bool:
        return self.secure or self.root_certificates is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the API key, when there is one."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def grpc_channel_args(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.primary_user_agent", USER_AGENT),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(self.retry.service_config())),
            # The policy above is the one used: a resolver's (DNS TXT) config cannot replace it.
            ("grpc.service_config_disable_resolution", 1),
            # gRPC keeps a request for its retries only up to this size (default 256 KiB),
            # and sends a larger one once; every request that may be sent may be retried.
            ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
            *self.channel_args,
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
