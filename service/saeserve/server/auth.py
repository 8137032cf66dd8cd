"""API-key authentication: load keys, check ``authorization: Bearer <key>`` metadata.

Keys come from ``ServerSettings.api_keys`` (``SAESERVE_API_KEYS=k1,k2``) and from
``api_keys_file`` (one key per line; blank lines and lines starting with ``#`` are
skipped). ``ApiKeys`` keeps only SHA-256 digests and compares a presented key against
every one of them with ``hmac.compare_digest`` (no early exit), so timing reveals neither
which key matched nor a key's length. Keys never appear in messages, reprs or logs.

``ApiKeys.check(metadata, method)`` is what an ingress calls before any work: it returns
when the call may proceed and raises ``Unauthenticated`` (gRPC UNAUTHENTICATED through
``saeserve.server.status``) otherwise. With no keys configured the server is open and
``check`` always passes; ``access_summary`` is the line to log at start-up saying so.
Health checking and server reflection are exempt (``EXEMPT_SERVICES``): load balancers
and ``grpcurl describe`` carry no keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from saeserve.errors import SaeserveError
from saeserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
"""Metadata key carrying the key (gRPC metadata keys are lower case)."""

SCHEME = "bearer"
"""Accepted authorization scheme, compared case-insensitively."""

EXEMPT_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
"""Services callable without a key."""

Metadata = Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes] | None


class Unauthenticated(SaeserveError):
    """No API key, a malformed authorization header, or a wrong key (UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _validate_key(key: str, where: str) -> str:
    if not key or any(c.isspace() or not c.isprintable() for c in key) or not key.isascii():
        # never echo the key itself
        raise ValueError(f"{where}: an API key must be printable ASCII without spaces")
    return key


def read_keys_file(path: Path) -> list[str]:
    """Keys from ``path``: one per line, ``#`` comment lines and blank lines skipped."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"API keys file not found: {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("API keys file %s is readable by group or others; chmod 600 it", path)
    keys = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append(_validate_key(line, f"{path}:{number}"))
    return keys


class ApiKeys:
    """The set of accepted API keys, held as digests; empty means an open server."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        validated = [_validate_key(k, f"api key #{i}") for i, k in enumerate(keys, start=1)]
        self._digests: tuple[bytes, ...] = tuple(dict.fromkeys(_digest(k) for k in validated))

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        """Keys from ``settings.api_keys`` plus those in ``settings.api_keys_file``."""
        keys = settings.api_key_values()
        if settings.api_keys_file is not None:
            keys += read_keys_file(settings.api_keys_file)
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"

    @property
    def open(self) -> bool:
        """True when no keys are configured: every call is allowed."""
        return not self._digests

    @property
    def enabled(self) -> bool:
        """True when keys are configured: calls need one."""
        return bool(self._digests)

    def is_valid(self, key: str) -> bool:
        """Whether ``key`` is one of the keys, in time independent of which one matches."""
        presented = _digest(key)
        matched = False
        for digest in self._digests:  # compare against every key: no early exit
            matched |= hmac.compare_digest(presented, digest)
        return matched

    def check(self, metadata: Metadata, method: str = "") -> None:
        """Return if the call may proceed; raise ``Unauthenticated`` if not.

        ``metadata`` is the call's invocation metadata (pairs or a mapping); ``method`` its
        full name, ``/package.Service/Method``, used to exempt health and reflection.
        """
        if self.open or _service_of(method) in EXEMPT_SERVICES:
            return
        key = bearer_token(metadata)
        if not self.is_valid(key):
            raise Unauthenticated("invalid API key")


def _service_of(method: str) -> str:
    """``/grpc.health.v1.Health/Check`` -> ``grpc.health.v1.Health``."""
    parts = method.strip("/").split("/")
    return parts[0] if len(parts) == 2 else ""


def _values(metadata: Metadata, name: str) -> list[str]:
    if metadata is None:
        return []
    pairs: Iterable[tuple[str, str | bytes]] = (
        metadata.items() if isinstance(metadata, Mapping) else metadata
    )
    out = []
    for key, value in pairs:
        if key.lower() == name:
            out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return out


def bearer_token(metadata: Metadata) -> str:
    """The key in the call's single ``authorization: Bearer <key>`` entry.

    Raises ``Unauthenticated`` when the entry is missing, repeated or not a Bearer token.
    """
    values = _values(metadata, AUTHORIZATION)
    if not values:
        raise Unauthenticated(
            "missing API key: send 'authorization: Bearer <key>' (gRPC metadata or HTTP header)"
        )
    if len(values) > 1:
        raise Unauthenticated("authorization given more than once")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME or not token:
        raise Unauthenticated("authorization must read 'Bearer <key>'")
    return token


def access_summary(keys: ApiKeys, address: str = "") -> str:
    """One start-up line saying whether the server is open, without revealing keys."""
    where = f" on {address}" if address else ""
    if keys.open:
        return (
            f"auth: OPEN{where}: no API keys configured (set SAESERVE_API_KEYS or "
            "api_keys_file); anyone who can reach the port can call every RPC"
        )
    return (
        f"auth: {len(keys)} API key(s) loaded{where}; calls need metadata "
        "'authorization: Bearer <key>' (health and reflection exempt)"
    )
