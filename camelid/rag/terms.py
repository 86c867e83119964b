"""Words for BM25 in Chinese and English: jieba's search-engine segmentation, lower-cased, punctuation and
stop words dropped. SQLite's FTS5 then stems the Latin words (porter) for both the index and the query."""

from __future__ import annotations

import logging
import re
import unicodedata

from camelid.data.quality import HAN
from camelid.utils import require

# Function words that match almost every chunk: in a question they only add noise to BM25 and to the
# share-of-question-matched relevance test.
STOP = set(
    """
a an the and or but if of to in on at by for with from as is are was were be been being am do does did done
have has had having it its this that these those there here what which who whom whose when where why how
i me my we our you your he him his she her they them their not no yes so than then too very can could
will would shall should may might must about into over under again more most some any all each both such
only own same just also up down out off per vs via don doesn didn isn aren wasn ll ve re
的 了 是 在 和 与 及 或 有 也 都 就 而 被 把 对 从 向 之 其 这 那 这个 那个 这些 那些 一个 什么 哪 哪些 哪个 哪里
怎么 怎样 如何 为什么 为何 谁 吗 呢 吧 啊 呀 么 多少 几 请 请问 是否 能否 可以 会 要 吧 我 你 他 她 它 我们 你们 他们
""".split()
)

_WORD = re.compile(r"[0-9a-z\u3400-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[a-z]")
_HAN = re.compile(f"[{HAN}]")
_jieba = None


def _segmenter():
    global _jieba
    if _jieba is None:
        jieba = require("jieba", "rag")

        jieba.setLogLevel(logging.WARNING)  # it announces building its prefix dictionary on every process start
        _jieba = jieba
    return _jieba


def terms(text: str) -> list[str]:
    """Index terms of `text`, in order; overlapping sub-words of long Chinese words included (cut_for_search),
    so "人民日报" also matches a question that says "人民" or "日报". NFKC first: Chinese text writes digits and
    Latin letters full-width (１９９８, ＣＣＴＶ) where a question types them plain."""
    words = (t.strip().lower() for t in _segmenter().cut_for_search(unicodedata.normalize("NFKC", text)))
    # single Latin letters are the leftovers of contractions (king's, don't) and initials: noise to BM25
    return [w for w in words if w and w not in STOP and _WORD.search(w) and not _LETTER.fullmatch(w)]


def query_terms(text: str) -> list[str]:
    """The distinct terms of a question, first occurrence first."""
    return list(dict.fromkeys(terms(text)))


def has_cjk(text: str) -> bool:
    return _HAN.search(text) is not None
