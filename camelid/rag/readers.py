"""Documents into structured blocks: paragraphs of .txt, .md, .html, .pdf and .jsonl files, each with the
heading path in force and the line (or PDF page) where it starts, so a retrieved chunk can cite its source."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from camelid.utils import CamelidError, require

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass
class Block:
    text: str  # one paragraph, stripped, non-empty; never a heading itself
    heading: tuple[str, ...]  # heading path in force, outermost first
    kind: str  # "line" or "page": what `loc` counts
    loc: int  # 1-based line where the paragraph starts (for .jsonl the record's line), or 1-based PDF page
    section: int = 0  # blocks of different sections never share a chunk (each .jsonl record is its own)


def read_blocks(path: Path, name: str | None = None) -> list[Block]:
    """The paragraphs of one document; `name` (default the file name) is what error messages call it."""
    path = Path(path)
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _read_pdf(path, name)
    if suffix not in SUFFIXES:
        raise CamelidError(f"{name}: cannot read '{suffix or 'no suffix'}' files; known: {', '.join(SUFFIXES)}")
    text = _decode(path, name)
    if suffix == ".txt":
        return [Block(t, (), "line", n) for n, t in _paragraphs(text.split("\n"))]
    if suffix in (".md", ".markdown"):
        return _read_markdown(text)
    if suffix in (".html", ".htm"):
        parser = _HtmlBlocks()
        parser.feed(text)
        parser.close()
        return parser.blocks
    return _read_jsonl(text, name)


def _decode(path: Path, name: str) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CamelidError(f"{name}: not UTF-8 text (byte {e.start}); convert it to UTF-8 first") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _paragraphs(lines: list[str], first: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, text) of each run of non-blank lines; inner newlines are kept (verse, lists)."""
    start, buf = 0, []
    for n, line in enumerate(lines + [""], first):
        if line.strip():
            start = start if buf else n
            buf.append(line)
        elif buf:
            yield start, "\n".join(buf).strip()
            buf = []


def _push(stack: list[tuple[int, str]], level: int, title: str) -> None:
    # A level-n heading closes every open heading of level >= n.
    while stack and stack[-1][0] >= level:
        stack.pop()
    if title:
        stack.append((level, title))


# --- Markdown ---------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LINKDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_DELIM_CELL = r"[ \t]*:?-+:?[ \t]*"
_TABLE_DELIM = re.compile(rf"^ {{0,3}}\|?{_DELIM_CELL}(?:\|{_DELIM_CELL})*\|?[ \t]*$")
_PIPE = re.compile(r"(?<!\\)\|")  # a cell border; "\|" is a pipe inside a cell


def _inline(text: str) -> str:
    # Images before links, so a linked image `[![alt](img)](url)` comes out as its alt text.
    return _LINK.sub(r"\1", _IMAGE.sub(r"\1", text)).strip()


def _cells(row: str) -> int:
    """How many cells a table row has: its unescaped pipes divide it, less the optional ones at either end."""
    row = row.strip().removeprefix("|")
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(_PIPE.split(row))


def _table_at(lines: list[str], i: int) -> bool:
    """Whether a GFM table starts at lines[i]: a header row, then a delimiter row (|---|:--:|) of as many cells."""
    if i + 1 >= len(lines) or not _PIPE.search(lines[i]) or not _PIPE.search(lines[i + 1]):
        return False
    return bool(_TABLE_DELIM.match(lines[i + 1])) and _cells(lines[i]) == _cells(lines[i + 1])


def split_table(text: str) -> tuple[list[str], list[str]] | None:
    """(header row and delimiter row, body rows) when `text` is a Markdown table, else None."""
    lines = text.split("\n")
    return (lines[:2], lines[2:]) if _table_at(lines, 0) else None


