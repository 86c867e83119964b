"""/v1/kb: the knowledge bases served (serve.kb, and those made through POST /v1/kb), their documents (list,
upload one as the raw body of PUT /v1/kb/NAME/documents/FILENAME, delete), the passages retrieval finds
(/search), and one grounded answer (/ask), given exactly as `camelid kb ask` gives it: both go through
camelid/rag/answer.py's `answer_params`, `prepare` and `Grounding.reply`. Only the generation between them is the server's: it counts against the
caller's key and stops when the caller disconnects."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fastapi import Request

from camelid.rag.answer import answer_params, prepare
from camelid.rag.prompt import citations
from camelid.rag.readers import SUFFIXES
from camelid.rag.retrieve import search
from camelid.rag.store import KB_NAME, KnowledgeBase, kb_folder, safe_name
from camelid.serve.protocol import ApiError, KbAsk, KbCreate, KbSearch, clip, usage
from camelid.serve.runtime import Api
from camelid.utils import CamelidError


def entry(name: str, kb: KnowledgeBase) -> dict:
    docs = kb.documents()
    return {
        "id": name,
        "object": "knowledge_base",
        "model": f"kb:{name}",
        "documents": len(docs),
        "chunks": sum(d["chunks"] for d in docs),
        "encoder": kb.meta["embedding_model"],
    }


def listing(api: Api) -> dict:
    return {"object": "list", "data": [entry(name, kb) for name, kb in api.kbs.items()]}


async def create(api: Api, r: KbCreate) -> dict:
    """A new knowledge base under rag.root, served from now on; one already there by that name is opened as it is."""
    if not KB_NAME.fullmatch(r.name):
        raise ApiError(
            400,
            f"knowledge base name '{clip(r.name)}' is not allowed: use letters, digits, '.', '_' and '-' "
            "(at most 64, not starting with '.')",
            param="name",
        )
    if r.name in api.kbs:
        raise ApiError(409, f"knowledge base '{r.name}' already exists", param="name", code="kb_exists")
    folder = kb_folder(r.name, api.rag)
    # the encoder loads on first use: off the event loop
    kb = await asyncio.to_thread(KnowledgeBase.open, folder, None if (folder / "kb.json").is_file() else api.rag)
    api.kbs[r.name] = kb
    return entry(r.name, kb)


def documents(api: Api, name: str, kb: KnowledgeBase) -> dict:
    return {"object": "list", "kb": name, "data": kb.documents()}


async def upload(api: Api, request: Request, name: str, kb: KnowledgeBase, filename: str) -> dict:
    """Ingest one document sent as the raw body. It is written to a fresh temporary folder under its checked base
    name and read from there, so nothing outside what was uploaded (a link, another path) is ever read."""
    try:
        stored = safe_name(filename)
    except CamelidError as e:
        raise ApiError(400, str(e), param="filename") from None
    if stored.startswith("."):  # as `kb add` of a folder skips hidden files
        raise ApiError(400, f"'{clip(filename)}': hidden files are not added", param="filename")
    if "/" in stored or not stored.lower().endswith(SUFFIXES):
        raise ApiError(
            400,
            f"'{clip(filename)}': cannot read this kind of file; known: {', '.join(SUFFIXES)}",
            param="filename",
            code="unsupported_file",
        )
    raw = await api.body(request, api.cfg.max_upload_bytes, "serve.max_upload_bytes")
    with tempfile.TemporaryDirectory(prefix="camelid-upload-") as tmp:
        path = Path(tmp) / stored
        path.write_bytes(raw)
        report = await asyncio.to_thread(kb.add, [str(path)], api.rag, False)
    if report.failed:
        raise ApiError(400, f"'{clip(filename)}' was not added: {report.failed[stored]}", code="unreadable_file")
    state = "added" if report.added else "replaced" if report.replaced else "unchanged"
    return {"object": "kb.document", "kb": name, "name": stored, "status": state, "chunks": report.chunks}


async def remove(api: Api, name: str, kb: KnowledgeBase, doc: str) -> dict:
    try:
        removed = await asyncio.to_thread(kb.remove, [doc])
    except CamelidError as e:
        raise ApiError(404, str(e), param="document", code="document_not_found") from None
    return {"object": "kb.document.deleted", "kb": name, "deleted": removed}


async def find(api: Api, name: str, kb: KnowledgeBase, r: KbSearch) -> dict:
    hits = await asyncio.to_thread(search, kb, r.query, api.rag, r.retriever, r.top_k, api.judge)
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
            prepare, kb, api.rag, r.question, api.render, api.engine.max_model_len, sp.max_tokens, api.judge
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
