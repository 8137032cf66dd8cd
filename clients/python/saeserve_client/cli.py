"""The client subcommands of ``saeserve``: models, tokenize, decompose, generate, feature,
search, inspect, contrast, attribute, attribute-feature.

``saeserve.cli`` imports this module for any of those names and calls
``configure(parser, name)`` then ``run(args)``; ``python -m saeserve_client.cli`` works
the same without the server package. Every subcommand takes ``--target`` (env
``SAESERVE_TARGET``), ``--api-key`` (env ``SAESERVE_API_KEY``), ``--model``,
``--timeout``, ``--json`` and ``--color``. A failed call prints
``error: <CODE>: <message>`` to stderr and exits 1; bad flags exit 2. Imports only the
client (grpcio, protobuf, numpy): never torch or ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from saeserve_client.client import SaeserveClient
from saeserve_client.errors import SaeserveError
from saeserve_client.options import DEFAULT_TARGET, ClientOptions
from saeserve_client.render import (
    Style,
    attribution_view,
    contrast_view,
    decomposition_view,
    feature_input_view,
    feature_view,
    generation_footer,
    inspection_view,
    jsonable,
    matches_view,
    models_view,
    tokens_view,
)
from saeserve_client.results import MODES, Condition, GenerateChunk, Steer, collect

MULTI_COMMAND = True  # saeserve.cli passes the subcommand's name to configure()

HELP = {
    "models": "list the server's models and SAEs",
    "tokenize": "tokenize text on the server",
    "decompose": "show each token's top SAE features",
    "generate": "stream steered generation",
    "feature": "show one feature: top contexts, promoted tokens, density",
    "search": "search features by explanation or top tokens",
    "attribute": "which SAE features drove the next token (direct and total effects)",
    "attribute-feature": "which tokens of a prompt drove a feature (gradient x input)",
    "inspect": "show the features that fire most over a whole text",
    "contrast": "rank the features that separate two sets of texts",
}


# ---------------------------------------------------------------------------------------
# flag parsing


def parse_condition(spec: str) -> Condition:
    """``SAE:FEATURE>THRESHOLD`` or ``SAE:FEATURE<THRESHOLD`` -> ``Condition``."""
    op = ">" if ">" in spec else "<"
    ref, _, threshold = spec.rpartition(op)
    sae, _, feature = ref.rpartition(":")
    try:
        if not sae or not threshold:
            raise ValueError("missing part")
        value = float(threshold)
        return Condition(sae, int(feature), value, "above" if op == ">" else "below")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"condition {spec!r}: expected SAE:FEATURE>THRESHOLD or SAE:FEATURE<THRESHOLD"
        ) from None


def parse_steer(spec: str) -> Steer:
    """``SAE:FEATURE:MODE[:VALUE][@CONDITION]`` (VALUE optional for ablate; CONDITION as
    ``parse_condition`` reads it), or ``SAE:FEATURE:clamp_threshold:VALUE[:THRESHOLD]`` ->
    ``Steer``."""
    spec, at, when = spec.partition("@")
    condition = parse_condition(when) if at else None
    threshold = "0"
    parts = spec.rsplit(":", 4)
    if len(parts) == 5 and parts[2].lower() == "clamp_threshold":
        sae, feature, mode, value, threshold = parts
    elif len(parts := spec.rsplit(":", 3)) == 4 and parts[2].lower() in MODES:
        sae, feature, mode, value = parts
    else:
        parts = spec.rsplit(":", 2)
        if len(parts) != 3 or parts[2].lower() != "ablate":
            raise argparse.ArgumentTypeError(
                f"--steer {spec!r}: expected SAE:FEATURE:MODE:VALUE with MODE one of "
                "add, clamp, scale, ablate (ablate takes no value), or "
                "SAE:FEATURE:clamp_threshold:VALUE[:THRESHOLD]"
            )
        sae, feature, mode, value = (*parts, "0")
    mode = mode.lower()
    if mode == "vector":
        raise argparse.ArgumentTypeError("--steer: vector steering needs the Python client")
    try:
        return Steer(
            mode, sae, int(feature), float(value), threshold=float(threshold), condition=condition
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--steer {spec!r}: {exc}") from None


def parse_feature_ref(spec: str) -> tuple[str, int]:
    """``SAE:FEATURE`` -> ``(sae, feature)``."""
    sae, _, feature = spec.rpartition(":")
    if not sae or not feature.isdigit():
        raise argparse.ArgumentTypeError(f"expected SAE:FEATURE, got {spec!r}")
    return sae, int(feature)


def parse_ids(spec: str) -> list[int]:
    """``1,2,30`` -> ``[1, 2, 30]``."""
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ids, got {spec!r}") from None


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the flags of subcommand ``name`` (one of ``HELP``) to ``parser``."""
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--target",
        default=os.environ.get("SAESERVE_TARGET", DEFAULT_TARGET),
        help="server host:port (env SAESERVE_TARGET; default %(default)s)",
    )
    conn.add_argument(
        "--api-key",
        default=os.environ.get("SAESERVE_API_KEY"),
        help="API key sent as 'authorization: Bearer KEY' (env SAESERVE_API_KEY)",
    )
    conn.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    conn.add_argument("--ca-cert", type=Path, help="PEM root certificates for TLS")
    conn.add_argument("--timeout", type=float, help="deadline of the call, in seconds")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="ANSI colour"
    )
    if name != "models":
        parser.add_argument("--model", default="", help="model name (default: the server's first)")
    CONFIGURE[name](parser)


