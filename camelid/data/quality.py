"""Text normalization and heuristic quality rules for `camelid clean`: small pure functions.

A normalizer maps text → text; a rule maps text → a reason string (the document goes) or None (it stays).
Lengths and shares are counted in *units*: a CJK character, or a run of letters/digits of any other script.
One Chinese character carries about as much as one English word, so one threshold fits both languages
without word segmentation.

    text = normalize(raw, nfkc=True, t2s=None)
    reason = length(text, 10, 0) or symbol_heavy(text, 0.2) or ...    # None: the document stays
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable

import numpy as np

# Han ideographs: 〇 (the ideographic zero), the URO, extension A, compatibility ideographs, and extensions B-F in
# plane 2.
HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
UNIT = re.compile(rf"[{HAN}]|[^\W_{HAN}]+")
_HAN = re.compile(rf"[{HAN}]")
_ASCII_UNIT = re.compile(r"[a-z0-9]+")  # UNIT on lowercased ASCII text: runs of letters and digits
_LATIN_WORD = re.compile(r"[0-9]*[A-Za-z\u00c0-\u024f][0-9A-Za-z\u00c0-\u024f]*")
_DIGITS_ONLY = re.compile(rf"(?<![^\W_{HAN}])[0-9]+(?![^\W_{HAN}])")
_DIGIT = re.compile(r"\d")
# Punctuation ordinary prose uses (ASCII, and the Chinese marks NFKC does not fold); everything else that is
# not a letter, digit or space counts as a symbol.
_PROSE_PUNCT = ".,;:!?'\"()\\[\\]{}\\-–—/&%*#@…·、。，！？：；（）～“”‘’《》〈〉【】「」『』〔〕"
_SYMBOL = re.compile(rf"[^\w\s{_PROSE_PUNCT}]|_")
# Invisible characters that break matching and dedup without showing: C0 controls but tab/newline, DEL,
# zero-width spaces/joiners, direction marks, BOM.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2060\ufeff]")
# Chinese writes the zero of years and numbers as 〇 (a Han character) and very often as ○ (U+25CB, a white circle
# from the geometric shapes): 二○○○年. The rules read a circle inside a run of Chinese numerals as 〇, so it counts
# as a character, not a symbol; a circle elsewhere (○○○ bullets, ○ marks in a table) stays a symbol.
_ZH_NUMERALS = "〇零一二三四五六七八九十百千万亿两"
_CIRCLE_ZERO = re.compile(f"○+(?=[{_ZH_NUMERALS}])|(?<=[{_ZH_NUMERALS}])○+")
_BLANK_LINES = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


# Full-width marks Chinese prose is written with (GB/T 15834): NFKC would turn them into ASCII, and a model trained
# on the result writes Chinese with half-width commas. Everything else full-width (ＡＢＣ１２３％) is folded.
_ZH_PUNCT = re.compile("([，！？：；（）～]+)")


def normalize(text: str, nfkc: bool = True, t2s: Callable[[str], str] | None = None) -> str:
    """NFKC (full-width letters and digits → ASCII, ligatures and compatibility forms folded; Chinese full-width
    punctuation kept), optional Traditional → Simplified, invisible characters removed, CRLF → LF, trailing
    spaces and runs of blank lines trimmed."""
    if nfkc and not text.isascii():  # NFKC leaves ASCII as it is
        parts = _ZH_PUNCT.split(text)  # odd indexes are the kept marks
        text = "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
    if t2s is not None:
        text = t2s(text)
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("\n", text)).strip()


def read_zeros(text: str) -> str:
    """`text` with each ○ in a run of Chinese numerals read as 〇 (二○○○年 → 二〇〇〇年); same length, so shares of
    characters do not move. What the rules see; the document itself is written out unchanged."""
    return _CIRCLE_ZERO.sub(lambda m: "〇" * len(m.group()), text) if "○" in text else text


@functools.lru_cache(maxsize=4)  # several rules ask for the same document's units in a row; the result is shared
def units(text: str) -> list[str]:
    """CJK characters and words of other scripts, lowercased: what lengths, repeats and n-grams count.
    The list is cached and shared: do not modify it."""
    if text.isascii():  # the same units, by a simpler pattern (~1.4x faster on English)
        return _ASCII_UNIT.findall(text.lower())
    return UNIT.findall(read_zeros(text).lower())


@functools.lru_cache(maxsize=1024)  # a chunk's worth: rules batched over a chunk ask again after the others ran
def unit_count(text: str) -> int:
    return len(units(text))


def forget_texts() -> None:
    """Drop the per-text caches: they hold their texts, up to a chunk's worth, which a worker should not carry on."""
    for cached in (units, unit_count, _non_space, script_counts):
        cached.cache_clear()


