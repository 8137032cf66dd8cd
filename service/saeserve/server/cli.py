"""``saeserve serve``: start a local Ray + Serve with the gRPC service and keep it running.

With no flags it serves the built-in demo model and its SAEs on gRPC port 9000. Flags
and a YAML config (``--config deploy/serve_config.yaml``) override the defaults; any
setting can also be set with ``--set limits.max_top_k=64`` or ``SAESERVE_*`` variables.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from saeserve.server import local_ray
from saeserve.server.settings import ServerSettings, overrides_from_assignments


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML settings file (or a Serve config with an app_builder args.config)",
    )
    parser.add_argument(
        "--model", type=Path, help="HF model folder to serve instead of the demo model"
    )
    parser.add_argument(
        "--sae",
        type=Path,
        action="append",
        default=[],
        help="SAE folder or file for --model (repeatable)",
    )
    parser.add_argument(
        "--name", default="", help="model name for --model (default: the folder name)"
    )
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 9000)")
    parser.add_argument(
        "--http-port", type=int, help="HTTP port: OpenAI API, JSON API, web UI (default 8000)"
    )
    parser.add_argument("--replicas", type=int, help="model replicas")
    parser.add_argument("--num-gpus", type=float, help="GPUs per replica (fractional allowed)")
    parser.add_argument("--api-keys-file", type=Path, help="file of API keys, one per line")
    parser.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting one"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, e.g. limits.max_top_k=64",
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    overrides: dict[str, Any] = overrides_from_assignments(args.set)
    if args.model:
        name = args.name or args.model.resolve().name
        overrides["models"] = [
            {"name": name, "path": str(args.model), "saes": [{"path": str(p)} for p in args.sae]}
        ]
    for flag, key in [
        ("grpc_port", "grpc_port"),
        ("http_port", "http_port"),
        ("replicas", "replicas"),
        ("num_gpus", "num_gpus"),
        ("api_keys_file", "api_keys_file"),
    ]:
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return ServerSettings.load(_settings_file(args.config), **overrides)


def _settings_file(config: Path | None) -> Path | None:
    """Accept a Serve config (applications[0].args.config names the settings) or a settings file."""
    if config is None:
        return None
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    if isinstance(data, dict) and "applications" in data:
        args = (data["applications"][0] or {}).get("args") or {}
        inner = args.get("config")
        return (
            (config.parent / inner).resolve()
            if inner and not Path(inner).is_absolute()
            else (Path(inner) if inner else None)
        )
    return config


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    local_ray.prepare(settings)  # before Ray is imported
    from saeserve.server.app import APP_NAME, start

    start(settings, ray_address=args.ray_address)
    models = ", ".join(f"{m.name} ({len(m.saes)} SAEs)" for m in settings.models)
    auth = (
        "API keys required (authorization: Bearer <key>)"
        if settings.api_key_values()
        else "open: no API keys configured"
    )
    http = f"http://localhost:{settings.http_port}"
    print(
        f"saeserve app {APP_NAME!r} is serving {models}\n"
        f"  gRPC      {settings.host}:{settings.grpc_port}  (reflection on: grpcurl -plaintext localhost:{settings.grpc_port} list)\n"
        f"  HTTP      {settings.host}:{settings.http_port}  OpenAI API: {http}/v1  API docs: {http}/docs\n"
        f"  web UI    {http}/\n"
        f"  auth      {auth}\n"
        f"  try       saeserve decompose 'The cat sat on the mat' --target localhost:{settings.grpc_port}\n"
        f"            saeserve generate 'Once upon a time' --target localhost:{settings.grpc_port}\n"
        f"            curl {http}/v1/completions -H 'content-type: application/json' \\\n"
        f'              -d \'{{"model": "{settings.models[0].name}", "prompt": "Once upon a time", "max_tokens": 16}}\'\n'
        "Ctrl-C stops the server.",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ray replaces the default SIGINT handler
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(0.5):
            pass
    from ray import serve

    serve.shutdown()
    print("saeserve stopped", file=sys.stderr)
    return 0
