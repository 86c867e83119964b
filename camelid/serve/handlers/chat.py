"""POST /v1/chat/completions: whole or streamed, n choices, logprobs, and two additions to OpenAI's API.

- `session_id`: the server keeps the conversation; the client sends only its new messages. When the history
  would overflow the context the oldest exchanges drop out of the prompt (never out of the stored session).
- A knowledge base (model "kb:<name>", or the model's own id and the field `"kb": "<name>"`): the last user turn is
  answered from it (camelid/rag/answer.py). The reply carries `citations`, numbered as the sources in the prompt
  (on the first chunk when streaming), and is the "not found" sentence, without generating, when nothing
  relevant is retrieved.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from camelid.engine import Completion
from camelid.rag.answer import ground, prompt_budget
from camelid.rag.prompt import citations, not_found
from camelid.rag.store import KnowledgeBase
from camelid.serve.protocol import (
    ApiError,
    ChatRequest,
    chat_choice,
    chat_chunk,
    chat_completion,
    logprob_items,
    session_deleted,
    usage,
    usage_chunk,
)
from camelid.serve.runtime import Api, seeded
from camelid.serve.sessions import window_history
from camelid.utils import CamelidError


def session_prompt(
    api: Api, owner: str, r: ChatRequest, max_tokens: int, grounded_turn: dict | None = None
) -> tuple[list[int], list[dict], int | None]:
    """The prompt for a session turn: stored history + new messages, windowed to fit; returns the new window.
    `grounded_turn` stands in for the last new message in the prompt; the session keeps the message as sent."""
    sess = api.session(owner, r.session_id)
    history, sent = sess["messages"], [m.plain() for m in r.messages]
    new = sent[:-1] + [grounded_turn] if grounded_turn else sent
    ids, window = window_history(history, new, sess["window"], api.render, api.engine.max_model_len - max_tokens)
    if not api.fits(len(ids), max_tokens):
        raise api.too_long(len(ids), max_tokens)
    return ids, sent, window


async def grounded_turn(api: Api, kb: KnowledgeBase, r: ChatRequest, max_tokens: int) -> tuple[dict | None, list]:
    """The last user message with its retrieved sources, and the hits used ((None, []) when none is relevant)."""
    messages = [m.plain() for m in r.messages]
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise ApiError(400, "with a knowledge base the last message must be a non-empty user message", param="messages")
    budget = prompt_budget(api.engine.max_model_len, api.rag, max_tokens)
    # With a session, half for the sources if one fits there: the stored history windows into the rest.
    history, budgets = ([], [budget // 2, budget]) if r.session_id else (messages[:-1], [budget])
    try:
        # retrieval blocks (encoder forward, SQLite, faiss): off the event loop
        grounded, used = await asyncio.to_thread(
            ground, kb, api.rag, history + messages[-1:], lambda m: len(api.render(m)), budgets, api.judge
        )
    except CamelidError as e:
        raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
    return (grounded[-1] if grounded else None), used


def _head(r: ChatRequest) -> dict:
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "created": int(time.time()),
        "model": r.model,
        **({"session_id": r.session_id} if r.session_id else {}),
    }


async def complete(api: Api, request: Request, owner: str, r: ChatRequest):
    kb = api.check_model(r.model, r.kb)
    max_tokens = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
    sp = api.params(r, max_tokens, r.logprobs, r.top_logprobs)
    grounded, used = await grounded_turn(api, kb, r, sp.max_tokens) if kb else (None, [])
    if kb and grounded is None:
        return nothing_found(api, owner, r)
    new, window, turn = None, None, None
    if r.session_id:
        if r.n > 1:
            raise ApiError(400, "'n' must be 1 with a session: a session keeps one reply per turn", param="n")
        ids, new, window = session_prompt(api, owner, r, sp.max_tokens, grounded)
        turn = api.begin_turn(owner, r.session_id)
    else:
        messages = [m.plain() for m in r.messages]
        ids = api.render(messages[:-1] + [grounded] if grounded else messages)
        if not api.fits(len(ids), sp.max_tokens):
            raise api.too_long(len(ids), sp.max_tokens)
    try:
        reqs, queue = api.start(request, owner, [ids] * r.n, seeded(sp, r.n), turn=turn)
    except ApiError:
        api.end_turn(turn)
        raise
    head = _head(r)

    def save(c: Completion) -> None:
        if not r.session_id or c.finish_reason not in ("stop", "length"):
            return
        try:
            if turn.deleted:  # and maybe created anew since: the reply belongs to the deleted one
                raise KeyError(r.session_id)
            api.store.append(owner, r.session_id, new + [{"role": "assistant", "content": c.text}], window)
        except KeyError:
            raise session_deleted(r.session_id) from None

    def logprobs(entries: list[dict]) -> list[dict] | None:
        return logprob_items(api.engine.token_bytes, entries) if r.logprobs else None

    if not r.stream:
        try:
            done = await api.collect(reqs, queue, turn)
            if done is None:
                return api.client_gone()
            save(done[0])
        finally:
            api.end_turn(turn)
        choices = [chat_choice(i, c.text, c.finish_reason, logprobs(c.logprobs)) for i, c in enumerate(done)]
        cites = citations(used, done[0].text) if kb else None
        return JSONResponse(chat_completion(head, choices, usage(len(ids), done), cites))

    async def events():
        try:
            for i in range(r.n):
                yield chat_chunk(
                    head, i, {"role": "assistant", "content": ""}, cites=citations(used) if kb and i == 0 else None
                )
            async for i, out in api.outputs(reqs, queue, turn):
                if out.text or out.finished or out.logprobs:
                    yield chat_chunk(
                        head, i, {"content": out.text} if out.text else {}, out.finish_reason, logprobs(out.logprobs)
                    )
            if not all(q.finished for q in reqs):  # the client went away
                return
            done = [q.result() for q in reqs]
            save(done[0])
            if r.stream_options and r.stream_options.include_usage:
                yield usage_chunk(head, "chat.completion.chunk", usage(len(ids), done))
        finally:
            api.end_turn(turn)

    return api.sse_response(events())


def nothing_found(api: Api, owner: str, r: ChatRequest):
    """The answer when the knowledge base holds nothing relevant: said plainly, without the model."""
    text = not_found(r.messages[-1].plain()["content"])
    if r.session_id:
        api.session(owner, r.session_id)
        api.store.append(
            owner, r.session_id, [m.plain() for m in r.messages] + [{"role": "assistant", "content": text}], None
        )
    head, none = _head(r), usage(0, [])
    if not r.stream:
        choices = [chat_choice(i, text, "stop") for i in range(r.n)]
        return JSONResponse(chat_completion(head, choices, none, cites=[]))

    async def events():
        for i in range(r.n):
            yield chat_chunk(head, i, {"role": "assistant", "content": text}, "stop", cites=[] if i == 0 else None)
        if r.stream_options and r.stream_options.include_usage:
            yield usage_chunk(head, "chat.completion.chunk", none)

    return api.sse_response(events())
