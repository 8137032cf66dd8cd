"""A model together with the SAEs hooked into it: what one replica serves.

``ServedModel`` resolves each SAE's hook point once, checks that its width matches the
activation it reads, and answers look-ups by SAE id with NotFound naming the known ids.
Usage::

    served = ServedModel.load("path/to/model", ["path/to/sae_a", "path/to/sae_b"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saeserve.errors import InvalidArgument, NotFound
from saeserve.model.hookpoints import HookKind, HookPoint, resolve_hook_point
from saeserve.model.loader import LoadedModel, load_model
from saeserve.sae.base import Sae


@dataclass
class HookedSae:
    """An SAE and the resolved point of the model it reads and writes."""

    id: str
    sae: Sae
    hook_point: HookPoint


@dataclass
class ServedModel:
    lm: LoadedModel
    saes: dict[str, HookedSae] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.lm.name

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        sae_paths: Iterable[str | Path] = (),
        *,
        device: str = "cpu",
        dtype: str = "float32",
        name: str | None = None,
    ) -> ServedModel:
        lm = load_model(model_path, device=device, dtype=dtype, name=name)
        served = cls(lm)
        if sae_paths:
            from saeserve.sae.formats import load_sae

            for path in sae_paths:
                served.add_sae(load_sae(path, device=lm.device))
        return served

    def add_sae(self, sae: Sae, sae_id: str | None = None) -> HookedSae:
        """Register an SAE under its id (default: its config's id)."""
        sae_id = sae_id or sae.cfg.id
        if not sae_id:
            raise InvalidArgument("sae.id: an SAE needs a non-empty id")
        if sae_id in self.saes:
            raise InvalidArgument(f"sae.id: {sae_id!r} is already loaded for model {self.name!r}")
        if not sae.cfg.hook_point:
            raise InvalidArgument(f"sae {sae_id!r}: its config names no hook point")
        point = resolve_hook_point(sae.cfg.hook_point, self.lm.layout, self.lm.model)
        if point.kind is not HookKind.MODULE and sae.d_in != self.lm.layout.d_model:
            raise InvalidArgument(
                f"sae {sae_id!r}: d_in {sae.d_in} != d_model {self.lm.layout.d_model} at {point.name}"
            )
        sae.to(self.lm.device).eval().requires_grad_(False)
        hooked = HookedSae(sae_id, sae, point)
        self.saes[sae_id] = hooked
        return hooked

    def sae(self, sae_id: str, *, field_name: str = "sae") -> HookedSae:
        try:
            return self.saes[sae_id]
        except KeyError:
            known = ", ".join(sorted(self.saes)) or "none"
            raise NotFound(
                f"{field_name}: unknown SAE {sae_id!r} for model {self.name!r} (known: {known})"
            ) from None

    def select(self, sae_ids: Sequence[str], *, field_name: str = "saes") -> list[HookedSae]:
        """The named SAEs in order, or all of them for an empty list."""
        if not sae_ids:
            return list(self.saes.values())
        if len(set(sae_ids)) != len(sae_ids):
            raise InvalidArgument(f"{field_name}: SAE ids must be unique, got {list(sae_ids)}")
        return [self.sae(s, field_name=f"{field_name}[{i}]") for i, s in enumerate(sae_ids)]

    def hook_point(self, name: str, *, field_name: str = "hook_point") -> HookPoint:
        try:
            return resolve_hook_point(name, self.lm.layout, self.lm.model)
        except InvalidArgument as e:
            raise InvalidArgument(f"{field_name}: {e}") from None