def _read_markdown(text: str) -> list[Block]:
    lines = text.split("\n")
    i = 0
    if lines and lines[0].strip() == "---":  # YAML front matter, only at the very start
        end = next((k for k in range(1, len(lines)) if lines[k].strip() in ("---", "...")), None)
        i = end + 1 if end is not None else 0
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0

    def flush(code: bool = False) -> None:
        body = "\n".join(buf).strip() if code else _inline("\n".join(buf))
        if body:
            blocks.append(Block(body, tuple(t for _, t in stack), "line", start))
        buf.clear()

    while i < len(lines):
        line, n = lines[i], i + 1
        fence = _FENCE.match(line)
        if fence:
            # A fenced block is one paragraph, taken verbatim: nothing in it is a heading or a blank-line break.
            flush()
            mark, start = fence.group(1), n
            buf.append(line)
            i += 1
            while i < len(lines):
                buf.append(lines[i])
                close = lines[i].strip()
                i += 1
                # The closing fence: the same character, at least as many, nothing else on the line.
                if len(close) >= len(mark) and set(close) == {mark[0]}:
                    break
            flush(code=True)
            continue
        if _table_at(lines, i):
            # A table is a block of its own, of whole rows (the chunker splits it only between rows). It ends the
            # paragraph above it, as in GFM, and is taken before headings: a header row "# | Name" is no heading,
            # and a "---" under the last row is a rule, not a setext underline. Rows here keep a "|".
            flush()
            start = n
            while i < len(lines) and _PIPE.search(lines[i]):
                buf.append(lines[i])
                i += 1
            flush()
            continue
        atx = _ATX.match(line)
        if atx:
            flush()
            title = re.sub(r"(?:^|[ \t]+)#+$", "", (atx.group(2) or "").strip())
            _push(stack, len(atx.group(1)), _inline(title))
        elif _SETEXT.match(line) and buf:
            # The paragraph above an underline is the heading (=== level 1, --- level 2).
            title = _inline(" ".join(s.strip() for s in buf))
            buf.clear()
            _push(stack, 1 if line.strip()[0] == "=" else 2, title)
        elif not line.strip() or _RULE.match(line):
            flush()
        elif not _LINKDEF.match(line):
            start = start if buf else n
            buf.append(line)
        i += 1
    flush()
    return blocks


# --- HTML -------------------------------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "nav", "header", "footer", "aside", "svg", "head", "title"}
_BLOCK = {
    "p",
    "div",
    "li",
    "tr",
    "pre",
    "blockquote",
    "section",
    "article",
    "dd",
    "dt",
    "ul",
    "ol",
    "dl",
    "table",
    "main",
    "body",
    "form",
    "figure",
    "figcaption",
    "hr",
    "address",
    "details",
    "summary",
    "caption",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
}


