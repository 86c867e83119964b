"""/v1/kb: the knowledge bases served (serve.kb), the passages retrieval finds (/search), and one grounded answer
(/ask), given exactly as `camelid kb ask` gives it: both go through camelid/rag/answer.py's `answer_params`,
`prepare` and `Grounding.reply`. Only the generation between them is the server's: it counts against the
caller's key and stops when the caller disconnects."""

from __future__ import annotations

import asyncio

from fastapi import Request

from camelid.rag.answer import answer_params, prepare
from camelid.rag.prompt import citations
from camelid.rag.retrieve import search
from camelid.rag.store import KnowledgeBase
from camelid.serve.protocol import ApiError, KbAsk, KbSearch, usage
from camelid.serve.runtime import Api
from camelid.utils import CamelidError


def listing(api: Api) -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "knowledge_base",
                "model": f"kb:{name}",
                "documents": len(docs),
                "chunks": sum(d["chunks"] for d in docs),
                "encoder": kb.meta["embedding_model"],
            }
            for name, kb in api.kbs.items()
            for docs in [kb.documents()]
        ],
    }


async def find(api: Api, name: str, kb: KnowledgeBase, r: KbSearch) -> dict:
    hits = await asyncio.to_thread(search, kb, r.query, api.rag, r.retriever, r.top_k)
    return {"object": "list", "kb": name, "query": r.query, "data": citations(hits)}


async def ask(api: Api, request: Request, owner: str, name: str, kb: KnowledgeBase, r: KbAsk):
    """{answer, found, citations, usage}; max_tokens defaults to rag.max_new_tokens within serve.max_tokens."""
    api.check_max_tokens(r.max_tokens)
    sp = answer_params(
        api.rag,
        r.max_tokens or min(api.rag.max_new_tokens, api.cfg.max_tokens),
        r.temperature,
        r.repetition_penalty,
        r.seed,
    )
    try:
        # retrieval blocks (encoder forward, SQLite, faiss): off the event loop
        g = await asyncio.to_thread(
            prepare, kb, api.rag, r.question, api.render, api.engine.max_model_len, sp.max_tokens
        )
    except CamelidError as e:
        raise ApiError(400, str(e), param="question", code="context_length_exceeded") from None
    done = None
    if g.found:
        done = await api.collect(*api.start(request, owner, [g.ids], [sp]))
        if done is None:
            return api.client_gone()
    out = g.reply(done[0].text if done else None)
    return {
        "object": "kb.answer",
        "kb": name,
        "question": r.question,
        "answer": out["answer"],
        "found": out["found"],
        "citations": out["citations"],
        "usage": usage(len(g.ids), done or []),
    }
