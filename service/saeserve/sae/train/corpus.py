"""Text corpora as token contexts: read .txt files, tokenize, cut into fixed-length contexts.

A corpus is one .txt file or a folder searched recursively for .txt files, read in sorted
path order. Each file is one document; documents are tokenized without special tokens,
joined with the model's end-of-text token between them, and the resulting stream is cut
into contexts of ``context_length`` tokens (the tail shorter than a context is dropped).
Long files are tokenized in pieces split at line breaks so the tokenizer never sees one huge
string. The trainer and ``eval-sae`` both read text this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeserve.errors import InvalidArgument, NotFound, require

PIECE_CHARS = 1 << 16  # tokenize long documents in ~64 KiB pieces, split at line breaks
PIECES_PER_CALL = 32  # pieces per tokenizer call, so a token budget stops reading early


def corpus_files(path: str | Path) -> list[Path]:
    """The .txt files of a corpus: the file itself, or every .txt under a folder, sorted."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise NotFound(f"corpus: {str(root)!r} is neither a file nor a folder")
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise InvalidArgument(f"corpus: folder {str(root)!r} contains no .txt files")
    return files


def read_documents(path: str | Path) -> Iterator[str]:
    """Each file of the corpus as one document (UTF-8, undecodable bytes replaced)."""
    for file in corpus_files(path):
        text = file.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def _pieces(text: str) -> list[str]:
    """``text`` split into pieces of about PIECE_CHARS, each ending at a line break."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + PIECE_CHARS)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def tokenize_documents(
    tokenizer: Any,
    documents: Iterable[str],
    *,
    separator_id: int | None,
    max_tokens: int | None = None,
) -> Tensor:
    """One int64 token stream [n_tokens]: documents joined by ``separator_id`` (if any).

    Stops once ``max_tokens`` tokens are collected (the stream is then cut to that length).
    """
    chunks: list[Tensor] = []
    total = 0
    for document in documents:
        if max_tokens is not None and total >= max_tokens:
            break
        if chunks and separator_id is not None:
            chunks.append(torch.tensor([separator_id], dtype=torch.int64))
            total += 1
        pieces = _pieces(document)
        for start in range(0, len(pieces), PIECES_PER_CALL):
            if max_tokens is not None and total >= max_tokens:
                break
            group = pieces[start : start + PIECES_PER_CALL]
            for ids in tokenizer(group, add_special_tokens=False, verbose=False)["input_ids"]:
                chunks.append(torch.tensor(ids, dtype=torch.int64))
                total += len(ids)
    stream = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)
    return stream[:max_tokens] if max_tokens is not None else stream


def chunk_contexts(tokens: Tensor, context_length: int) -> Tensor:
    """Contexts [n_contexts, context_length] cut from a token stream; the short tail is dropped."""
    require(context_length > 0, f"context_length: must be positive, got {context_length}")
    n = tokens.numel() // context_length
    return tokens[: n * context_length].reshape(n, context_length)


def texts_to_contexts(
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    context_length: int,
    *,
    separator_id: int | None,
    max_tokens: int | None = None,
) -> Tensor:
    """Tokenize ``texts`` as documents and cut them into contexts; InvalidArgument if none fits."""
    stream = tokenize_documents(tokenizer, texts, separator_id=separator_id, max_tokens=max_tokens)
    contexts = chunk_contexts(stream, context_length)
    if contexts.shape[0] == 0:
        raise InvalidArgument(
            f"corpus: {stream.numel()} tokens do not fill one context of {context_length} tokens"
        )
    return contexts
