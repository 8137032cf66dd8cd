"""Build the demo model's English corpus from Debian packages: clean, dedup, split, write.

The documents come from :data:`saeserve.demo.sources.SOURCES` (Austen's novels, the Python
documentation, Debian's handbook and reference, the GNU standards, the Jargon File and the
fortunes). Paragraphs are normalized (typographic punctuation to ASCII, whitespace
collapsed), and markup remnants, navigation lines and code-like paragraphs are dropped;
long paragraphs seen before and whole duplicate documents are removed. Each document goes
to validation when a hash of its id falls in the validation fraction, so the split is
stable across runs and machines; the training documents are shuffled with a fixed seed.
``train.txt`` and ``valid.txt`` hold the documents separated by :data:`DOC_SEPARATOR`.

Run: ``python -m saeserve.demo.corpus --out build/demo/corpus [--install]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from saeserve.demo.sources import APT_PACKAGES, SOURCES, Document, Source

EOT = "<|endoftext|>"
"""The end-of-text token: separates documents in the corpus files and in training."""
DOC_SEPARATOR = f"\n{EOT}\n"
"""What stands between two documents in ``train.txt`` / ``valid.txt``."""

_PUNCT = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "--",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u2192": "->",
        "\u00b6": "",  # Sphinx's permalink pilcrow
    }
)
_BOILERPLATE = re.compile(
    r"^(next:|previous:|up:|see also$|note$|tip$|warning$|changed in version|new in version"
    r"|deprecated since version|availability:)|\[contents\]\[index\]",
    re.IGNORECASE,
)
_PROSE_PUNCT = set(".,;:!?'\"()-")
_HTML_SOURCES = {"python-docs", "debian-handbook", "debian-reference", "gnu-standards"}
_DEDUP_MIN_WORDS = 8


@dataclass
class SourceStats:
    """Counts for one source after cleaning."""

    package: str
    version: str
    train_docs: int = 0
    valid_docs: int = 0
    train_words: int = 0
    valid_words: int = 0
    train_chars: int = 0
    valid_chars: int = 0


@dataclass
class CorpusStats:
    """What :func:`build_corpus` wrote, with per-source counts (also saved as stats.json)."""

    train_path: Path
    valid_path: Path
    sources: dict[str, SourceStats] = field(default_factory=dict)
    dropped_paragraphs: int = 0
    duplicate_paragraphs: int = 0
    duplicate_documents: int = 0

    @property
    def train_words(self) -> int:
        return sum(s.train_words for s in self.sources.values())

    @property
    def valid_words(self) -> int:
        return sum(s.valid_words for s in self.sources.values())

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["train_path"], data["valid_path"] = str(self.train_path), str(self.valid_path)
        data["train_words"], data["valid_words"] = self.train_words, self.valid_words
        return json.dumps(data, indent=2)


# --- cleaning ----------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Unicode NFKC, typographic punctuation to ASCII, runs of whitespace to one space."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT)
    return " ".join(text.split())


def is_prose(paragraph: str, min_words: int) -> bool:
    """Whether a normalized paragraph reads as English prose rather than code or markup."""
    words = paragraph.split()
    if len(words) < min_words or _BOILERPLATE.search(paragraph):
        return False
    visible = [c for c in paragraph if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    other = sum(not c.isalpha() and c not in _PROSE_PUNCT for c in visible)
    non_ascii = sum(ord(c) > 127 for c in visible)
    if letters == 0 or other > 0.3 * (letters + other) or non_ascii > 0.03 * len(visible):
        return False
    # A run of code-ish tokens (braces, "=", "::", "->", "$ ") marks a listing.
    return sum(
        w.startswith(("$", "{", "}", "#", "=", "::", "->", "<")) for w in words
    ) <= 0.2 * len(words)


def clean_document(doc: Document, min_words: int) -> tuple[list[str], int]:
    """Normalized prose paragraphs of a document, and how many paragraphs were dropped."""
    kept = [p for p in (normalize(raw) for raw in doc.paragraphs) if is_prose(p, min_words)]
    return kept, len(doc.paragraphs) - len(kept)


def dedup_key(text: str) -> str:
    """Hash of a text with case, punctuation and spacing ignored."""
    squashed = re.sub(r"[\W_]+", " ", text.lower()).strip()
    return hashlib.sha1(squashed.encode()).hexdigest()


def is_validation(doc_key: str, valid_fraction: float) -> bool:
    """Stable split by document: the first 8 bytes of sha1(key) as a fraction of 2^64."""
    digest = int.from_bytes(hashlib.sha1(doc_key.encode()).digest()[:8], "big")
    return digest / 2**64 < valid_fraction


@dataclass
class _Cleaned:
    source: str
    key: str
    text: str
    words: int


def clean_corpus(
    documents: Iterable[Document], stats: CorpusStats, valid_fraction: float
) -> tuple[list[_Cleaned], list[_Cleaned]]:
    """Clean and deduplicate documents in order, then split them into train and valid."""
    seen_paragraphs: set[str] = set()
    seen_docs: set[str] = set()
    train: list[_Cleaned] = []
    valid: list[_Cleaned] = []
    for doc in documents:
        min_words = 5 if doc.source in _HTML_SOURCES else 1
        paragraphs, dropped = clean_document(doc, min_words)
        stats.dropped_paragraphs += dropped
        unique: list[str] = []
        for p in paragraphs:
            if len(p.split()) >= _DEDUP_MIN_WORDS:
                key = dedup_key(p)
                if key in seen_paragraphs:
                    stats.duplicate_paragraphs += 1
                    continue
                seen_paragraphs.add(key)
            unique.append(p)
        if not unique:
            continue
        text = "\n\n".join(unique)
        doc_hash = dedup_key(text)
        if doc_hash in seen_docs:
            stats.duplicate_documents += 1
            continue
        seen_docs.add(doc_hash)
        key = f"{doc.source}/{doc.doc_id}"
        item = _Cleaned(doc.source, key, text, len(text.split()))
        (valid if is_validation(key, valid_fraction) else train).append(item)
    return train, valid


# --- Debian packages ---------------------------------------------------------------------


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, or None when it is not installed."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def install_command(packages: Iterable[str]) -> str:
    """The apt command that installs the given packages."""
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def ensure_packages(install: bool = False, packages: tuple[str, ...] = APT_PACKAGES) -> None:
    """Check the corpus packages are installed; install them with apt-get if ``install``.

    Raises RuntimeError naming the missing packages and the command to install them.
    """
    missing = [p for p in packages if package_version(p) is None]
    if not missing:
        return
    if install:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(install_command(missing).split(), check=True, env=env)
        missing = [p for p in packages if package_version(p) is None]
    if missing:
        raise RuntimeError(
            f"the demo corpus needs Debian packages that are not installed: {', '.join(missing)}. "
            f"Install them with `apt-get update && {install_command(missing)}` (as root), "
            "or pass --install."
        )


# --- building ----------------------------------------------------------------------------


def _iter_documents(sources: Iterable[Source]) -> Iterable[Document]:
    for source in sources:
        yield from source.read(source.path)


def write_documents(path: Path, texts: Iterable[str]) -> None:
    """Write documents separated by :data:`DOC_SEPARATOR`, ending with a newline."""
    path.write_text(DOC_SEPARATOR.join(texts) + "\n", encoding="utf-8")


def read_documents(path: Path) -> list[str]:
    """The documents of a corpus file written by :func:`write_documents`."""
    text = path.read_text(encoding="utf-8")
    return [d.strip("\n") for d in text.split(DOC_SEPARATOR) if d.strip()]


def build_corpus(
    out_dir: Path,
    valid_fraction: float = 0.02,
    seed: int = 0,
    install: bool = False,
    sources: tuple[Source, ...] = SOURCES,
) -> CorpusStats:
    """Write ``train.txt``, ``valid.txt`` and ``stats.json`` under ``out_dir``."""
    ensure_packages(install, tuple(s.package for s in sources))
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats(out_dir / "train.txt", out_dir / "valid.txt")
    for source in sources:
        stats.sources[source.name] = SourceStats(
            source.package, package_version(source.package) or "?"
        )
    train, valid = clean_corpus(_iter_documents(sources), stats, valid_fraction)
    random.Random(seed).shuffle(train)
    for split, docs in (("train", train), ("valid", valid)):
        for d in docs:
            s = stats.sources[d.source]
            setattr(s, f"{split}_docs", getattr(s, f"{split}_docs") + 1)
            setattr(s, f"{split}_words", getattr(s, f"{split}_words") + d.words)
            setattr(s, f"{split}_chars", getattr(s, f"{split}_chars") + len(d.text))
    write_documents(stats.train_path, (d.text for d in train))
    write_documents(stats.valid_path, (d.text for d in valid))
    (out_dir / "stats.json").write_text(stats.to_json() + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.txt/valid.txt")
    parser.add_argument("--valid-fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed of the training docs")
    parser.add_argument(
        "--install", action="store_true", help="apt-get install missing packages (needs root)"
    )
    args = parser.parse_args(argv)
    try:
        stats = build_corpus(args.out, args.valid_fraction, args.seed, args.install)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{'source':<18}{'train docs':>11}{'train words':>13}{'valid docs':>11}{'valid words':>13}"
    )
    for name, s in stats.sources.items():
        print(
            f"{name:<18}{s.train_docs:>11}{s.train_words:>13}{s.valid_docs:>11}{s.valid_words:>13}"
        )
    print(f"{'total':<18}{'':>11}{stats.train_words:>13}{'':>11}{stats.valid_words:>13}")
    print(f"wrote {stats.train_path} and {stats.valid_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
