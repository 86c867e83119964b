"""Sentence-aware chunking: blocks of one heading section packed into chunks of at most `size` tokens that end
at sentence (preferably paragraph) ends, with a few trailing sentences of overlap between neighbours.

A Markdown table is no run of sentences: it is kept whole when it fits, else cut between rows into parts that
each repeat the header row and its delimiter row, so every part still says what its columns are."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

from camelid.rag.readers import Block, split_table


@dataclass
class Chunk:
    text: str  # its sentences as in the source; "\n\n" between paragraphs
    heading: tuple[str, ...]
    kind: str  # "line" | "page", from the blocks
    start: int  # loc of the block holding its first sentence
    end: int  # loc of the block holding its last sentence
    n_tokens: int  # sum of its sentences' token counts


_CLOSE = "”’」』）》〉】\"')\\]"
_END = re.compile(f"[。！？!?…．.]+[{_CLOSE}]*")
_FULL = set("。！？…")
_CJK_CHAR = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_SPACE = re.compile(r"\s+")
_WORD_BEFORE = re.compile(r"[A-Za-z][A-Za-z.]*$")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "e.g", "i.e", "vs", "prof", "jr", "sr", "cf", "fig"}
_AFTER = re.compile(r"\s*(\S?)")
_CLAUSE = re.compile(r"[，；：,;:]\s*")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the '.' at `dot` closes an abbreviation or an initial rather than a sentence."""
    m = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
    if not m:
        return False
    word = m.group().lower()
    after = _AFTER.match(text, dot + 1).group(1)
    if word in _ABBREV or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
        return True  # Mr. Smith, e.g. this, U.S. law
    if len(word) == 1 and m.group().isupper():
        return True  # J. Smith
    if word == "no":
        return after.isdigit()  # "No. 5", but "I said no. Then ..." ends
    if word == "etc":
        return not after.isupper()  # "etc. Then" starts a new sentence; "etc. and" does not
    return False


def split_sentences(text: str) -> list[str]:
    """Sentences with the whitespace after each; "".join(pieces) == text."""
    cuts = set()
    for m in _END.finditer(text):
        run, nxt = m.group().rstrip(_CLOSE), text[m.end() : m.end() + 1]
        if _FULL & set(run):
            pass  # 。！？… end a sentence whatever follows
        elif not nxt or nxt.isspace():
            if run == "." and _is_abbreviation(text, m.start()):
                continue
        elif not (set(run) & set("!?") and _CJK_CHAR.match(nxt)):
            continue  # 3.14, example.com, a?b
        ws = _SPACE.match(text, m.end())
        cuts.add(ws.end() if ws else m.end())
    for m in _SPACE.finditer(text):
        if m.group().count("\n") >= 2:  # a blank line ends a paragraph and so a sentence
            cuts.add(m.end())
    pieces, last = [], 0
    for c in sorted(cuts):
        if 0 < c < len(text) and text[last:c].strip():  # leading whitespace joins the first sentence
            pieces.append(text[last:c])
            last = c
    if last < len(text):
        pieces.append(text[last:])
    return pieces


@dataclass
class _Unit:
    text: str  # a sentence (or a piece of a long one) with its trailing whitespace
    tokens: int
    block: int  # index into the section's blocks
    para_end: bool  # the last unit of its block


