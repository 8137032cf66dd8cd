"""The ``saeserve`` command: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concern and exposes
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``. Only the
chosen subcommand's module is imported, so client subcommands (decompose, generate,
feature, search, models) never import torch or ray.

Run ``saeserve --help`` for the list, ``saeserve SUBCOMMAND --help`` for its flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "saeserve.server.cli",
        "start Ray Serve with the gRPC service (demo model by default)",
    ),
    "train-sae": ("saeserve.sae.train.cli", "train a TopK SAE on one hook point of a model"),
    "eval-sae": ("saeserve.sae.evaluate", "evaluate an SAE on held-out text"),
    "index": (
        "saeserve.insight.cli",
        "build a feature index (top contexts, logit effects, labels)",
    ),
    "build-demo": ("saeserve.demo.build", "train the built-in demo model, its SAEs and indexes"),
    "models": ("saeserve_client.cli", "list the server's models and SAEs"),
    "tokenize": ("saeserve_client.cli", "tokenize text on the server"),
    "decompose": ("saeserve_client.cli", "show each token's top SAE features"),
    "generate": ("saeserve_client.cli", "stream steered generation"),
    "feature": ("saeserve_client.cli", "show one feature: top contexts, promoted tokens, density"),
    "search": ("saeserve_client.cli", "search features by explanation or top tokens"),
    "attribute": (
        "saeserve_client.cli",
        "which SAE features drove the next token (direct and total effects)",
    ),
    "attribute-feature": (
        "saeserve_client.cli",
        "which tokens of a prompt drove a feature (gradient x input)",
    ),
    "inspect": ("saeserve_client.cli", "show the features that fire most over a whole text"),
    "contrast": ("saeserve_client.cli", "rank the features that separate two sets of texts"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saeserve",
        description="Serve, inspect and steer a language model through sparse autoencoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        parser = _top_parser()
        if args and not args[0].startswith("-"):
            parser.error(f"unknown command {args[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(args)
        parser.print_help()
        return 0 if args else 2
    name = args[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"saeserve {name}", description=COMMANDS[name][1])
    module.configure(parser, name) if _takes_name(module) else module.configure(parser)
    parsed = parser.parse_args(args[1:])
    parsed.command = name
    return int(module.run(parsed) or 0)


def _takes_name(module: object) -> bool:
    """Modules serving several subcommands (the client) take the subcommand's name."""
    return bool(getattr(module, "MULTI_COMMAND", False))


if __name__ == "__main__":
    raise SystemExit(main())
