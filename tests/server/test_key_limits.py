"""Per-key rate limits against a hand-driven clock: bursts, refill, token debt, the "*"
default, and the Retry-After an HTTP client is told."""

from __future__ import annotations

import json

import pytest

from saeserve.errors import ResourceExhausted
from saeserve.server.http.errors import error_response
from saeserve.server.key_limits import KeyLimiter
from saeserve.server.settings import KeyLimits
from saeserve.server.status import status_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_beyond_the_burst_wait_for_the_refill() -> None:
    clock = Clock()
    limiter = KeyLimiter({"alice": KeyLimits(requests_per_s=2, request_burst=3)}, clock)
    for _ in range(3):
        limiter.admit("alice")
    with pytest.raises(
        ResourceExhausted, match=r"'alice' is over its requests limit \(2/s\)"
    ) as info:
        limiter.admit("alice")
    assert info.value.retry_after_s == pytest.approx(0.5)  # one request at 2 per second
    clock.now += 0.5
    limiter.admit("alice")
    limiter.admit("bob")  # no limits of its own and no "*": unlimited
    for _ in range(100):
        limiter.admit("bob")


def test_a_key_in_token_debt_waits_until_it_is_paid_back() -> None:
    clock = Clock()
    limiter = KeyLimiter({"*": KeyLimits(tokens_per_s=100, token_burst=200)}, clock)
    limiter.admit("carol")
    limiter.charge("carol", 500)  # one call may overdraw: 200 - 500 = -300
    with pytest.raises(ResourceExhausted, match="tokens limit") as info:
        limiter.admit("carol")
    assert info.value.retry_after_s == pytest.approx(3.0)
    limiter.admit("dave")  # "*" gives every key its own buckets
    clock.now += 3.0
    limiter.admit("carol")


def test_http_clients_are_told_when_to_retry() -> None:
    error = ResourceExhausted("rate limit: over", retry_after_s=2.2)
    response = error_response(status_for(error))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert json.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"