def chunk_blocks(
    blocks: list[Block], count_tokens: Callable[[list[str]], list[int]], size: int, overlap: int
) -> list[Chunk]:
    """Chunks of at most `size` tokens (by `count_tokens`, called in batches); a chunk never spans two heading
    sections, and starts with the previous chunk's trailing sentences worth at most `overlap` tokens."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"chunking needs size > 0 and 0 <= overlap < size, got size={size} overlap={overlap}")
    chunks: list[Chunk] = []
    for (heading, kind, _), group in groupby(
        (b for b in blocks if b.text.strip()), key=lambda b: (b.heading, b.kind, b.section)
    ):
        section = _split_tables(list(group), count_tokens, size)
        units = _units(section, count_tokens, size)
        for i, j in _pack(units, size, overlap):
            text = ""
            for k in range(i, j):
                if k > i and units[k].block != units[k - 1].block:
                    text = text.rstrip() + "\n\n"
                text += units[k].text
            chunks.append(
                Chunk(
                    text.strip(),
                    heading,
                    kind,
                    section[units[i].block].loc,
                    section[units[j - 1].block].loc,
                    sum(u.tokens for u in units[i:j]),
                )
            )
    return chunks


def _count(count_tokens: Callable[[list[str]], list[int]], texts: list[str]) -> list[int]:
    counts = list(count_tokens(texts)) if texts else []
    if len(counts) != len(texts):
        raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} texts")
    return counts


def _split_tables(blocks: list[Block], count_tokens: Callable[[list[str]], list[int]], size: int) -> list[Block]:
    """`blocks` with each table over `size` tokens replaced by parts (blocks at the table's loc) of as many whole
    rows as fit under a copy of its header. A row too long for that is a part alone, cut later like any text."""
    tables = {k: t for k, b in enumerate(blocks) if (t := split_table(b.text)) and t[1]}
    fits = _count(count_tokens, [blocks[k].text for k in tables])
    big = {k: t for (k, t), n in zip(tables.items(), fits) if n > size}
    # Each line counted with its line break, so that a tokenizer counting breaks does not make the sum too small.
    lines = [line + "\n" for head, rows in big.values() for line in ["\n".join(head), *rows]]
    counts = iter(_count(count_tokens, lines))
    out = []
    for k, b in enumerate(blocks):
        if k not in big:
            out.append(b)
            continue
        head, rows = big[k]
        room, used = size - next(counts), 0
        parts: list[list[str]] = []
        for row in rows:
            n = next(counts)
            if parts and used + n <= room:
                parts[-1].append(row)
                used += n
            else:
                parts.append([row])
                used = n
        out += [Block("\n".join(head + part), b.heading, b.kind, b.loc, b.section) for part in parts]
    return out


def _pieces(text: str) -> list[str]:
    """A block's sentences; a table's rows are not sentences, so a table (or part) is one piece, which the
    oversized-sentence path cuts at clauses only if even one row under its header is over `size`."""
    return [text] if split_table(text) else split_sentences(text)


def _units(section: list[Block], count_tokens: Callable[[list[str]], list[int]], size: int) -> list[_Unit]:
    """The section's sentences with token counts; a sentence over `size` is cut at clauses, then by characters."""
    sents = [(b, s) for b, block in enumerate(section) for s in _pieces(block.text)]
    counts = _count(count_tokens, [s.strip() for _, s in sents])
    # One more batch for the clauses of every oversized sentence.
    clauses = {k: _split_clauses(s) for k, ((_, s), n) in enumerate(zip(sents, counts)) if n > size}
    flat = [c for k in clauses for c in clauses[k]]
    flat_counts = iter(_count(count_tokens, [c.strip() for c in flat]))
    units = []
    for k, ((b, s), n) in enumerate(zip(sents, counts)):
        if k not in clauses:
            units.append(_Unit(s, n, b, False))
            continue
        for c in clauses[k]:
            m = next(flat_counts)
            parts = [(c, m)] if m <= size else _hard_split(c, m, count_tokens, size)
            units += [_Unit(p, pm, b, False) for p, pm in parts]
    for k, u in enumerate(units):
        u.para_end = k + 1 == len(units) or units[k + 1].block != u.block
    return units


def _split_clauses(sentence: str) -> list[str]:
    cuts = [m.end() for m in _CLAUSE.finditer(sentence) if m.end() < len(sentence)]
    return [sentence[a:b] for a, b in zip([0] + cuts, cuts + [len(sentence)])]


def _hard_split(text: str, n: int, count_tokens: Callable[[list[str]], list[int]], size: int) -> list[tuple[str, int]]:
    """Cut `text` (n tokens) into pieces of at most `size` tokens, each cut placed in proportion to the counts
    and shrunk until it fits; at a space when one lies in the cut's second half. A piece is at least one
    character, so a single character worth more than `size` tokens is kept whole rather than looping."""
    parts: list[tuple[str, int]] = []
    exact = True  # whether n is a count of `text` rather than an estimate
    while len(text) > 1:
        if n <= size:
            if exact:
                break
            n, exact = _count(count_tokens, [text.strip()])[0], True
            continue
        cut = max(1, min(len(text) - 1, len(text) * size // n))
        while True:
            space = text.rfind(" ", 0, cut)
            at = space + 1 if space >= cut // 2 and space > 0 else cut
            m = _count(count_tokens, [text[:at].strip()])[0]
            if m <= size or cut == 1:
                break
            cut = max(1, min(cut - 1, cut * size // max(m, 1)))
        parts.append((text[:at], m))
        # Estimate what is left rather than recount it: recounting the rest at each cut is quadratic.
        text, n, exact = text[at:], max(n - m, 1), False
    if not exact:
        n = _count(count_tokens, [text.strip()])[0]
    return parts + [(text, n)] if text.strip() else parts


def _pack(units: list[_Unit], size: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy [i, j) ranges over `units`: each at most `size` tokens, each with at least one unit new."""
    ranges: list[tuple[int, int]] = []
    i = fresh = 0
    while fresh < len(units):
        j, total = i, 0
        while j < len(units) and (total + units[j].tokens <= size or j <= fresh):
            total += units[j].tokens
            j += 1
            if total > size:  # a lone unit over size (one character worth more tokens): ship it alone
                break
        if j < len(units) and not units[j - 1].para_end:
            # Cut mid-paragraph: end at this paragraph's start instead if the chunk is half full by then.
            k = next((k for k in range(j - 1, fresh, -1) if units[k - 1].para_end), None)
            if k is not None and sum(u.tokens for u in units[i:k]) * 2 >= size:
                j = k
        ranges.append((i, j))
        if j == len(units):
            break
        # Overlap: the longest tail of this chunk within `overlap` tokens that still leaves room for unit j.
        s, tail = j, 0
        while (
            s - 1 > i and tail + units[s - 1].tokens <= overlap and tail + units[s - 1].tokens + units[j].tokens <= size
        ):
            s -= 1
            tail += units[s].tokens
        i, fresh = s, j
    return ranges
