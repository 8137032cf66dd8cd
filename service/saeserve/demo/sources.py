"""The offline English text sources of the demo corpus, and how to read each into documents.

Every source is a Debian package that installs real prose: Jane Austen's six novels
(``r-cran-janeaustenr``, read from R's lazy-load data by :mod:`saeserve.demo.rdata`), the
Python 3.11 documentation, the Debian Administrator's Handbook and the Debian Reference
(HTML, of which only paragraph text is kept), the GNU coding and maintainer standards, the
Jargon File, and the fortune cookie collection. A reader turns its installed files into
:class:`Document` objects, each a list of raw paragraphs; cleaning, deduplication and the
train/validation split happen in :mod:`saeserve.demo.corpus`.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from saeserve.demo.rdata import read_character_vectors


@dataclass(frozen=True)
class Document:
    """One unit of the train/validation split: a chapter, a web page, a fortune."""

    source: str
    """Name of the source it came from (a key of :data:`SOURCES`)."""
    doc_id: str
    """Stable identifier within the source; the split hashes ``source/doc_id``."""
    paragraphs: tuple[str, ...]
    """Raw paragraph texts, not yet cleaned."""


@dataclass(frozen=True)
class Source:
    """A Debian package and the installed path its reader starts from."""

    name: str
    package: str
    path: Path
    read: Callable[[Path], Iterator[Document]]


# --- Jane Austen -------------------------------------------------------------------------

_AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
_CHAPTER = re.compile(r"^\s*(chapter|volume)\b", re.IGNORECASE)
_ITALICS = re.compile(r"(?<!\w)_([^_]+?)_(?!\w)")  # the e-texts mark italics as _word_


def lines_to_paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs separated by blank lines."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def split_chapters(lines: list[str]) -> list[list[str]]:
    """Split a novel's lines at its chapter headings; the headings are dropped."""
    chapters: list[list[str]] = [[]]
    for line in lines:
        if _CHAPTER.match(line) and len(line.split()) <= 4:
            chapters.append([])
        else:
            chapters[-1].append(line)
    return [c for c in chapters if any(s.strip() for s in c)]


def read_austen(data_dir: Path) -> Iterator[Document]:
    """One document per chapter of each novel (the title page is dropped)."""
    novels = read_character_vectors(data_dir)
    for key in sorted(_AUSTEN_TITLES):
        chapters = split_chapters(novels[key])
        for i, chapter in enumerate(chapters[1:], start=1):  # [0] is the title page
            paragraphs = [_ITALICS.sub(r"\1", p) for p in lines_to_paragraphs(chapter)]
            yield Document("austen", f"{key}/{i:03d}", tuple(paragraphs))


# --- HTML manuals ------------------------------------------------------------------------

_SKIP_TAGS = {"pre", "script", "style", "table", "head", "title"}
_SKIP_CLASSES = {
    "sphinxsidebar",
    "related",
    "footer",
    "navheader",
    "navfooter",
    "toc",
    "highlight",
    "screen",
    "programlisting",
}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "wbr", "area", "base"}


class ParagraphExtractor(HTMLParser):
    """Collect the text of ``<p>`` and ``<div class="para">`` elements.

    Text inside code blocks, tables, navigation and sidebars is skipped; inline markup
    (links, ``<code>``, emphasis) keeps its text.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, skips, is_paragraph)
        self._buffers: list[list[str]] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skips = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
        is_para = not skips and (tag == "p" or (tag == "div" and "para" in classes))
        if tag == "p" and self._stack and self._stack[-1][0] == "p":
            self._end_top()  # an unclosed <p> ends at the next one
        self._stack.append((tag, skips, is_para))
        self._skip_depth += skips
        if is_para:
            self._buffers.append([])

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _, _ in self._stack):
            return
        while self._stack:
            top = self._stack[-1][0]
            self._end_top()
            if top == tag:
                break

    def _end_top(self) -> None:
        _, skips, is_para = self._stack.pop()
        self._skip_depth -= skips
        if is_para:
            text = "".join(self._buffers.pop())
            if text.strip():
                self.paragraphs.append(text)

    def handle_data(self, data: str) -> None:
        if self._buffers and not self._skip_depth:
            self._buffers[-1].append(data)

    def close(self) -> None:
        super().close()
        while self._stack:
            self._end_top()


def html_paragraphs(html: str) -> list[str]:
    """The paragraph texts of one HTML page, in order."""
    parser = ParagraphExtractor()
    parser.feed(html)
    parser.close()
    return parser.paragraphs


def _read_html_tree(source: str, root: Path, skip: re.Pattern[str]) -> Iterator[Document]:
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root).as_posix()
        if skip.search(rel):
            continue
        paragraphs = html_paragraphs(page.read_text(encoding="utf-8", errors="replace"))
        if paragraphs:
            yield Document(source, rel, tuple(paragraphs))


# Indexes, search, licences and the generated changelog are not prose.
_PYTHON_SKIP = re.compile(
    r"^(_|genindex|py-modindex|search|copyright|license|download|contents)|whatsnew/changelog"
)


def read_python_docs(root: Path) -> Iterator[Document]:
    """One document per page of the Python HTML documentation."""
    return _read_html_tree("python-docs", root, _PYTHON_SKIP)


def read_debian_handbook(root: Path) -> Iterator[Document]:
    """One document per page of the English Debian Administrator's Handbook."""
    return _read_html_tree("debian-handbook", root, re.compile(r"^(Common_Content|index\.html)"))


