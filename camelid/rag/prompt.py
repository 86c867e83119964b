"""The grounded prompt (numbered sources + the question, within a token budget) and the citations answered
with it. The instruction travels in the user turn, not the system prompt, so a conversation's own system
prompt stays as the client sent it, and templates without a system role (Gemma) work the same."""

from __future__ import annotations

import re
from collections.abc import Callable

from camelid.rag.retrieve import Hit
from camelid.rag.terms import has_cjk

INSTRUCTION = {
    "en": "Answer the question using only the numbered sources below, and cite the ones you use as [1], [2]. "
    "If the sources do not contain the answer, say that you do not know.",
    "zh": "只根据下面编号的资料回答问题，并用 [1]、[2] 标注所用的资料。资料里没有答案时，就说不知道。",
}
NOT_FOUND = {
    "en": "I could not find anything about this in the knowledge base.",
    "zh": "知识库中没有找到与这个问题相关的内容。",
}
HEADERS = {"en": ("Sources", "Question"), "zh": ("资料", "问题")}


def lang(text: str) -> str:
    return "zh" if has_cjk(text) else "en"


def not_found(question: str) -> str:
    return NOT_FOUND[lang(question)]


def label(chunk: dict) -> str:
    """'guide.md › Install, lines 12-20' or 'manual.pdf, p. 3': what a reader needs to find the passage."""
    where = " › ".join([chunk["source"], *chunk["heading"]])
    unit = "p." if chunk["kind"] == "page" else "line" if chunk["start"] == chunk["end"] else "lines"
    unit = "pp." if unit == "p." and chunk["start"] != chunk["end"] else unit
    span = str(chunk["start"]) if chunk["start"] == chunk["end"] else f"{chunk['start']}-{chunk['end']}"
    return f"{where}, {unit} {span}"


def user_turn(question: str, chunks: list[dict], instruction: str = "") -> str:
    lg = lang(question)
    sources = "\n\n".join(f"[{n}] {label(c)}\n{c['text']}" for n, c in enumerate(chunks, 1))
    head_sources, head_question = HEADERS[lg]
    return f"{instruction or INSTRUCTION[lg]}\n\n{head_sources}:\n\n{sources}\n\n{head_question}: {question}"


def grounded(
    question: str,
    hits: list[Hit],
    history: list[dict],
    count: Callable[[list[dict]], int],
    budget: int,
    instruction: str = "",
) -> tuple[list[dict], list[Hit]]:
    """Messages = history + one user turn with as many hits (in order) as fit in `budget` prompt tokens.
    A hit too long to fit is skipped so a shorter one after it can still go in. Returns (messages, hits used)."""
    used: list[Hit] = []
    for h in hits:
        trial = history + [{"role": "user", "content": user_turn(question, [x.chunk for x in used + [h]], instruction)}]
        if count(trial) <= budget:
            used.append(h)
    return history + [{"role": "user", "content": user_turn(question, [x.chunk for x in used], instruction)}], used


def citations(used: list[Hit], answer: str | None = None) -> list[dict]:
    """One entry per source in the prompt, numbered as there; `cited` says whether the answer refers to it."""
    refs = {int(n) for n in re.findall(r"\[(\d+)\]", answer or "")}
    out = []
    for n, h in enumerate(used, 1):
        c = h.chunk
        out.append(
            {
                "index": n,
                "source": c["source"],
                "chunk": c["chunk"],
                "heading": c["heading"],
                "kind": c["kind"],
                "start": c["start"],
                "end": c["end"],
                "label": label(c),
                "text": c["text"],
                "score": round(h.score, 6),
                "similarity": None if h.similarity is None else round(h.similarity, 4),
                "bm25": None if h.bm25 is None else round(h.bm25, 4),
                "term_share": round(h.term_share, 4),
                "rerank": h.rerank,
                **({"cited": n in refs} if answer is not None else {}),
            }
        )
    return out