def _models(parser: argparse.ArgumentParser) -> None:
    pass


def _tokenize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="text to tokenize ('-' reads stdin)")


def _decompose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="text(s) ('-' reads stdin)")
    parser.add_argument(
        "--sae", action="append", default=[], help="SAE id (repeatable; default: all)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="features per token (default 5)")
    parser.add_argument(
        "--features", type=parse_ids, default=[], help="feature ids to show for every token: 1,2"
    )
    parser.add_argument(
        "--no-reconstruction", action="store_true", help="skip reconstruction error"
    )


def _generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="prompt text ('-' reads stdin)")
    parser.add_argument(
        "--steer",
        action="append",
        type=parse_steer,
        default=[],
        metavar="SAE:FEATURE:MODE:VALUE[@SAE:FEATURE>T]",
        help="steer a feature; MODE is add, clamp, scale or ablate (repeatable); with "
        "@SAE:FEATURE>T (or <T) only at the tokens where that feature is above (below) T; "
        "SAE:FEATURE:clamp_threshold:VALUE[:THRESHOLD] clamps by a pre-activation threshold "
        "instead of the exact TopK test (approximate; cheap on very wide TopK SAEs)",
    )
    parser.add_argument(
        "--stop-when",
        action="append",
        type=parse_condition,
        default=[],
        metavar="SAE:FEATURE>T",
        help="end each variant at the first step where this feature is above T (or <T: "
        "below); repeatable",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also generate without steering, for comparison"
    )
    parser.add_argument("--chat", action="store_true", help="send PROMPT as a user chat message")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, help="0 = greedy (server default 1.0)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument(
        "--ignore-eos", action="store_true", help="generate past end-of-sequence tokens"
    )
    parser.add_argument(
        "--track",
        action="append",
        type=parse_feature_ref,
        default=[],
        metavar="SAE:FEATURE",
        help="report this feature's activation with each token (--json; repeatable)",
    )
    parser.add_argument("--logprobs", action="store_true", help="report token logprobs (--json)")
    parser.add_argument(
        "--top-logprobs",
        type=int,
        default=0,
        metavar="N",
        help="with --logprobs: also the N most likely tokens per step (--json)",
    )
    parser.add_argument(
        "--kl",
        action="store_true",
        help="with --baseline: KL(steered || baseline) per steered token (--json)",
    )


def _feature(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sae", help="SAE id")
    parser.add_argument("feature", type=int, help="feature id")
    parser.add_argument("--contexts", type=int, default=10, help="top contexts shown")


def _search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="words to match against explanations and top tokens")
    parser.add_argument("--sae", default="", help="restrict to one SAE")
    parser.add_argument("--limit", type=int, default=10)


def _token(value: str) -> int | str:
    """``#ID`` names a token id; anything else is a token's text."""
    return int(value[1:]) if value.startswith("#") and value[1:].isdigit() else value


def _attribute(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="prompt text ('-' reads stdin)")
    token_help = "a token's text (one token, e.g. ' the') or #ID for a token id"
    parser.add_argument("--token", type=_token, help=f"target next token: {token_help}; "
                        "default: the model's most likely")  # fmt: skip
    parser.add_argument("--contrast", type=_token, help=f"explain the logit difference "
                        f"with this token: {token_help}")  # fmt: skip
    parser.add_argument("--sae", action="append", default=[], help="SAE id (repeat; default all)")
    parser.add_argument("--top-n", type=int, default=10, help="features per ranking")