class _HtmlBlocks(HTMLParser):
    """Collects paragraphs between block-level tags; h1..h6 move the heading path instead of making blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.stack: list[tuple[int, str]] = []
        self.skip: list[str] = []  # open elements whose content is page furniture, not text
        self.parts: list[str] = []
        self.loc = 0
        self.pre = 0
        self.level = 0  # inside <hN> while > 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "body":  # an unclosed <head> ends where the body begins
            self.skip = [t for t in self.skip if t != "head"]
        if tag in _SKIP:
            self.skip.append(tag)
        if self.skip:
            return
        if tag in _BLOCK:
            self.flush()
        if tag == "pre":
            self.pre += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.level = int(tag[1])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skip:
            del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag) :]
            return
        if self.skip:
            return
        if self.level and tag == f"h{self.level}":
            title = re.sub(r"\s+", " ", "".join(self.parts)).strip()
            self.parts.clear()
            _push(self.stack, self.level, title)
            self.level = 0
        elif tag in _BLOCK:
            self.flush()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.level and not self.loc and data.strip():
            # getpos() is where this data starts; the text itself may follow some newlines.
            lead = data[: len(data) - len(data.lstrip())]
            self.loc = self.getpos()[0] + lead.count("\n")
        self.parts.append(data if self.pre or self.level else re.sub(r"\s+", " ", data))

    def flush(self) -> None:
        if self.level:  # a block tag inside a heading: keep collecting the heading
            return
        raw = "".join(self.parts)
        self.parts.clear()
        if self.pre:
            text = raw.strip()
        else:
            text = re.sub(r"[^\S\n]+", " ", raw)
            text = "\n".join(filter(None, (s.strip() for s in text.split("\n"))))
        if text.strip():
            self.blocks.append(Block(text, tuple(t for _, t in self.stack), "line", self.loc))
        self.loc = 0

    def close(self) -> None:
        super().close()
        self.flush()


# --- PDF --------------------------------------------------------------------------------------------------------

_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_PARA_END = tuple('.!?:。！？：”"')


def _read_pdf(path: Path, name: str) -> list[Block]:
    pypdf = require("pypdf", "rag")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            # Many PDFs are encrypted only to set permissions, with an empty user password: those open.
            try:
                opened = reader.decrypt("")
            except Exception:
                opened = 0
            if not opened:
                raise CamelidError(f"{name}: the PDF is encrypted; save an unencrypted copy first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except CamelidError:
        raise
    except Exception as e:  # pypdf raises many types for damaged or encrypted files
        raise CamelidError(f"{name}: pypdf cannot read this PDF ({type(e).__name__}: {e})") from e
    blocks = []
    for number, page in enumerate(pages, 1):
        page = page.replace("\r\n", "\n").replace("\r", "\n")
        for para in _pdf_paragraphs(page):
            text = _join_lines(para)
            if text:
                blocks.append(Block(text, (), "page", number))
    if not blocks:
        raise CamelidError(f"{name}: the PDF has no text layer (scanned?); run OCR on it first")
    return blocks


def _pdf_paragraphs(page: str) -> list[list[str]]:
    """Lines grouped into paragraphs: by blank lines when the page has them, otherwise a line that ends a
    sentence and falls clearly short of the page's full line width ends its paragraph."""
    lines = [s.strip() for s in page.split("\n")]
    if any(not s for s in lines[1:-1]) and any(lines):
        return [p.split("\n") for _, p in _paragraphs(lines)]
    lines = [s for s in lines if s]
    width = max((len(s) for s in lines), default=0)
    paras: list[list[str]] = [[]]
    for s in lines:
        paras[-1].append(s)
        if s.endswith(_PARA_END) and len(s) < 0.8 * width:
            paras.append([])
    return [p for p in paras if p]


def _join_lines(lines: list[str]) -> str:
    out = ""
    for s in (s.strip() for s in lines):
        if not s:
            continue
        if not out:
            out = s
        elif out.endswith("-") and len(out) > 1 and out[-2].isalpha() and s[0].islower():
            out = out[:-1] + s  # "informa-\ntion": a word broken at the line end
        elif _CJK_CHAR.match(out[-1]) and _CJK_CHAR.match(s[0]):
            out += s  # Chinese has no spaces between words; a line break is not one
        else:
            out += " " + s
    return out


# --- JSON Lines -------------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    """A JSON value's type in JSON's words, for messages about the file rather than about Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _read_jsonl(text: str, name: str) -> list[Block]:
    blocks = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CamelidError(f"{name}:{n}: invalid JSON: {e.msg} (column {e.colno})") from e
        if not isinstance(rec, dict):
            raise CamelidError(f"{name}:{n}: field 'text': the line is {_kind(rec)}, not an object")
        field = "text" if "text" in rec or "content" not in rec else "content"
        body = rec.get(field)
        if not isinstance(body, str):
            what = "missing" if field not in rec else f"{_kind(body)}, not a string"
            raise CamelidError(
                f"{name}:{n}: field '{field}': {what} (each record needs its text in 'text' or 'content')"
            )
        heading: tuple[str, ...] = ()
        title = rec.get("title")
        if title is not None:
            if not isinstance(title, str):
                raise CamelidError(f"{name}:{n}: field 'title': {_kind(title)}, not a string")
            heading = (title.strip(),) if title.strip() else ()
        if rec.get("heading") is not None:
            h = rec["heading"]
            if not isinstance(h, list) or not all(isinstance(t, str) for t in h):
                raise CamelidError(f"{name}:{n}: field 'heading': expected a list of strings")
            heading = tuple(t.strip() for t in h if t.strip())
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        blocks += [Block(t, heading, "line", n, section=n) for _, t in _paragraphs(body.split("\n"))]
    return blocks
