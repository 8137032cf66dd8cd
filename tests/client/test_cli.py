"""The client CLI run as ``python -m saeserve.cli SUBCOMMAND`` subprocesses against the fake.

Checks the readable views (plain when stdout is a pipe, ANSI with ``--color always``),
that ``--json`` output parses into the expected structure, that generate streams (the
first token is printed before the server has sent the last), and the error contract:
``error: <CODE>: <message>`` on stderr with exit 1, exit 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from saeserve_client import Condition, Steer
from saeserve_client.cli import parse_condition, parse_feature_ref, parse_steer
from tests.client.fake_server import FakeSaeserve, FakeServer

ANSI = "\x1b["


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without SAESERVE_* settings or PYTHONUNBUFFERED (the CLI must flush
    its stream itself)."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SAESERVE_") and k != "PYTHONUNBUFFERED"
    }
    return {**keep, **(extra or {})}


def saeserve(
    server: FakeServer, *args: str, env: dict[str, str] | None = None, target: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "saeserve.cli", *args]
    if target:
        command += ["--target", server.address]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean_env(env))


def ok(server: FakeServer, *args: str) -> str:
    done = saeserve(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_json(server: FakeServer, *args: str) -> Any:
    return json.loads(ok(server, *args, "--json"))


def test_models(server: FakeServer) -> None:
    text = ok(server, "models")
    assert text.splitlines()[0].startswith("demo  (default)  gpt2 · 2 layers")
    assert re.search(
        r"resid_post\.0\s+resid_post\.0\s+topk\s+64\s+4\s+bfloat16\s+0\.0 MiB\s+yes", text
    )
    assert re.search(r"mlp_out\.1\s+mlp_out\.1\s+jumprelu\s+32\s+-\s+float32\s+0\.0 MiB\s+no", text)
    assert ANSI not in text
    [model] = as_json(server, "models")
    assert [s["architecture"] for s in model["saes"]] == ["topk", "jumprelu"]
    assert [s["dtype"] for s in model["saes"]] == ["bfloat16", "float32"]
    assert [s["weight_bytes"] for s in model["saes"]] == [4384, 4416]


def test_tokenize(server: FakeServer) -> None:
    assert re.search(r'2\s+42\s+6-10\s+" big"', ok(server, "tokenize", "héllo big world"))
    data = as_json(server, "tokenize", "a b")
    assert data["strings"] == ["<bos>", "a", " b"] and data["offsets"] == [[0, 0], [0, 1], [1, 3]]


def test_decompose_readable_and_json(server: FakeServer) -> None:
    text = ok(server, "decompose", "the cat sat", "--sae", "resid_post.0", "--features", "3,40")
    lines = text.splitlines()
    assert lines[0] == 'text "the cat sat"  (4 tokens)'
    assert "sae resid_post.0 @ resid_post.0 · explained variance 0.750" in lines
    # token 2 (" cat"): features 10..13 (the topk SAE's k=4 cuts the 5th), then requested
    assert re.search(
        r'^\s+2\s+" cat"\s+0\.020\s+10=5\.20\s+11=4\.20\s+12=3\.20\s+13=2\.20\s+\|'
        r"\s+3=2\.03\s+40=2\.40$",
        text,
        re.M,
    )
    assert "mlp_out.1" not in text and ANSI not in text

    coloured = ok(server, "decompose", "the cat", "--color", "always")
    assert ANSI in coloured and "\x1b[1m" in coloured  # strongest feature in bold

    data = as_json(server, "decompose", "the cat", "a", "--top-k", "3", "--features", "7")
    assert [d["text"] for d in data] == ["the cat", "a"]
    part = data[0]["saes"]["resid_post.0"]
    assert part["top_ids"] == [[0, 1, 2], [5, 6, 7], [10, 11, 12]]
    assert part["top_values"][1] == [3.1, 2.1, 1.1]  # float32 printed as meant
    assert part["dense"] == [[0.07], [1.07], [2.07]] and part["explained_variance"] == 0.75
    assert list(data[1]["saes"]) == ["resid_post.0", "mlp_out.1"]


def test_generate_labels_steered_and_baseline(server: FakeServer, fake: FakeSaeserve) -> None:
    text = ok(
        server,
        "generate",
        "Once upon",
        "--steer",
        "resid_post.0:5:add:8",
        "--steer",
        "mlp_out.1:2:ablate",
        "--baseline",
        "--max-new-tokens",
        "3",
        "--seed",
        "4",
    )
    steered_at = text.index("== steered: resid_post.0:5 add 8, mlp_out.1:2 ablate ==")
    baseline_at = text.index("== baseline: no steering ==")
    assert steered_at < text.index(" s0 s1 s2") < baseline_at < text.index(" b0 b1 b2")
    assert "[length · 3 prompt + 3 generated tokens]" in text
    sent = fake.requests["Generate"]
    assert [(i.sae, i.feature, i.value) for i in sent.interventions] == [
        ("resid_post.0", 5, 8.0),
        ("mlp_out.1", 2, 0.0),
    ]
    assert sent.include_baseline and sent.sampling.seed == 4


def test_generate_with_conditions(server: FakeServer, fake: FakeSaeserve) -> None:
    args = ["generate", "x", "--max-new-tokens", "2", "--steer", "post0:5:add:8@mid1:3>0.5"]
    args += ["--stop-when", "post0:7<-1", "--stop-when", "resid_post.0:2>2.25"]
    text = ok(server, *args)
    assert "[condition 1 · 2 prompt + 2 generated tokens]" in text
    sent = fake.requests["Generate"]
    cond = sent.interventions[0].condition
    assert (cond.sae, cond.feature, cond.threshold, cond.below) == ("mid1", 3, 0.5, False)
    assert [(c.sae, c.feature, c.threshold, c.below) for c in sent.stop_conditions] == [
        ("post0", 7, -1.0, True),
        ("resid_post.0", 2, 2.25, False),
    ]
    last = json.loads(ok(server, *args, "--json").splitlines()[-1])
    assert last["finish_reason"] == "condition" and last["stop_condition"] == 1
    assert last["stop_activation"] == 2.5


def test_parse_condition() -> None:
    assert parse_condition("resid_post.2:1224>0.5") == Condition.above("resid_post.2", 1224, 0.5)
    assert parse_condition("a/b:3<-2") == Condition.below("a/b", 3, -2.0)
    assert parse_steer("s:1:clamp:4@t:2>0") == Steer.clamp("s", 1, 4.0).when(
        Condition.above("t", 2)
    )
    for bad in ("s:1", "s:x>1", ":1>2", "s:1>", "s:1>nan?"):
        with pytest.raises(argparse.ArgumentTypeError, match="condition"):
            parse_condition(bad)


def test_generate_json_lines(server: FakeServer) -> None:
    out = ok(
        server, "generate", "x", "--max-new-tokens", "2", "--track", "resid_post.0:1", "--json"
    )
    chunks = [json.loads(line) for line in out.splitlines()]
    assert [c["text"] for c in chunks] == [" s0", " s1"]
    assert chunks[1]["finish_reason"] == "length" and chunks[1]["tracked"] == [1.0]
    assert chunks[1]["usage"] == {"prompt_tokens": 2, "generated_tokens": 2}


def test_generate_streams_as_tokens_arrive(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.chunk_delay = 0.3  # 8 tokens: the whole stream takes about 2.4 s
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saeserve.cli",
            "generate",
            "x",
            "--max-new-tokens",
            "8",
            "--target",
            server.address,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(3)
        sent = fake.generate_sent
        assert first == " s0" and sent < 8, f"first token printed only after {sent} of 8 were sent"
        rest = proc.stdout.read()
    finally:
        proc.wait(30)
    assert rest.startswith(" s1 s2") and proc.returncode == 0


def test_feature(server: FakeServer) -> None:
    text = ok(server, "feature", "resid_post.0", "7")
    assert "resid_post.0 / 7  'cats and kittens' (generated)" in text
    assert "density 1.2500% · max activation 9.500 · mean 3.250 · 40,000 tokens indexed" in text
    assert "9.500  The [[cat]] [[sat]]" in text  # activating tokens marked
    assert re.search(r'promotes\s+" cat" \+0\.800\s+" kitten" \+0\.600', text)
    assert re.search(r'suppresses\s+" dog" -0\.500', text)
    assert "sampled, max activation 1.500 … 2.500" in text and "2.500  A [[cat]]" in text
    assert "decoder neighbours  3 0.750  9 0.500" in text
    assert "encoder neighbours  4 0.250" in text
    coloured = ok(server, "feature", "resid_post.0", "7", "--color", "always")
    assert "[[" not in coloured and "\x1b[1;30;43mcat" in coloured
    data = as_json(server, "feature", "resid_post.0", "7")
    assert data["density"] == 0.0125 and data["top_contexts"][0]["max_index"] == 1
    assert data["quantiles"][0]["contexts"][1]["tokens"] == [" cats", "!"]
    assert data["decoder_neighbours"][0] == {"feature": 3, "cosine": 0.75}
    assert data["explanation"] == {"text": "cats and kittens", "source": "generated"}


def test_search(server: FakeServer) -> None:
    text = ok(server, "search", "cat")
    assert re.search(r'2\.500\s+resid_post\.0/7\s+cats and kittens\s+" cat" " kitten"', text)
    assert ok(server, "search", "zebra").strip() == "no features match 'zebra'"
    data = as_json(server, "search", "cat", "--limit", "1")
    assert data == [
        {
            "sae": "resid_post.0",
            "feature": 7,
            "score": 2.5,
            "explanation": {"text": "cats and kittens", "source": "imported"},
            "top_tokens": [" cat", " kitten"],
        }
    ]


def test_errors_and_usage(server: FakeServer) -> None:
    bad = saeserve(server, "decompose", "x", "--top-k", "900")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip() == "error: INVALID_ARGUMENT: decompose.top_k: 900 > limit 256"
    missing = saeserve(server, "feature", "nope", "1")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "error: NOT_FOUND: unknown SAE 'nope'",
    )
    usage = saeserve(server, "generate", "x", "--steer", "resid_post.0:5:boost:1")
    assert usage.returncode == 2 and "SAE:FEATURE:MODE:VALUE" in usage.stderr


def test_sae_ids_may_contain_slashes() -> None:
    """Default ids of Gemma Scope and OpenAI SAEs do (saeserve.sae.ids)."""
    sae = "layer_12/width_16k/average_l0_82"
    assert parse_steer(f"{sae}:5:add:3") == Steer("add", sae, 5, 3.0)
    assert parse_steer(f"{sae}:5:ablate") == Steer("ablate", sae, 5, 0.0)
    assert parse_feature_ref(f"{sae}:5") == (sae, 5)


def test_clamp_threshold_takes_an_optional_threshold() -> None:
    assert parse_steer("resid_post.0:5:clamp_threshold:3:0.5") == Steer.clamp_threshold(
        "resid_post.0", 5, 3.0, 0.5
    )
    assert parse_steer("a:b:5:clamp_threshold:3") == Steer("clamp_threshold", "a:b", 5, 3.0)
    assert parse_steer("a:b:5:clamp_threshold:3:-1") == Steer.clamp_threshold("a:b", 5, 3.0, -1.0)


def test_target_and_api_key_from_environment(server: FakeServer, fake: FakeSaeserve) -> None:
    fake.required_key = "env-key"
    env = {"SAESERVE_TARGET": server.address, "SAESERVE_API_KEY": "env-key"}
    done = saeserve(server, "models", env=env, target=False)
    assert done.returncode == 0, done.stderr
    assert fake.metadata["ListModels"]["authorization"] == "Bearer env-key"
    denied = saeserve(server, "models", env={"SAESERVE_TARGET": server.address}, target=False)
    assert denied.returncode == 1 and denied.stderr.startswith("error: UNAUTHENTICATED: ")


def test_unreachable_server(server: FakeServer) -> None:
    began = time.monotonic()
    done = saeserve(server, "models", "--target", "127.0.0.1:1", "--timeout", "2", target=False)
    assert done.returncode == 1 and done.stderr.startswith("error: UNAVAILABLE: ")
    assert time.monotonic() - began < 20