def _attribute_feature(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="prompt text ('-' reads stdin)")
    parser.add_argument("sae", help="SAE id")
    parser.add_argument("feature", type=int, help="feature id")
    parser.add_argument("--position", type=int, help="token position (default: the last)")
    parser.add_argument("--top-n", type=int, default=10, help="positions per ranking (JSON)")


def _inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="text to inspect ('-' reads stdin)")
    parser.add_argument("--chat", action="store_true", help="send TEXT as a user chat message")
    parser.add_argument(
        "--sae", action="append", default=[], help="SAE id (repeatable; default: all)"
    )
    parser.add_argument(
        "--order-by",
        choices=("count", "max", "sum", "mean_active"),
        default="count",
        help="rank features by (default %(default)s)",
    )
    parser.add_argument("--top", type=int, default=10, help="features per SAE (default 10)")
    parser.add_argument(
        "--positions", type=int, default=16, help="positions listed per feature (default 16)"
    )


def _contrast(parser: argparse.ArgumentParser) -> None:
    for side in ("a", "b"):
        parser.add_argument(
            f"-{side}",
            f"--{side}",
            action="append",
            default=[],
            metavar="TEXT",
            help=f"a text of set {side.upper()} (repeatable)",
        )
        parser.add_argument(
            f"--{side}-file",
            type=Path,
            help=f"a file of set {side.upper()}'s texts, one per non-empty line",
        )
    parser.add_argument(
        "--sae", action="append", default=[], help="SAE id (repeatable; default: all)"
    )
    parser.add_argument(
        "--unit",
        choices=("token", "text_max"),
        default="token",
        help="a sample is every token, or each text's max (default %(default)s)",
    )
    parser.add_argument(
        "--order-by", choices=("mean_diff", "auroc"), default="mean_diff", help="rank by"
    )
    parser.add_argument("--top", type=int, default=10, help="features each way (default 10)")


CONFIGURE: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "models": _models,
    "tokenize": _tokenize,
    "decompose": _decompose,
    "generate": _generate,
    "feature": _feature,
    "search": _search,
    "attribute": _attribute,
    "attribute-feature": _attribute_feature,
    "inspect": _inspect,
    "contrast": _contrast,
}


# ---------------------------------------------------------------------------------------
# running


