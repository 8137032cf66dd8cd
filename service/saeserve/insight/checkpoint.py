"""Checkpoints of an index build, so an interrupted ``saeserve index`` can ``--resume``.

A checkpoint is a folder written after a whole batch: ``state/NAME.npy`` (the
accumulator's arrays, ``FeatureAccumulator.state``; ``.npy`` is written straight from the
array, with no second copy in memory, and read without pickles) and ``checkpoint.json`` (the build
settings that decide the result, the contexts and corpus tokens consumed). It is written
beside and swapped in by renames, so a crash while writing leaves the previous one.
Resuming re-reads the corpus, skips the contexts already consumed (whole batches, so the
remaining batches are the ones an uninterrupted run would form) and continues; the
result is the same index. Settings that differ from the checkpoint's are refused by name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeserve.errors import InvalidArgument

STATE_DIR = "state"
META_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: where the build was and its accumulator arrays."""

    n_contexts: int
    """Contexts consumed from the corpus (a whole number of batches)."""
    corpus_tokens: int
    """Corpus tokens in those contexts (BOS included, as ``max_tokens`` counts)."""
    arrays: dict[str, np.ndarray]


def save_checkpoint(
    folder: Path,
    settings: dict[str, Any],
    state: dict[str, np.ndarray],
    *,
    n_contexts: int,
    corpus_tokens: int,
) -> None:
    """Write a checkpoint into ``folder``, replacing any there."""
    tmp = folder.with_name(folder.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / STATE_DIR).mkdir()
    for name, array in state.items():
        np.save(tmp / STATE_DIR / f"{name}.npy", array, allow_pickle=False)
    meta = {"settings": settings, "n_contexts": n_contexts, "corpus_tokens": corpus_tokens}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, settings: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in ``folder`` (None if there is none); its settings must match."""
    if not (folder / META_FILE).is_file():
        old = folder.with_name(folder.name + ".old")  # crashed between the two renames
        if not (old / META_FILE).is_file():
            return None
        folder = old
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    saved = meta["settings"]
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise InvalidArgument(
            f"resume: the checkpoint in {folder} was made with other settings ({shown}); "
            "rerun with the same options, or without --resume to start over"
        )
    return Checkpoint(
        n_contexts=int(meta["n_contexts"]),
        corpus_tokens=int(meta["corpus_tokens"]),
        arrays={
            path.stem: np.load(path, allow_pickle=False)
            for path in sorted((folder / STATE_DIR).glob("*.npy"))
        },
    )


def remove_checkpoint(folder: Path) -> None:
    for path in (folder, folder.with_name(folder.name + ".old")):
        shutil.rmtree(path, ignore_errors=True)
