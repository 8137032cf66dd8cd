"""Load a causal LM from a local folder and hook its residual stream at named points.

``load_model`` (loader) returns a ``LoadedModel``; ``ArchitectureLayout`` (architectures)
says where each family keeps its blocks and branches; ``resolve_hook_point`` and ``hooked``
(hookpoints) read and rewrite activations; ``build_tiny_model`` (tiny) writes random tiny
models for tests.
"""

from saeserve.model.architectures import ArchitectureLayout, layout_for
from saeserve.model.hookpoints import (
    HookFn,
    HookKind,
    HookPoint,
    StopForward,
    forward_until,
    hooked,
    resolve_hook_point,
)
from saeserve.model.loader import LoadedModel, load_model
from saeserve.model.tiny import build_tiny_model

__all__ = [
    "ArchitectureLayout",
    "HookFn",
    "HookKind",
    "HookPoint",
    "LoadedModel",
    "StopForward",
    "build_tiny_model",
    "forward_until",
    "hooked",
    "layout_for",
    "load_model",
    "resolve_hook_point",
]
