"""Whether an SAE's weights are in memory: measure it, pre-touch them, lock them.

A loaded SAE's weights are the pages of its memory-mapped safetensors file (zero-copy,
``saeserve.sae.formats``): the kernel reads them on first use and may evict them under
memory pressure, after which a request pays the disk reads. ``resident_fraction`` says
how much of the weights is in memory now (``mincore(2)`` over each tensor's pages: about
0.1-0.2 s of system time for the 6 GiB, 1.5 million pages, of the 1M-latent bench SAE,
``bench.wide_load_worker``), ``pretouch`` reads every page
once (start-up pays the disk, not the first request) and ``lock`` pins them with
``mlock(2)`` where RLIMIT_MEMLOCK (or CAP_IPC_LOCK) permits, and otherwise pre-touches
with a logged warning. Linux only; on other systems, and for tensors not in host memory,
the weights count as resident and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
from collections.abc import Iterator
from enum import StrEnum

import torch
from torch import Tensor

from saeserve.sae.base import Sae

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_WILLNEED = 3


class Residency(StrEnum):
    """What start-up does to an SAE's weights (``SaeSpec.residency``)."""

    LAZY = "lazy"  # nothing: pages are read on first use and may be evicted
    PRETOUCH = "pretouch"  # read every page once at start-up
    MLOCK = "mlock"  # pre-touch and pin in memory (falls back to pretouch when refused)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for name in ("mincore", "mlock", "madvise"):
        fn = getattr(libc, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + (
            [ctypes.c_void_p] if name == "mincore" else [ctypes.c_int] if name == "madvise" else []
        )
        fn.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def weight_tensors(sae: Sae) -> list[Tensor]:
    """The SAE's parameter tensors that live in host memory."""
    return [p.detach() for p in sae.parameters() if p.device.type == "cpu" and p.numel()]


def _pages(t: Tensor) -> tuple[int, int]:
    """(page-aligned start address, length in bytes) of the pages holding ``t``."""
    start = t.data_ptr() - t.data_ptr() % PAGE
    end = t.data_ptr() + t.nbytes
    return start, end - start


def _ranges(sae: Sae) -> Iterator[tuple[int, int]]:
    for t in weight_tensors(sae):
        yield _pages(t)


def resident_fraction(sae: Sae) -> float:
    """Fraction (0..1) of the pages of the SAE's host-memory weights now in memory."""
    if _LIBC is None:
        return 1.0
    resident = total = 0
    for start, length in _ranges(sae):
        n = -(-length // PAGE)
        vec = (ctypes.c_ubyte * n)()
        if _LIBC.mincore(start, length, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore: {os.strerror(err)}")
        resident += n - bytes(vec).count(0)  # Linux sets only bit 0, for a resident page
        total += n
    return resident / total if total else 1.0


def pretouch(sae: Sae) -> None:
    """Read every page of the SAE's host-memory weights once (readahead asked first)."""
    for t in weight_tensors(sae):
        if _LIBC is not None:
            start, length = _pages(t)
            _LIBC.madvise(start, length, _MADV_WILLNEED)
        flat = t.reshape(-1).view(torch.uint8)
        int(flat[::PAGE].sum())  # one byte per page: each page faults in


def mlock_range(start: int, length: int) -> int:
    """``mlock(2)`` of a range; 0 or the errno it failed with."""
    assert _LIBC is not None
    return 0 if _LIBC.mlock(start, length) == 0 else ctypes.get_errno()


def lock(sae: Sae) -> bool:
    """Pin the SAE's host-memory weights in memory (which also reads them in); True if
    every range was locked. When mlock is refused (RLIMIT_MEMLOCK, no CAP_IPC_LOCK) the
    weights are pre-touched instead and a warning says why."""
    if _LIBC is None:
        log.warning("SAE %s: mlock is only supported on Linux; pre-touching instead", sae.cfg.id)
        pretouch(sae)
        return False
    for start, length in _ranges(sae):
        err = mlock_range(start, length)
        if err:
            log.warning(
                "SAE %s: mlock of %.1f MiB refused (%s; raise RLIMIT_MEMLOCK, e.g. "
                "`ulimit -l unlimited`, or grant CAP_IPC_LOCK); pre-touching instead, "
                "so the kernel may still evict the weights under memory pressure",
                sae.cfg.id,
                length / 2**20,
                os.strerror(err),
            )
            pretouch(sae)
            return False
    return True


def make_resident(sae: Sae, residency: Residency | str) -> None:
    """Apply ``residency`` to the SAE's weights (see ``Residency``)."""
    residency = Residency(residency)
    if residency is Residency.PRETOUCH:
        pretouch(sae)
    elif residency is Residency.MLOCK:
        lock(sae)
