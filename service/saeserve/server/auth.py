"""API-key authentication: load keys, check ``authorization: Bearer <key>`` metadata.

Keys come from ``ServerSettings.api_keys`` (``SAESERVE_API_KEYS=k1,k2``; named ``key-1``,
``key-2``, ...) and from ``api_keys_file`` (one ``KEY`` or ``NAME KEY`` per line; blank
lines and lines starting with ``#`` are skipped; an unnamed key is ``FILE:LINE``). A key's
name is what per-key limits and metrics use; the key itself is never shown. ``ApiKeys`` keeps only SHA-256 digests and compares a presented key against
every one of them with ``hmac.compare_digest`` (no early exit), so timing reveals neither
which key matched nor a key's length. Keys never appear in messages, reprs or logs.

``ApiKeys.check(metadata, method)`` is what an ingress calls before any work: it returns
the caller's key name (``OPEN_NAME`` on an open server) when the call may proceed and raises ``Unauthenticated`` (gRPC UNAUTHENTICATED through
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
from typing import NamedTuple

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

OPEN_NAME = "anonymous"
"""The key name of every caller of a server without keys."""


class NamedKey(NamedTuple):
    name: str
    key: str


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


def read_keys_file(path: Path) -> list[NamedKey]:
    """Keys from ``path``: ``KEY`` or ``NAME KEY`` per line, ``#`` comment lines and blank
    lines skipped; an unnamed key is named ``FILE:LINE``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"API keys file not found: {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("API keys file %s is readable by group or others; chmod 600 it", path)
    keys = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) > 2:  # never echo the line: it holds a key
            raise ValueError(f"{where}: expected KEY or NAME KEY")
        name = fields[0] if len(fields) == 2 else f"{path.name}:{number}"
        keys.append(NamedKey(name, _validate_key(fields[-1], where)))
    return keys


class ApiKeys:
    """The set of accepted API keys, held as digests; empty means an open server."""

    def __init__(self, keys: Iterable[str | NamedKey] = ()) -> None:
        named = [
            k if isinstance(k, NamedKey) else NamedKey(f"key-{i}", k)
            for i, k in enumerate(keys, start=1)
        ]
        for i, k in enumerate(named, start=1):
            _validate_key(k.key, f"api key #{i} ({k.name})")
        by_digest = {_digest(k.key): k.name for k in named}
        self._digests: tuple[tuple[bytes, str], ...] = tuple(by_digest.items())

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        """Keys from ``settings.api_keys`` plus those in ``settings.api_keys_file``."""
        keys: list[str | NamedKey] = list(settings.api_key_values())
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

    def name_of(self, key: str) -> str | None:
        """The name of ``key`` if it is one of the keys, in time independent of which one
        matches (every digest is compared)."""
        presented = _digest(key)
        found = None
        for digest, name in self._digests:  # no early exit
            if hmac.compare_digest(presented, digest):
                found = name
        return found

    def is_valid(self, key: str) -> bool:
        return self.name_of(key) is not None

    def check(self, metadata: Metadata, method: str = "") -> str:
        """The caller's key name if the call may proceed; ``Unauthenticated`` if not.

        ``metadata`` is the call's invocation metadata (pairs or a mapping); ``method`` its
        full name, ``/package.Service/Method``, used to exempt health and reflection.
        """
        if self.open or _service_of(method) in EXEMPT_SERVICES:
            return OPEN_NAME
        name = self.name_of(bearer_token(metadata))
        if name is None:
            raise Unauthenticated("invalid API key")
        return name


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
