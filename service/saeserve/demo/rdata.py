"""Read character vectors out of an installed R package's lazy-load data, without R.

Debian ships some public-domain texts only as R data packages (``r-cran-janeaustenr``
holds Jane Austen's six novels, one character vector of lines per novel). R stores a
package's data as a lazy-load database: ``data/Rdata.rdx`` is a gzip'd serialized index
``{variables: {name: c(offset, length)}, compressed: ...}`` and ``data/Rdata.rdb`` holds
each object at its offset as a 4-byte big-endian length and a zlib (or bzip2/xz) stream of
R's XDR serialization. This module implements the part of that serialization that data
objects use (vectors, pairlists, attributes, references), which is enough to read the
novels with the Python standard library alone.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP type codes (R's serialize.c).
_SYMSXP, _LISTSXP, _CLOSXP, _ENVSXP, _PROMSXP, _LANGSXP = 1, 2, 3, 4, 5, 6
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _CPLXSXP, _STRSXP = 9, 10, 13, 14, 15, 16
_DOTSXP, _VECSXP, _EXPRSXP, _RAWSXP = 17, 19, 20, 24
_REFSXP, _NILVALUE_SXP = 255, 254
_PERSISTSXP, _ALTREP_SXP, _ATTRLISTSXP, _ATTRLANGSXP = 247, 238, 239, 240
_SENTINELS = {253, 252, 251, 250, 242, 241}  # global/base/empty envs, unbound, missing
_NA_INT = -(2**31)


@dataclass
class RObject:
    """A decoded R value: ``kind`` is a SEXP type name, ``value`` its payload."""

    kind: str
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Cursor over one XDR serialization stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def read_int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(v)

    def length(self) -> int:
        n = self.read_int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.read_int(), self.read_int()
            n = (hi << 32) + lo
        return n

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("only XDR ('X') R serializations are supported")
        version = self.read_int()
        self.read_int()  # writer R version
        self.read_int()  # minimal reader R version
        if version == 3:
            self.take(self.read_int())  # native encoding name

    def item(self) -> Any:
        flags = self.read_int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind == _NILVALUE_SXP or kind in _SENTINELS:
            return None
        if kind == _REFSXP:
            index = flags >> 8 or self.read_int()
            return self.refs[index - 1]
        if kind == _PERSISTSXP:  # a name the writer's hook persisted, e.g. a namespace
            self.read_int()  # always 0
            obj = RObject("persist", [self.item() for _ in range(self.read_int())])
            self.refs.append(obj)
            return obj
        if kind == _SYMSXP:
            sym = RObject("symbol", self.item())
            self.refs.append(sym)
            return sym
        if kind == _ENVSXP:
            env = RObject("environment", None)
            self.refs.append(env)
            self.read_int()  # locked
            env.value = (self.item(), self.item(), self.item())  # enclos, frame, hashtab
            env.attributes = _attributes(self.item())
            return env
        if kind in (_LISTSXP, _LANGSXP, _CLOSXP, _PROMSXP, _DOTSXP, _ATTRLISTSXP, _ATTRLANGSXP):
            return self._pairlist(has_attr, has_tag)
        if kind == _ALTREP_SXP:
            info, state, attr = self.item(), self.item(), self.item()
            return RObject("altrep", (info, state), _attributes(attr))
        if kind == _CHARSXP:
            n = self.read_int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        obj = self._vector(kind)
        if has_attr:
            obj.attributes = _attributes(self.item())
        return obj

    def _pairlist(self, has_attr: bool, has_tag: bool) -> RObject:
        cells: list[tuple[str | None, Any]] = []
        attrs: Any = None
        while True:
            if has_attr:
                attrs = self.item()
            tag = self.item() if has_tag else None
            cells.append((tag.value if isinstance(tag, RObject) else None, self.item()))
            flags = self.read_int()  # the cdr: another cell, or the end
            kind = flags & 0xFF
            if kind != _LISTSXP:
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    cells.append((None, tail))
                break
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        return RObject("pairlist", cells, _attributes(attrs))

    def _vector(self, kind: int) -> RObject:
        n = self.length()
        if kind in (_LGLSXP, _INTSXP):
            raw = struct.unpack_from(f">{n}i", self.data, self.pos)
            self.pos += 4 * n
            return RObject("integer", [None if v == _NA_INT else v for v in raw])
        if kind == _REALSXP:
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
            return RObject("double", values)
        if kind == _CPLXSXP:
            values = list(struct.unpack_from(f">{2 * n}d", self.data, self.pos))
            self.pos += 16 * n
            return RObject("complex", values)
        if kind == _STRSXP:
            return RObject("character", [self.item() for _ in range(n)])
        if kind in (_VECSXP, _EXPRSXP):
            return RObject("list", [self.item() for _ in range(n)])
        if kind == _RAWSXP:
            return RObject("raw", self.take(n))
        raise ValueError(f"unsupported R SEXP type {kind}")


def _attributes(pairlist: Any) -> dict[str, Any]:
    if not isinstance(pairlist, RObject) or pairlist.kind != "pairlist":
        return {}
    return {tag: value for tag, value in pairlist.value if tag is not None}


def unserialize(data: bytes) -> Any:
    """Decode one R XDR serialization (as written by ``serialize``/``saveRDS``)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(blob: bytes) -> bytes:
    """Undo R's lazy-load compression: 4-byte length, optional type byte, stream."""
    (size,) = struct.unpack_from(">I", blob, 0)
    body = blob[4:]
    if body[:1] in (b"Z", b"2", b"0"):  # xz, bzip2, stored (R >= 2.10 types)
        kind, body = body[:1], body[1:]
        out = (
            lzma.decompress(body)
            if kind == b"Z"
            else bz2.decompress(body)
            if kind == b"2"
            else body
        )
    else:
        out = zlib.decompress(body)
    if len(out) != size:
        raise ValueError(f"lazy-load entry decompressed to {len(out)} bytes, expected {size}")
    return out


def read_lazyload_index(rdx: Path) -> dict[str, tuple[int, int]]:
    """Map each variable in a lazy-load database to its (offset, length) in the .rdb."""
    index = unserialize(gzip.decompress(rdx.read_bytes()))
    names = index.attributes["names"].value
    variables = index.value[names.index("variables")]
    var_names = variables.attributes["names"].value
    return {
        name: (int(pos.value[0]), int(pos.value[1]))
        for name, pos in zip(var_names, variables.value, strict=True)
    }


def read_character_vectors(data_dir: Path) -> dict[str, list[str]]:
    """Every character vector in ``data_dir/Rdata.{rdx,rdb}``, by variable name."""
    index = read_lazyload_index(data_dir / "Rdata.rdx")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out: dict[str, list[str]] = {}
    for name, (offset, length) in sorted(index.items()):
        obj = unserialize(_decompress(blob[offset : offset + length]))
        if isinstance(obj, RObject) and obj.kind == "character":
            out[name] = [s if s is not None else "" for s in obj.value]
    return out
