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
_LATIN_WORD = re.compile(r"[0-9]*[A-Za-z\u00c0-\u024f][0-9A-Za-z\u00c0-\u024f]*")
_DIGITS_ONLY = re.compile(rf"(?<![^\W_{HAN}])[0-9]+(?![^\W_{HAN}])")
_SPACE = re.compile(r"\s")
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
    if nfkc:
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
    return UNIT.findall(read_zeros(text).lower())


# ------------------------------------------------------------------------------------------ rules


def length(text: str, min_units: int, max_units: int) -> str | None:
    n = len(units(text))
    if n < min_units:
        return f"{n} units < {min_units}"
    if max_units and n > max_units:
        return f"{n} units > {max_units}"
    return None


@functools.lru_cache(maxsize=4)
def _non_space(text: str) -> int:
    return len(text) - len(_SPACE.findall(text))


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
    ids = np.fromiter((hash(t) for t in toks), dtype=np.int64, count=len(toks)).view(np.uint64)
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for j in range(n):  # polynomial hash of each window, wrapping mod 2^64
        h = h * _MIX + ids[j : len(ids) - n + 1 + j]
    share = 1 - len(np.unique(h)) / len(h)
    return f"repeated {n}-grams {share:.2f} > {max_share}" if share > max_share else None


@functools.lru_cache(maxsize=4)
def script_counts(text: str) -> Counter:
    """Units per script: zh (Han characters), en (Latin-script words), other (words of other scripts); numbers
    count for none. Cached and shared: do not modify it."""
    han = len(_HAN.findall(read_zeros(text)))
    latin = len(_LATIN_WORD.findall(text))
    numbers = len(_DIGITS_ONLY.findall(text))
    other = len(units(text)) - han - latin - numbers
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
