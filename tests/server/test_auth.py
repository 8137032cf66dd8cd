"""API keys: loading from env and file, Bearer parsing, constant-time checks, no leaks.

Also runs ``ApiKeys.check`` inside a real grpc.aio server on port 0 (as an ingress would)
to see UNAUTHENTICATED reach a client, and health stay reachable without a key.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
import pytest

import saeserve.server.auth as auth
from saeserve.server.auth import (
    ApiKeys,
    Unauthenticated,
    access_summary,
    bearer_token,
    read_keys_file,
)
from saeserve.server.settings import ServerSettings
from saeserve.server.status import status_for

KEY = "k-0123456789abcdef"
OTHER = "k-fedcba9876543210"
DECOMPOSE = "/saeserve.v1.Saeserve/Decompose"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAESERVE_"):
            monkeypatch.delenv(name)


def test_open_server_lets_everything_through() -> None:
    keys = ApiKeys()
    assert keys.open and not keys.enabled
    keys.check(None, DECOMPOSE)
    keys.check([("authorization", "Bearer whatever")], DECOMPOSE)


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {KEY}")],
        [("authorization", f"bearer   {KEY}  ")],
        [("Authorization", f"BEARER {KEY}".encode())],
        {"authorization": f"Bearer {KEY}", "user-agent": "x"},
        [("user-agent", "grpc"), ("authorization", f"Bearer {OTHER}")],
    ],
)
def test_valid_keys_pass(metadata: auth.Metadata) -> None:
    ApiKeys([KEY, OTHER]).check(metadata, DECOMPOSE)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (None, "missing API key"),
        ([], "missing API key"),
        ([("user-agent", "grpc")], "missing API key"),
        ([("authorization", KEY)], "must read 'Bearer <key>'"),
        ([("authorization", f"Basic {KEY}")], "must read 'Bearer <key>'"),
        ([("authorization", "Bearer ")], "must read 'Bearer <key>'"),
        ([("authorization", "Bearer wrong")], "invalid API key"),
        ([("authorization", f"Bearer {KEY}x")], "invalid API key"),
        ([("authorization", f"Bearer {KEY}"), ("authorization", "Bearer x")], "more than once"),
    ],
)
def test_bad_or_missing_keys_are_unauthenticated(
    metadata: auth.Metadata, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(Unauthenticated, match=message) as info:
        ApiKeys([KEY]).check(metadata, DECOMPOSE)
    assert info.value.code == "UNAUTHENTICATED"
    assert KEY not in str(info.value) and KEY not in caplog.text


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ],
)
def test_health_and_reflection_need_no_key(method: str) -> None:
    ApiKeys([KEY]).check(None, method)


@pytest.mark.parametrize("method", ["", "Decompose", "/grpc.health.v1.HealthX/Check", DECOMPOSE])
def test_other_methods_need_a_key(method: str) -> None:
    with pytest.raises(Unauthenticated):
        ApiKeys([KEY]).check(None, method)


def test_bearer_token_extracts_the_key() -> None:
    assert bearer_token([("authorization", f"Bearer {KEY}")]) == KEY


def test_every_key_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ApiKeys([KEY, OTHER, "k-third"])
    assert keys.is_valid(KEY)  # matches the first key, still compares all three
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: lengths never differ
    assert not keys.is_valid("nope") and len(calls) == 6


def test_keys_file_skips_comments_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team A\n\n  {KEY}  \n# {OTHER} revoked\n{OTHER}x\n")
    path.chmod(0o600)
    assert [k.key for k in read_keys_file(path)] == [KEY, f"{OTHER}x"]


def test_keys_have_names_for_limits_and_metrics(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"alice {KEY}\n{OTHER}\n")
    path.chmod(0o600)
    keys = read_keys_file(path)
    assert [k.name for k in keys] == ["alice", "keys:2"]
    api = ApiKeys([*keys, "k-third"])
    assert api.check([("authorization", f"Bearer {KEY}")]) == "alice"
    assert api.check([("authorization", f"Bearer {OTHER}")]) == "keys:2"
    assert api.check([("authorization", "Bearer k-third")]) == "key-3"
    assert ApiKeys().check(None) == "anonymous"
    path.write_text(f"alice {KEY} extra\n")
    with pytest.raises(ValueError, match="NAME KEY") as info:
        read_keys_file(path)
    assert KEY not in str(info.value)


def test_keys_file_errors_never_show_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("good-key\nbad key with spaces\n")
    with pytest.raises(ValueError, match=r"keys:2") as info:
        read_keys_file(path)
    assert "bad key with spaces" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_keys_file(tmp_path / "missing")


def test_world_readable_keys_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="saeserve.server.auth"):
        read_keys_file(path)
    assert "chmod 600" in caplog.text and KEY not in caplog.text


def test_from_settings_merges_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{OTHER}\n")
    path.chmod(0o600)
    monkeypatch.setenv("SAESERVE_API_KEYS", KEY)
    keys = ApiKeys.from_settings(ServerSettings.load(api_keys_file=path))
    assert len(keys) == 2 and keys.is_valid(KEY) and keys.is_valid(OTHER)
    assert ApiKeys.from_settings(ServerSettings.load(api_keys=[])).open


def test_nothing_reveals_the_keys() -> None:
    keys = ApiKeys([KEY])
    text = repr(keys) + str(keys) + access_summary(keys, "0.0.0.0:9000")
    assert KEY not in text
    assert "1 API key" in access_summary(keys)
    assert "OPEN" in access_summary(ApiKeys())


def test_unauthenticated_through_a_real_server() -> None:
    keys = ApiKeys([KEY])

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            keys.check(context.invocation_metadata(), DECOMPOSE)
        except Unauthenticated as e:
            await context.abort(*status_for(e)[:2])
        return b"ok"

    def identity(b: bytes) -> bytes:
        return b

    method = grpc.unary_unary_rpc_method_handler(handler, identity, identity)
    generic = grpc.method_handlers_generic_handler("saeserve.v1.Saeserve", {"Decompose": method})

    def call(port: int, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                channel.unary_unary(DECOMPOSE)(b"", metadata=metadata, timeout=10)
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                return e.code(), e.details()

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            no_key = await asyncio.to_thread(call, port, ())
            wrong = await asyncio.to_thread(call, port, (("authorization", "Bearer no"),))
            good = await asyncio.to_thread(call, port, (("authorization", f"Bearer {KEY}"),))
        finally:
            await server.stop(None)
        assert no_key[0] is grpc.StatusCode.UNAUTHENTICATED and "missing API key" in no_key[1]
        assert wrong == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
        assert good == (grpc.StatusCode.OK, "")

    asyncio.run(main())
