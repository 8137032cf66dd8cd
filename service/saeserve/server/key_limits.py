"""Per-API-key rate limits: a request bucket and a token bucket per key name.

``KeyLimits`` (settings ``key_limits``, by key name; ``"*"`` for every key without its
own) gives a key ``requests_per_s`` and ``tokens_per_s`` (tokenized, decomposed, prompt
and generated tokens), each with a burst. ``KeyLimiter.admit(name)`` takes one request
from the key's request bucket and refuses a key whose token bucket is in debt; what a call
actually used is charged afterwards with ``charge`` (a call's tokens are only known as it
runs), so a key may overdraw by one call and then waits until it is paid back. A refusal
is ``ResourceExhausted`` with ``retry_after_s``: gRPC RESOURCE_EXHAUSTED, HTTP 429 with
``Retry-After``. Each ingress replica keeps its own buckets: with N ingress replicas a key
gets up to N times its limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from saeserve.errors import ResourceExhausted
from saeserve.server import metrics
from saeserve.server.settings import KeyLimits


@dataclass
class TokenBucket:
    """``rate`` per second up to ``capacity``; the level may go below zero (a debt)."""

    rate: float
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, need: float) -> float:
        """Seconds until the level reaches ``need``."""
        return max(0.0, (need - self.level) / self.rate)


def _bucket(rate: float, burst: int, now: float) -> TokenBucket | None:
    if rate <= 0:
        return None
    capacity = float(burst or max(1.0, rate))
    return TokenBucket(rate, capacity, capacity, now)


class KeyLimiter:
    def __init__(
        self, limits: Mapping[str, KeyLimits], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = dict(limits)
        self.clock = clock
        self._requests: dict[str, TokenBucket | None] = {}
        self._tokens: dict[str, TokenBucket | None] = {}

    def _buckets(self, name: str) -> tuple[TokenBucket | None, TokenBucket | None]:
        if name not in self._requests:
            limits = self.limits.get(name) or self.limits.get("*") or KeyLimits()
            now = self.clock()
            self._requests[name] = _bucket(limits.requests_per_s, limits.request_burst, now)
            self._tokens[name] = _bucket(limits.tokens_per_s, limits.token_burst, now)
        return self._requests[name], self._tokens[name]

    def admit(self, name: str) -> None:
        """Count one request of key ``name``; ResourceExhausted if it is over a limit."""
        requests, tokens = self._buckets(name)
        now = self.clock()
        if tokens is not None:
            tokens.refill(now)
            if tokens.level < 0:
                self._refuse(name, "tokens", tokens.rate, tokens.wait_s(0.0))
        if requests is not None:
            requests.refill(now)
            if requests.level < 1:
                self._refuse(name, "requests", requests.rate, requests.wait_s(1.0))
            requests.level -= 1
        metrics.KEY_REQUESTS.labels(key=name).inc()

    def charge(self, name: str, tokens: int) -> None:
        """Debit ``tokens`` the key's call used."""
        if tokens <= 0:
            return
        metrics.KEY_TOKENS.labels(key=name).inc(tokens)
        bucket = self._buckets(name)[1]
        if bucket is not None:
            bucket.refill(self.clock())
            bucket.level -= tokens

    @staticmethod
    def _refuse(name: str, what: str, rate: float, wait_s: float) -> None:
        raise ResourceExhausted(
            f"rate limit: API key {name!r} is over its {what} limit ({rate:g}/s); "
            f"retry in {wait_s:.1f} s",
            retry_after_s=wait_s,
            reason="rate_limited",
        )
