"""How the client connects: target, API key, TLS, deadlines, retries, message size.

``ClientOptions`` is a frozen dataclass shared by the sync and the asyncio client;
``ClientOptions.from_env()`` reads ``SAESERVE_TARGET`` and ``SAESERVE_API_KEY``.
``RetryPolicy`` says when and how long to wait before calling again: only on
``UNAVAILABLE`` (the server is starting or draining, so nothing ran), with exponential
backoff and full jitter, never past the call's deadline.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:9000"
# Decompose responses with dense features can be large; gRPC's own default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
USER_AGENT = "saeserve-client/0.1"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a call that failed with one of ``retry_codes`` (only UNAVAILABLE by default).

    Attempt ``n`` (1-based) that fails waits a uniformly random time in
    ``[0, min(max_backoff, initial_backoff * multiplier ** (n - 1))]`` before attempt
    ``n + 1``; at most ``max_attempts`` attempts in all (1 = never retry). A Generate
    stream is retried only while it has yielded no chunk.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1  # seconds
    max_backoff: float = 5.0  # seconds
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether a call whose ``attempt``-th try ended with ``code`` may be tried again."""
        return code in self.retry_codes and attempt < self.max_attempts

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th try failed (full jitter)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)


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
            *self.channel_args,
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)


class Attempts:
    """The retry loop's state for one call: attempts made, and the call's deadline.

    ``remaining()`` is the time left for the next attempt (None: no deadline);
    ``pause_after(code)`` is how long to sleep before trying again, or None to give up
    (a code that is not retried, attempts used up, or a pause that would pass the
    deadline). Shared by the sync and the asyncio client, which only differ in how
    they sleep.
    """

    def __init__(self, policy: RetryPolicy, timeout: float | None) -> None:
        self.policy = policy
        self.attempt = 0
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def start(self) -> float | None:
        """Count an attempt and return its timeout in seconds (None: no deadline)."""
        self.attempt += 1
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.001)

    def pause_after(self, code: grpc.StatusCode) -> float | None:
        if not self.policy.should_retry(code, self.attempt):
            return None
        pause = self.policy.backoff(self.attempt)
        if self._deadline is not None and time.monotonic() + pause >= self._deadline:
            return None
        return pause