def read_debian_reference(root: Path) -> Iterator[Document]:
    """One document per chapter of the English Debian Reference."""
    for page in sorted(root.glob("*.en.html")):
        paragraphs = html_paragraphs(page.read_text(encoding="utf-8", errors="replace"))
        if paragraphs:
            yield Document("debian-reference", page.name, tuple(paragraphs))


def read_gnu_standards(root: Path) -> Iterator[Document]:
    """One document per section (``<h2>``-``<h4>``) of the GNU standards manuals."""
    heading = re.compile(r"<h[2-4][ >]", re.IGNORECASE)
    for page in ("standards.html", "maintain.html"):
        html = (root / page).read_text(encoding="utf-8", errors="replace")
        for i, section in enumerate(heading.split(html)):
            paragraphs = html_paragraphs(section)
            if paragraphs:
                yield Document("gnu-standards", f"{page}/{i:04d}", tuple(paragraphs))


# --- Jargon File and fortunes ------------------------------------------------------------

_JARGON_ENTRY = re.compile(r"^\s{0,4}:([^:]+):\s*(.*)$")
_PRONUNCIATION = re.compile(r"^(/[^/]*/,?\s*)+")


def read_jargon(path: Path) -> Iterator[Document]:
    """One document per Jargon File glossary entry; the head line becomes ``term: pos.``."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace").splitlines()
    entry: str | None = None
    body: list[str] = []
    for line in [*lines, ":end:"]:
        match = _JARGON_ENTRY.match(line)
        if match is None:
            body.append(line)
            continue
        if entry is not None:
            paragraphs = [p.replace("{", "").replace("}", "") for p in lines_to_paragraphs(body)]
            yield Document("jargon", entry, tuple(paragraphs))
        entry = match.group(1).strip()
        part_of_speech = _PRONUNCIATION.sub("", match.group(2))  # "/ak/, interj." -> "interj."
        body = [f"{entry}: {part_of_speech}".strip(), ""]


_FORTUNE_SKIP = {"ascii-art", "translate-me"}


def read_fortunes(root: Path) -> Iterator[Document]:
    """One document per fortune cookie in the English fortune files."""
    for path in sorted(root.iterdir()):
        if path.suffix or not path.is_file() or path.name in _FORTUNE_SKIP:
            continue  # .dat/.u8 are indexes and links
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, cookie in enumerate(re.split(r"^%\s*$", text, flags=re.MULTILINE)):
            paragraphs = lines_to_paragraphs(cookie.expandtabs().splitlines())
            if paragraphs:
                yield Document("fortunes", f"{path.name}/{i:05d}", tuple(paragraphs))


SOURCES: tuple[Source, ...] = (
    Source(
        "austen",
        "r-cran-janeaustenr",
        Path("/usr/lib/R/site-library/janeaustenr/data"),
        read_austen,
    ),
    Source(
        "python-docs", "python3.11-doc", Path("/usr/share/doc/python3.11/html"), read_python_docs
    ),
    Source(
        "debian-handbook",
        "debian-handbook",
        Path("/usr/share/doc/debian-handbook/html/en-US"),
        read_debian_handbook,
    ),
    Source(
        "debian-reference",
        "debian-reference-en",
        Path("/usr/share/debian-reference"),
        read_debian_reference,
    ),
    Source(
        "gnu-standards", "gnu-standards", Path("/usr/share/doc/gnu-standards"), read_gnu_standards
    ),
    Source("jargon", "jargon-text", Path("/usr/share/doc/jargon-text/jargon.txt.gz"), read_jargon),
    Source("fortunes", "fortunes", Path("/usr/share/games/fortunes"), read_fortunes),
)
"""Every source of the demo corpus, in the order its documents are written."""

APT_PACKAGES: tuple[str, ...] = tuple(s.package for s in SOURCES)
"""The Debian packages the corpus is built from (install with ``--no-install-recommends``)."""
