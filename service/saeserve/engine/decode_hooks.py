"""The steering hooks of a generator's decode steps: installed once per batch composition.

A decode step's hooks depend only on the batch's ``SteeringPlan`` (every row's one token
is a generated one), so they are installed when the plan changes and kept between steps.
Between this generator's decode forwards they stay on the model but do nothing (a gate
opened only by ``decoding()``), so forwards by anyone else (a Decompose between two steps,
a prefill) see an unhooked model. They come off at the first step after the batch's
composition changes or it empties (never outside a step: another thread may be running a
forward), or when the owner is dropped; the model holds only weak references back.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

from torch import Tensor

from saeserve.engine.interventions import SteeringPlan
from saeserve.model.hookpoints import HookFn, hooked
from saeserve.model.loader import LoadedModel


class DecodeHooks:
    """One model's decode-step steering hooks; see the module docstring."""

    def __init__(self, lm: LoadedModel) -> None:
        self._lm = lm
        self._stack = contextlib.ExitStack()
        weakref.finalize(self, self._stack.close)  # dropped mid-batch: unhook the model
        self._plan: SteeringPlan | None = None
        self._open = False

    def keep(self, plan: SteeringPlan) -> None:
        """Have the plan's decode hooks on the model (installing them if the plan is new)."""
        if plan is self._plan:
            return
        self.drop()
        fns = plan.decode_hook_fns()
        if fns:
            gated = {point: self._gated(fn) for point, fn in fns.items()}
            self._stack.enter_context(hooked(self._lm, gated))
        self._plan = plan

    def drop(self) -> None:
        """Take the hooks off the model."""
        self._stack.close()
        self._plan = None

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """The hooks act only inside this block: one decode forward."""
        self._open = True
        try:
            yield
        finally:
            self._open = False

    def _gated(self, fn: HookFn) -> HookFn:
        owner = weakref.ref(self)  # the model must not keep a dropped generator's hooks alive

        def gated(h: Tensor) -> Tensor | None:
            hooks = owner()
            return fn(h) if hooks is not None and hooks._open else None

        return gated