def run(args: argparse.Namespace) -> int:
    """Run ``args.command`` against the server; returns the exit status."""
    out = sys.stdout
    try:
        options = ClientOptions(
            target=args.target,
            api_key=args.api_key or None,
            secure=args.tls,
            root_certificates=args.ca_cert.read_bytes() if args.ca_cert else None,
        )
        with SaeserveClient(options=options) as client:
            RUN[args.command](client, args, out, Style.for_stream(out, args.color))
    except SaeserveError as exc:
        print(f"error: {exc.code_name}: {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # bad input caught before any call
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _emit(out: TextIO, lines: Sequence[str]) -> None:
    out.write("".join(line + "\n" for line in lines))


def _show(
    out: TextIO, args: argparse.Namespace, result: object, view: Callable[[], Sequence[str]]
) -> None:
    """``result`` as one JSON document with --json, else the lines ``view`` renders."""
    if args.json:
        print(json.dumps(jsonable(result)), file=out)
    else:
        _emit(out, view())


def _run_models(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    models = client.list_models(timeout=args.timeout)
    _show(out, args, models, lambda: models_view(models, style))


def _run_tokenize(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    tokens = client.tokenize(_text(args.text), args.model, timeout=args.timeout)
    _show(out, args, tokens, lambda: tokens_view(tokens, style))


def _run_decompose(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    result = client.decompose(
        [_text(t) for t in args.texts],
        model=args.model,
        saes=args.sae,
        top_k=args.top_k,
        feature_ids=args.features,
        include_reconstruction=not args.no_reconstruction,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(jsonable(result)), file=out)
        return
    for n, item in enumerate(result):
        _emit(out, ([""] if n else []) + decomposition_view(item, style))


def _run_generate(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    prompt = _text(args.prompt)
    stream = client.generate(
        [{"role": "user", "content": prompt}] if args.chat else prompt,
        model=args.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        interventions=args.steer,
        include_baseline=args.baseline,
        track=args.track,
        logprobs=args.logprobs,
        top_logprobs=args.top_logprobs,
        kl_from_baseline=args.kl,
        stop_conditions=args.stop_when,
        timeout=args.timeout,
    )
    with stream:
        if args.json:  # one JSON object per chunk, as it arrives
            for chunk in stream:
                out.write(json.dumps(jsonable(chunk)) + "\n")
                out.flush()
            return
        label = "steered" if args.steer else "output"
        if args.baseline:
            out.write(style.bold(f"== {label}: {_describe(args.steer)} ==") + "\n")
            out.flush()
        seen: list[GenerateChunk] = []
        for chunk in stream:
            seen.append(chunk)
            if chunk.variant == "steered":  # baseline chunks wait for the steered ones
                out.write(chunk.text)
                out.flush()
        runs = collect(seen)
        out.write("\n")
        if "steered" in runs:
            out.write(generation_footer(runs["steered"], style) + "\n")
        if "baseline" in runs:
            out.write("\n" + style.bold("== baseline: no steering ==") + "\n")
            out.write(runs["baseline"].text + "\n")
            out.write(generation_footer(runs["baseline"], style) + "\n")


def _describe(steers: Sequence[Steer]) -> str:
    if not steers:
        return "no steering"
    return ", ".join(
        f"{s.sae}:{s.feature} {s.mode}"
        + ("" if s.mode == "ablate" else f" {s.value:g}")
        + (f" when {_condition(s.condition)}" if s.condition else "")
        for s in steers
    )


def _condition(c: Condition) -> str:
    return f"{c.sae}:{c.feature}{'>' if c.op == 'above' else '<'}{c.threshold:g}"


def _run_feature(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    feature = client.get_feature(args.sae, args.feature, args.model, timeout=args.timeout)
    _show(out, args, feature, lambda: feature_view(feature, style, contexts=args.contexts))


def _run_search(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    matches = client.search_features(
        args.query, args.sae, args.limit, args.model, timeout=args.timeout
    )
    _show(out, args, matches, lambda: matches_view(args.query, matches, style))


def _run_attribute(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    result = client.attribute(
        _text(args.prompt),
        target=args.token,
        contrast=args.contrast,
        saes=args.sae,
        top_n=args.top_n,
        model=args.model,
        timeout=args.timeout,
    )
    _show(out, args, result, lambda: attribution_view(result, style))


def _run_attribute_feature(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    result = client.attribute_feature(
        _text(args.prompt),
        args.sae,
        args.feature,
        position=args.position,
        top_n=args.top_n,
        model=args.model,
        timeout=args.timeout,
    )
    _show(out, args, result, lambda: feature_input_view(result, style))


def _run_inspect(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    text = _text(args.text)
    result = client.inspect_features(
        [{"role": "user", "content": text}] if args.chat else text,
        model=args.model,
        saes=args.sae,
        order_by=args.order_by,
        top_n=args.top,
        max_positions=args.positions,
        timeout=args.timeout,
    )
    _show(out, args, result, lambda: inspection_view(result, style))


def _texts(inline: list[str], path: Path | None) -> list[str]:
    lines = path.read_text().splitlines() if path is not None else []
    return inline + [line for line in lines if line.strip()]


def _run_contrast(
    client: SaeserveClient, args: argparse.Namespace, out: TextIO, style: Style
) -> None:
    result = client.contrast_features(
        _texts(args.a, args.a_file),
        _texts(args.b, args.b_file),
        model=args.model,
        saes=args.sae,
        unit=args.unit,
        order_by=args.order_by,
        top_n=args.top,
        timeout=args.timeout,
    )
    _show(out, args, result, lambda: contrast_view(result, style))


RUN: dict[str, Callable[[SaeserveClient, argparse.Namespace, TextIO, Style], None]] = {
    "models": _run_models,
    "tokenize": _run_tokenize,
    "decompose": _run_decompose,
    "generate": _run_generate,
    "feature": _run_feature,
    "search": _run_search,
    "attribute": _run_attribute,
    "attribute-feature": _run_attribute_feature,
    "inspect": _run_inspect,
    "contrast": _run_contrast,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m saeserve_client.cli SUBCOMMAND ...`` without the server package."""
    parser = argparse.ArgumentParser(
        prog="saeserve-client", description=(__doc__ or "").split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in HELP.items():
        configure(sub.add_parser(name, help=help_text, description=help_text), name)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