def spans_by_chars(texts: list[str], limit: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive texts holding <= `limit` characters together (a longer text alone): the
    batches numpy work goes through, so its temporaries stay in cache instead of growing with a chunk."""
    spans, start, size = [], 0, 0
    for i, t in enumerate(texts):
        if i > start and size + len(t) > limit:
            spans.append((start, i))
            start, size = i, 0
        size += len(t)
    if start < len(texts):
        spans.append((start, len(texts)))
    return spans


_powers_of: dict[int, np.ndarray] = {}


def _powers(base: int, size: int) -> np.ndarray:
    """base^0 .. base^(size-1) mod 2^64 (at least), kept per base and grown by doubling up to 4M values (32 MB);
    a longer document's are made for it alone, so one huge document does not stay in a worker's memory."""
    have = _powers_of.get(base)
    if have is None or len(have) < size:
        grown = np.full(max(size, 2 * len(have) if have is not None else 1024), base, dtype=np.uint64)
        grown[0] = 1
        have = np.cumprod(grown)  # wraps mod 2^64, as the hashes do
        if len(have) <= 1 << 22:
            _powers_of[base] = have
    return have


def window_hashes(values: np.ndarray, n: int, base: np.uint64) -> np.ndarray:
    """The polynomial hash of every n-window of uint64 `values`, sum_j values[i+j] * base^(n-1-j) mod 2^64 (what
    n rounds of h = h * base + values[i+j] give), from prefix sums in a fixed number of numpy passes however long
    the window: base is odd, so it has an inverse mod 2^64 and a window is a difference of two prefixes."""
    m = len(values) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    inverse = pow(int(base), -1, 1 << 64)
    prefix = np.zeros(len(values) + 1, dtype=np.uint64)
    np.cumsum(values * _powers(inverse, len(values))[: len(values)], out=prefix[1:])
    return _powers(int(base), len(values) + n)[n - 1 : n - 1 + m] * (prefix[n:] - prefix[:m])


# ------------------------------------------------------------------------------------------ rules


def length(text: str, min_units: int, max_units: int) -> str | None:
    n = unit_count(text)
    if n < min_units:
        return f"{n} units < {min_units}"
    if max_units and n > max_units:
        return f"{n} units > {max_units}"
    return None


@functools.lru_cache(maxsize=4)
def _non_space(text: str) -> int:
    return sum(map(len, text.split()))  # str.split's whitespace is exactly \s's, and it builds no match list


def _share(pattern: re.Pattern, text: str) -> float:
    chars = _non_space(text)
    return len(pattern.findall(text)) / chars if chars else 0.0


def symbol_heavy(text: str, max_share: float) -> str | None:
    share = _share(_SYMBOL, read_zeros(text))
    return f"symbols {share:.2f} > {max_share}" if share > max_share else None


def digit_heavy(text: str, max_share: float) -> str | None:
    share = _share(_DIGIT, text)
    return f"digits {share:.2f} > {max_share}" if share > max_share else None


def repeated_lines(text: str, max_share: float) -> str | None:
    """The share of characters in lines that repeat an earlier line of the document (menus, banners, spam;
    Gopher's duplicate-line character fraction). Characters, not lines: a play repeats its speakers' names
    ("Ham.") hundreds of times, short lines that must not condemn it."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 3:  # two equal lines prove nothing
        return None
    seen, repeated = set(), 0
    for line in lines:
        if line in seen:
            repeated += len(line)
        seen.add(line)
    share = repeated / sum(map(len, lines))
    return f"repeated lines {share:.2f} of characters > {max_share}" if share > max_share else None


_MIX = np.uint64(0x9E3779B97F4A7C15)


def repeated_ngrams(text: str, n: int, max_share: float) -> str | None:
    """n-unit windows that repeat an earlier window of the same document (boilerplate, keyword spam)."""
    toks = units(text)
    if len(toks) < 2 * n:
        return None
    # Python's str hash is salted per process but stable within it, which is all one document needs.
    ids = np.fromiter(map(hash, toks), dtype=np.int64, count=len(toks)).view(np.uint64)
    h = window_hashes(ids, n, _MIX)
    h.sort()  # distinct values by sorting: np.unique's hash table costs ~3x on numpy 2.4
    share = 1 - (1 + np.count_nonzero(h[1:] != h[:-1])) / len(h)
    return f"repeated {n}-grams {share:.2f} > {max_share}" if share > max_share else None


@functools.lru_cache(maxsize=1024)  # small values; the keys are the chunk's texts, alive anyway
def script_counts(text: str) -> Counter:
    """Units per script: zh (Han characters), en (Latin-script words), other (words of other scripts); numbers
    count for none. Cached and shared: do not modify it."""
    if text.isascii():  # every unit is then a Latin word or a number: two passes saved
        numbers = len(_DIGITS_ONLY.findall(text)) if _DIGIT.search(text) else 0
        return Counter(zh=0, en=unit_count(text) - numbers, other=0)
    han = len(_HAN.findall(read_zeros(text)))
    latin = len(_LATIN_WORD.findall(text))
    numbers = len(_DIGITS_ONLY.findall(text)) if _DIGIT.search(text) else 0  # the lookarounds cost a full pass
    other = unit_count(text) - han - latin - numbers
    return Counter(zh=han, en=latin, other=max(other, 0))


def language(text: str, languages: list[str], min_share: float) -> str | None:
    """The share of a document's letter units written in the scripts of `languages` (zh: Han, en: Latin)."""
    counts = script_counts(text)
    total = sum(counts.values())
    share = sum(counts[lang] for lang in languages) / total if total else 0.0
    if share >= min_share:
        return None
    mix = ", ".join(f"{k} {v / total:.2f}" for k, v in counts.items() if v) if total else "no letters"
    return f"{'+'.join(languages)} share {share:.2f} < {min_share} ({mix})"
