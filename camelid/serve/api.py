"""The OpenAI-compatible HTTP API over one Engine: /v1/models, /v1/chat/completions, /v1/completions,
/v1/sessions, /v1/kb, /health, /metrics. Every error has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Beyond OpenAI's request fields: `top_k`, `repetition_penalty`, `ignore_eos`, and `session_id` on chat completions
(the server keeps the conversation; the client sends only its new messages). Unknown fields are refused with a
400 naming them, as OpenAI does.

One client must not hurt another: a call counts each generation it asks for (prompts x n) against its key's
`serve.max_concurrent_per_key`; a client that disconnects has its generations aborted at once, streaming or not;
deleting a session aborts its running turn (409 `session_deleted`); a malformed body is a 4xx naming the field
(schemas.py), and anything unexpected a 500 in OpenAI's shape (`Guard`), each counted in /metrics.

Knowledge bases (`serve.kb`): a chat completion with model "kb:<name>" (or the model's own id and the field
`"kb": "<name>"`) answers its last user turn from that knowledge base: the reply carries `citations`, numbered as
the sources in the prompt (on the first chunk when streaming), and is the "not found" sentence, without
generating, when nothing relevant is retrieved. /v1/kb/{name}/ask answers one question as `camelid kb ask` does;
/v1/kb/{name}/search returns the passages alone.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from camelid.config import RagConfig, ServeConfig
from camelid.data.templates import prompt_ids
from camelid.engine import Completion, Engine, SamplingParams
from camelid.rag.prompt import citations, not_found
from camelid.rag.retrieve import search
from camelid.rag.store import KnowledgeBase
from camelid.serve.kb import ground, prompt_budget
from camelid.serve.schemas import (ApiError, ChatRequest, CompletionRequest, KbAsk, KbSearch, SamplingFields,
                                   SessionCreate, check_content_type, clip, parse)
from camelid.serve.sessions import SessionStore
from camelid.utils import CamelidError

log = logging.getLogger("camelid")

GONE = None  # put in a call's output queue when its client disconnects


def internal_error() -> ApiError:
    return ApiError(500, "internal error", "server_error", code="internal_error")


def _owner(key: str | None) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "local"


@dataclass(eq=False)
class Turn:
    """A session turn being generated; deleting its session aborts it, and it is answered with a 409."""

    owner: str
    sid: str
    reqs: list = field(default_factory=list)
    deleted: bool = False


class Api:
    def __init__(self, engine: Engine, cfg: ServeConfig, model_id: str, store: SessionStore, keys: set[str],
                 kbs: dict[str, KnowledgeBase] | None = None, rag: RagConfig | None = None):
        self.engine, self.cfg, self.model_id, self.store, self.keys = engine, cfg, model_id, store, keys
        self.kbs, self.rag = kbs or {}, rag or RagConfig()
        self.tok = engine.tokenizer
        self.in_flight: dict[str, int] = {}  # unfinished engine requests per key (a call with 3 prompts, n=2: 6)
        self.errors: collections.Counter = collections.Counter()  # (status, kind, sent) -> count
        self.turns: dict[tuple[str, str], list[Turn]] = {}
        self.watchers: set[asyncio.Task] = set()
        self.started = time.time()

    # ---------------------------------------------------------------- plumbing

    async def read(self, request: Request, schema: type[BaseModel]):
        check_content_type(request.headers.get("content-type"))
        raw = bytearray()
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > self.cfg.max_body_bytes:
                    raise ApiError(413, f"request body exceeds {self.cfg.max_body_bytes} bytes",
                                   code="request_too_large")
        except ClientDisconnect:  # gone mid-upload: counted, not logged as an internal error
            raise ApiError(499, "the client disconnected while sending its request", code="client_disconnected") from None
        return parse(bytes(raw), schema)

    def authorize(self, request: Request) -> str:
        if not self.keys:
            return _owner(None)
        header = request.headers.get("authorization", "")
        # as bytes: compare_digest raises on str with non-ASCII characters; a header arrives decoded as latin-1
        given = (header[7:].strip() if header.lower().startswith("bearer ") else "").encode("latin-1")
        key = next((k for k in self.keys if secrets.compare_digest(given, k.encode())), None) if given else None
        if key is None:
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           "authentication_error", code="invalid_api_key")
        return _owner(key)

    def count_error(self, status: int, kind: str, sent: str = "response") -> None:
        self.errors[(status, kind, sent)] += 1

    def check_model(self, name: str, kb: str | None = None) -> KnowledgeBase | None:
        """The knowledge base a request names (model "kb:<name>", or the field `kb`), if any."""
        if name.startswith("kb:") and kb is None:
            kb = name[3:]
        elif name != self.model_id:
            served = ", ".join([f"'{self.model_id}'"] + [f"'kb:{k}'" for k in self.kbs])
            raise ApiError(404, f"model '{clip(name)}' not found; this server serves {served}", param="model",
                           code="model_not_found")
        if kb is None:
            return None
        return self.knowledge_base(kb, "kb" if not name.startswith("kb:") else "model")

    def knowledge_base(self, name: str, param: str = "kb") -> KnowledgeBase:
        if name not in self.kbs:
            known = ", ".join(self.kbs) or "none (start the server with serve.kb=[NAME])"
            raise ApiError(404, f"knowledge base '{clip(name)}' is not served here; served: {known}", param=param,
                           code="kb_not_found")
        return self.kbs[name]

    def params(self, r: SamplingFields, max_tokens: int | None, logprobs: bool, top: int) -> SamplingParams:
        if r.n > self.cfg.max_n:
            raise ApiError(400, f"'n' must be <= {self.cfg.max_n}", param="n")
        if max_tokens is not None and max_tokens > self.cfg.max_tokens:
            raise ApiError(400, f"'max_tokens' must be <= {self.cfg.max_tokens} on this server", param="max_tokens")
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        # Below 1e-5 a temperature samples as greedy: it already is in effect, and dividing float32 logits by a
        # tiny enough one gives inf, then NaN probabilities, which would fail the step of every request batched.
        temperature = 0.0 if r.temperature < 1e-5 else r.temperature
        sp = SamplingParams(
            max_tokens=self.cfg.default_max_tokens if max_tokens is None else max_tokens, temperature=temperature,
            top_p=r.top_p, top_k=r.top_k, repetition_penalty=r.repetition_penalty, presence_penalty=r.presence_penalty,
            frequency_penalty=r.frequency_penalty, stop=stop, seed=r.seed, logprobs=logprobs, top_logprobs=top,
            ignore_eos=r.ignore_eos)
        try:
            sp.check()
        except ValueError as e:
            raise ApiError(400, str(e), param=str(e).split("'")[1]) from None
        return sp

    def render(self, messages: list[dict]) -> list[int]:
        try:
            return prompt_ids(self.tok, messages)
        except Exception as e:  # a template that rejects the conversation (roles, order) says why
            raise ApiError(400, f"the chat template rejected the messages: {e}", param="messages") from None

    def fits(self, n_prompt: int, max_tokens: int) -> bool:
        return n_prompt + max_tokens <= self.engine.max_model_len

    def too_long(self, n_prompt: int, max_tokens: int) -> ApiError:
        return ApiError(400, f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                             f"of {self.engine.max_model_len} tokens", param="messages", code="context_length_exceeded")

    def acquire(self, owner: str, count: int, param: str) -> None:
        """Count a call's generations (prompts x n) against its key's limit: one call with 40 prompts is 40 in
        flight, not one. More than the limit alone can never run (400); more beside what runs waits (429)."""
        limit, busy = self.cfg.max_concurrent_per_key, self.in_flight.get(owner, 0)
        if count > limit:
            raise ApiError(400, f"this request asks for {count} generations (prompts x n) but a key may run at most "
                                f"{limit} at once (serve.max_concurrent_per_key)", param=param,
                           code="too_many_generations")
        if busy + count > limit:
            raise ApiError(429, f"this key has {busy} generations in flight and this request adds {count}; at most "
                                f"{limit} run at once (serve.max_concurrent_per_key)", "rate_limit_error",
                           code="rate_limit_exceeded")
        self.in_flight[owner] = busy + count

    def start(self, request: Request, owner: str, prompts: list[list[int]], params: list[SamplingParams],
              param: str = "n", turn: Turn | None = None):
        """Submit a call's engine requests, delivering into one asyncio queue as (choice index, Output). Each
        counts against its key until its engine request finishes (not until a response body is closed: a stream
        whose client left before its first byte never runs that code). A watcher aborts them all as soon as the
        client disconnects, streaming or not."""
        self.acquire(owner, len(prompts), param)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(i: int, out) -> None:  # on the event loop
            if out.finished:
                self.in_flight[owner] -= 1
            queue.put_nowait((i, out))

        reqs = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params)):
                reqs.append(self.engine.submit(p, sp, owner=owner,
                                               on_output=lambda o, i=i: loop.call_soon_threadsafe(deliver, i, o)))
        except (ValueError, RuntimeError) as e:
            self.in_flight[owner] -= len(prompts) - len(reqs)  # the submitted ones are released as they abort
            self.cancel(reqs)
            if isinstance(e, RuntimeError):
                raise ApiError(503, str(e), "server_error", code="shutting_down") from None
            raise ApiError(400, str(e), code="context_length_exceeded" if "context" in str(e) else None) from None
        if turn is not None:
            turn.reqs = reqs
        task = asyncio.ensure_future(self.watch(request, reqs, queue, turn))
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)
        return reqs, queue

    async def watch(self, request: Request, reqs, queue: asyncio.Queue, turn: Turn | None) -> None:
        """Wait for the client to go away (the server also says so once the response is complete) and abort the
        call's unfinished requests then, freeing their KV blocks at once."""
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        finally:
            self.cancel(reqs)
            self.end_turn(turn)
        queue.put_nowait(GONE)

    def cancel(self, reqs) -> None:
        for r in reqs:
            if not r.finished:
                self.engine.cancel(r.id)

    async def outputs(self, reqs, queue: asyncio.Queue, turn: Turn | None = None):
        """(index, Output) until every request finished, failing as an ApiError if one does; cancels them on
        timeout, on error and when the client goes away (then it just ends)."""
        deadline = time.monotonic() + self.cfg.request_timeout
        left = len(reqs)
        try:
            while left:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise ApiError(504, f"the request ran past {self.cfg.request_timeout:.0f}s and was aborted",
                                   "timeout_error", code="timeout") from None
                if item is GONE:
                    return
                i, out = item
                self.raise_failed(out, turn)
                left -= out.finished
                yield i, out
        finally:
            self.cancel(reqs)

    async def collect(self, reqs, queue, turn: Turn | None = None) -> list[Completion] | None:
        """Every request's Completion (None if the client went away); a failed one raises as an ApiError."""
        async for _ in self.outputs(reqs, queue, turn):
            pass
        if not all(q.finished for q in reqs):
            return None
        return [q.result() for q in reqs]

    def client_gone(self) -> JSONResponse:
        """What a non-streaming call answers once its client left: nobody reads it, /metrics counts it."""
        self.count_error(499, "client_disconnected")
        return JSONResponse({}, status_code=499)

    # ---------------------------------------------------------------- session turns

    def begin_turn(self, owner: str, sid: str) -> Turn:
        turn = Turn(owner, sid)
        self.turns.setdefault((owner, sid), []).append(turn)
        return turn

    def end_turn(self, turn: Turn | None) -> None:
        running = self.turns.get((turn.owner, turn.sid), []) if turn else []
        if turn in running:
            running.remove(turn)
            if not running:
                del self.turns[(turn.owner, turn.sid)]

    def abort_turns(self, owner: str, sid: str) -> None:
        """The session is being deleted: its running turns stop now and answer 409, saving nothing."""
        for turn in self.turns.pop((owner, sid), []):
            turn.deleted = True
            self.cancel(turn.reqs)

    @staticmethod
    def session_deleted(sid: str) -> ApiError:
        return ApiError(409, f"session '{clip(sid)}' was deleted while this turn ran; the turn was aborted",
                        param="session_id", code="session_deleted")

    def logprob_items(self, entries: list[dict]) -> list[dict]:
        """OpenAI's logprob items. `bytes` are the token's raw bytes, so that text can be rebuilt from tokens that each
        hold part of a character; `token` is their text, with bytes that are not a whole character written as \\xNN
        (not U+FFFD, which would make different fragments the same key in top_logprobs)."""
        def tok(t: int, lp: float) -> dict:
            raw = self.engine.token_bytes[t]
            return {"token": raw.decode("utf-8", "backslashreplace"), "logprob": lp, "bytes": list(raw)}

        return [{**tok(e["token"], e["logprob"]), "top_logprobs": [tok(t, lp) for t, lp in e["top"]]} for e in entries]

    def usage(self, prompt_tokens: int, done: list[Completion]) -> dict:
        completion = sum(c.completion_tokens for c in done)
        cached = min(c.cached_tokens for c in done) if done else 0
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}

    def raise_failed(self, result, turn: Turn | None = None) -> None:
        """An Output or Completion that ended in error or abort, as the ApiError to answer with."""
        if result.finish_reason == "error":
            raise ApiError(500, f"generation failed: {result.error}", "server_error", code="error")
        if result.finish_reason == "abort":
            if turn is not None and turn.deleted:
                raise self.session_deleted(turn.sid)
            raise ApiError(503, "the request was aborted (server shutting down)", "server_error", code="aborted")

    def sse_response(self, events) -> StreamingResponse:
        """Server-sent events from `events` (chunk dicts), then [DONE]. A stream that fails after its 200 sends
        OpenAI's error object as an event, then [DONE]; an unexpected exception is logged and sent as
        "internal error". Either is counted in /metrics."""
        async def body():
            try:
                async for obj in events:
                    yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
            except ApiError as e:
                self.count_error(e.status, e.kind, "stream")
                yield f"data: {json.dumps(e.body())}\n\n"
            except Exception:
                log.exception("internal error in a stream")
                e = internal_error()
                self.count_error(e.status, e.kind, "stream")
                yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- chat

    def session_prompt(self, owner: str, r: ChatRequest, max_tokens: int,
                       grounded_turn: dict | None = None) -> tuple[list[int], list[dict], int | None]:
        """The prompt for a session turn: stored history + new messages, windowed to fit; returns the new window.
        `grounded_turn` stands in for the last new message in the prompt; the session keeps the message as sent."""
        sess = self.store.get(owner, r.session_id)
        if sess is None:
            raise ApiError(404, f"session '{clip(r.session_id)}' not found", param="session_id",
                           code="session_not_found")
        history, sent = sess["messages"], [m.plain() for m in r.messages]
        new = sent[:-1] + [grounded_turn] if grounded_turn else sent
        head = 1 if history and history[0]["role"] == "system" else 0
        window = max(sess["window"], head)
        convo = history[:head] + history[window:] + new
        ids = self.render(convo)
        if self.fits(len(ids), max_tokens):
            return ids, sent, None
        # Drop the oldest exchanges until the prompt uses at most half of what is available, so the next turns
        # keep the same start (and reuse its cached KV) instead of sliding by one exchange every turn.
        budget = (self.engine.max_model_len - max_tokens) // 2
        while window < len(history):
            window += 1
            while window < len(history) and history[window]["role"] != "user":
                window += 1
            ids = self.render(history[:head] + history[window:] + new)
            if len(ids) <= budget:
                return ids, sent, window
        ids = self.render(history[:head] + new)
        if not self.fits(len(ids), max_tokens):
            raise self.too_long(len(ids), max_tokens)
        return ids, sent, len(history)

    async def grounded_turn(self, kb: KnowledgeBase, r: ChatRequest, max_tokens: int) -> tuple[dict | None, list]:
        """The last user message with its retrieved sources, and the hits used ((None, []) when none is relevant)."""
        messages = [m.plain() for m in r.messages]
        if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            raise ApiError(400, "with a knowledge base the last message must be a non-empty user message",
                           param="messages")
        budget = prompt_budget(self.engine, self.rag, max_tokens)
        # With a session, half for the sources if one fits there: the stored history windows into the rest.
        history, budgets = ([], [budget // 2, budget]) if r.session_id else (messages[:-1], [budget])
        try:
            # retrieval blocks (encoder forward, SQLite, faiss): off the event loop
            grounded, used = await asyncio.to_thread(ground, kb, self.rag, history + messages[-1:],
                                                     lambda m: len(self.render(m)), budgets)
        except CamelidError as e:
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        return (grounded[-1] if grounded else None), used

    async def chat(self, request: Request):
        owner = self.authorize(request)
        r = await self.read(request, ChatRequest)
        kb = self.check_model(r.model, r.kb)
        max_tokens = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        sp = self.params(r, max_tokens, r.logprobs, r.top_logprobs)
        grounded, used = await self.grounded_turn(kb, r, sp.max_tokens) if kb else (None, [])
        if kb and grounded is None:
            return self.not_found(owner, r)
        new, window, turn = None, None, None
        if r.session_id:
            if r.n > 1:
                raise ApiError(400, "'n' must be 1 with a session: a session keeps one reply per turn", param="n")
            ids, new, window = self.session_prompt(owner, r, sp.max_tokens, grounded)
            turn = self.begin_turn(owner, r.session_id)
        else:
            messages = [m.plain() for m in r.messages]
            ids = self.render(messages[:-1] + [grounded] if grounded else messages)
            if not self.fits(len(ids), sp.max_tokens):
                raise self.too_long(len(ids), sp.max_tokens)
        try:
            reqs, queue = self.start(request, owner, [ids] * r.n, self._seeded(sp, r.n), turn=turn)
        except ApiError:
            self.end_turn(turn)
            raise
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        head = {"id": rid, "created": created, "model": r.model}
        if r.session_id:
            head["session_id"] = r.session_id

        def save(c: Completion) -> None:
            if not r.session_id or c.finish_reason not in ("stop", "length"):
                return
            try:
                if turn.deleted:  # and maybe created anew since: the reply belongs to the deleted one
                    raise KeyError(r.session_id)
                self.store.append(owner, r.session_id, new + [{"role": "assistant", "content": c.text}], window)
            except KeyError:
                raise self.session_deleted(r.session_id) from None

        if not r.stream:
            try:
                done = await self.collect(reqs, queue, turn)
                if done is None:
                    return self.client_gone()
                save(done[0])
            finally:
                self.end_turn(turn)
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                        "logprobs": {"content": self.logprob_items(c.logprobs)} if r.logprobs else None}
                       for i, c in enumerate(done)]
            cite = {"citations": citations(used, done[0].text)} if kb else {}
            return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                                 "usage": self.usage(len(ids), done), **cite})

        async def events():
            try:
                chunk = {**head, "object": "chat.completion.chunk"}
                for i in range(r.n):
                    cite = {"citations": citations(used)} if kb and i == 0 else {}
                    yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None, "logprobs": None}], **cite}
                async for i, out in self.outputs(reqs, queue, turn):
                    if out.text or out.finished or out.logprobs:
                        lp = {"content": self.logprob_items(out.logprobs)} if r.logprobs else None
                        yield {**chunk, "choices": [{"index": i, "delta": {"content": out.text} if out.text else {},
                                                     "finish_reason": out.finish_reason, "logprobs": lp}]}
                if not all(q.finished for q in reqs):  # the client went away
                    return
                done = [q.result() for q in reqs]
                save(done[0])
                if r.stream_options and r.stream_options.include_usage:
                    yield {**chunk, "choices": [], "usage": self.usage(len(ids), done)}
            finally:
                self.end_turn(turn)

        return self.sse_response(events())

    def not_found(self, owner: str, r: ChatRequest):
        """The answer when the knowledge base holds nothing relevant: said plainly, without the model."""
        text = not_found(r.messages[-1].plain()["content"])
        if r.session_id:
            if self.store.get(owner, r.session_id) is None:
                raise ApiError(404, f"session '{clip(r.session_id)}' not found", param="session_id",
                               code="session_not_found")
            self.store.append(owner, r.session_id, [m.plain() for m in r.messages] +
                              [{"role": "assistant", "content": text}], None)
        head = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": r.model,
                **({"session_id": r.session_id} if r.session_id else {})}
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not r.stream:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                        "logprobs": None} for i in range(r.n)]
            return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage,
                                 "citations": []})

        async def events():
            chunk = {**head, "object": "chat.completion.chunk"}
            for i in range(r.n):
                yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": text},
                                             "finish_reason": "stop", "logprobs": None}], "citations": []}
            if r.stream_options and r.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": usage}

        return self.sse_response(events())

    async def kb_search(self, name: str, request: Request):
        self.authorize(request)
        kb = self.knowledge_base(name, "name")
        r = await self.read(request, KbSearch)
        hits = await asyncio.to_thread(search, kb, r.query, self.rag, r.retriever, r.top_k)
        return {"object": "list", "kb": name, "query": r.query, "data": citations(hits)}

    async def kb_ask(self, name: str, request: Request):
        """One grounded answer, the way `camelid kb ask` gives it: {answer, found, citations, usage}."""
        owner = self.authorize(request)
        kb = self.knowledge_base(name, "name")
        r = await self.read(request, KbAsk)
        max_tokens = r.max_tokens or min(self.rag.max_new_tokens, self.cfg.max_tokens)
        if max_tokens > self.cfg.max_tokens:
            raise ApiError(400, f"'max_tokens' must be <= {self.cfg.max_tokens} on this server", param="max_tokens")
        sp = SamplingParams(max_tokens=max_tokens, temperature=self.rag.temperature if r.temperature is None
                            else r.temperature, seed=r.seed, repetition_penalty=r.repetition_penalty)
        try:
            grounded, used = await asyncio.to_thread(
                ground, kb, self.rag, [{"role": "user", "content": r.question}], lambda m: len(self.render(m)),
                [prompt_budget(self.engine, self.rag, max_tokens)])
        except CamelidError as e:
            raise ApiError(400, str(e), param="question", code="context_length_exceeded") from None
        head = {"object": "kb.answer", "kb": name, "question": r.question}
        if grounded is None:
            return {**head, "answer": not_found(r.question), "found": False, "citations": [],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        ids = self.render(grounded)
        done = await self.collect(*self.start(request, owner, [ids], [sp]))
        if done is None:
            return self.client_gone()
        text = done[0].text.strip()
        return {**head, "answer": text, "found": True, "citations": citations(used, text),
                "usage": self.usage(len(ids), done)}

    @staticmethod
    def _seeded(sp: SamplingParams, n: int) -> list[SamplingParams]:
        """n choices with a seed: seeds seed, seed+1, ... so choices differ yet the request is reproducible."""
        if sp.seed is None:
            return [sp] * n
        return [SamplingParams(**{**sp.__dict__, "seed": sp.seed + i}) for i in range(n)]

    # ---------------------------------------------------------------- completions

    async def completions(self, request: Request):
        owner = self.authorize(request)
        r = await self.read(request, CompletionRequest)
        self.check_model(r.model)
        sp = self.params(r, r.max_tokens, r.logprobs is not None, r.logprobs or 0)
        p = r.prompt
        if isinstance(p, str):
            prompts = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = list(p)
        if not prompts:
            raise ApiError(400, "'prompt' is empty", param="prompt")
        # before any tokenizing: a 55 KB body can hold thousands of prompts
        if len(prompts) > self.cfg.max_prompts_per_request:
            raise ApiError(400, f"'prompt' holds {len(prompts)} prompts; at most {self.cfg.max_prompts_per_request} "
                                "per request (serve.max_prompts_per_request)", param="prompt")
        for x in prompts:  # before decoding them for `echo`: the tokenizer overflows on ids like -1 or 2**70
            if not isinstance(x, str) and x and not all(0 <= t < self.engine.vocab for t in x):
                bad = next(t for t in x if not 0 <= t < self.engine.vocab)
                raise ApiError(400, f"'prompt' holds token id {clip(str(bad), 30)}, outside the vocabulary "
                                    f"[0, {self.engine.vocab})", param="prompt")
        ids = [self.tok(x, add_special_tokens=False)["input_ids"] if isinstance(x, str) else list(x) for x in prompts]
        for x in ids:
            if not x:
                raise ApiError(400, "'prompt' is empty", param="prompt")
            if not self.fits(len(x), sp.max_tokens):
                raise self.too_long(len(x), sp.max_tokens)
        texts = [x if isinstance(x, str) else self.tok.decode(x) for x in prompts]
        flat = [x for x in ids for _ in range(r.n)]
        reqs, queue = self.start(request, owner, flat, self._seeded(sp, r.n) * len(ids),
                                 "prompt" if len(ids) > 1 else "n")
        head = {"id": "cmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": self.model_id}
        n_prompt = sum(len(x) for x in ids)

        def logprobs(entries: list[dict]) -> dict | None:
            if r.logprobs is None:
                return None
            items = self.logprob_items(entries)
            return {"tokens": [e["token"] for e in items], "token_logprobs": [e["logprob"] for e in items],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in items]}

        if not r.stream:
            done = await self.collect(reqs, queue)
            if done is None:
                return self.client_gone()
            choices = [{"index": i, "text": (texts[i // r.n] if r.echo else "") + c.text,
                        "finish_reason": c.finish_reason, "logprobs": logprobs(c.logprobs)} for i, c in enumerate(done)]
            return JSONResponse({**head, "object": "text_completion", "choices": choices,
                                 "usage": self.usage(n_prompt, done)})

        async def events():
            chunk = {**head, "object": "text_completion"}
            if r.echo:
                for i in range(len(flat)):
                    yield {**chunk, "choices": [{"index": i, "text": texts[i // r.n], "finish_reason": None, "logprobs": None}]}
            async for i, out in self.outputs(reqs, queue):
                if out.text or out.finished:
                    yield {**chunk, "choices": [{"index": i, "text": out.text, "finish_reason": out.finish_reason,
                                                 "logprobs": logprobs(out.logprobs)}]}
            if not all(q.finished for q in reqs):  # the client went away
                return
            if r.stream_options and r.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": self.usage(n_prompt, [q.result() for q in reqs])}

        return self.sse_response(events())

    # ---------------------------------------------------------------- the rest

    def stats(self) -> dict:
        for _ in range(3):
            try:
                return self.engine.stats()
            except RuntimeError:  # the engine thread changed a deque or dict while it was read: read again
                continue
        return self.engine.stats()

    def metrics(self) -> str:
        s = self.stats()
        total = s["kv_blocks_total"]
        lines = []

        def metric(name: str, kind: str, help_: str, value: Any, labels: str = "") -> None:
            if not any(line.startswith(f"# HELP {name} ") for line in lines):
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.append(f"{name}{labels} {value}")

        metric("camelid_requests_waiting", "gauge", "Requests queued for the engine.", s["waiting"])
        metric("camelid_requests_running", "gauge", "Requests in the running batch.", s["running"])
        metric("camelid_kv_blocks_used", "gauge", "KV blocks held by running requests.", s["kv_blocks_used"])
        metric("camelid_kv_blocks_cached", "gauge", "Idle KV blocks kept for prefix reuse.", s["kv_blocks_cached"])
        metric("camelid_kv_blocks_total", "gauge", "KV blocks in the cache.", total)
        metric("camelid_kv_usage_ratio", "gauge", "Share of KV blocks held by running requests.",
               round(s["kv_blocks_used"] / total, 4))
        metric("camelid_generation_tokens_per_second", "gauge", "Generated tokens/s over the last 10 s.",
               round(s["tokens_per_second"], 2))
        metric("camelid_generated_tokens_total", "counter", "Tokens sampled.", s.get("generated_tokens", 0))
        metric("camelid_prompt_tokens_computed_total", "counter", "Prompt tokens run through the model.",
               s.get("prompt_tokens_computed", 0))
        metric("camelid_prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache.",
               s.get("prompt_tokens_cached", 0))
        metric("camelid_preemptions_total", "counter", "Requests preempted for KV memory.", s.get("preemptions", 0))
        for reason in ("stop", "length", "abort", "error"):
            metric("camelid_requests_total", "counter", "Finished requests by finish reason.",
                   s.get(f"requests_{reason}", 0), f'{{finish_reason="{reason}"}}')
        for (status, kind, sent), n in sorted(self.errors.items()):
            metric("camelid_http_errors_total", "counter", "Errors answered, by status, kind (the error's code, or its "
                   "type) and where they were sent: as the response, or as an event inside a stream.", n,
                   f'{{status="{status}",kind="{kind}",sent="{sent}"}}')
        return "\n".join(lines) + "\n"


class Guard:
    """The outermost handler of the app's own: an exception nothing turned into an answer becomes OpenAI's error
    shape (500, "internal error") with its traceback in the log, never a plain-text 500."""

    def __init__(self, app, api: Api):
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            e = internal_error()
            self.api.count_error(e.status, e.kind)
            if not started:
                await e.response()(scope, receive, send)


def create_app(engine: Engine, cfg: ServeConfig, model_id: str, store: SessionStore, keys: set[str],
               kbs: dict[str, KnowledgeBase] | None = None, rag: RagConfig | None = None) -> FastAPI:
    api = Api(engine, cfg, model_id, store, keys, kbs, rag)
    app = FastAPI(title="camelid", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api
    app.add_middleware(Guard, api=api)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        api.count_error(e.status, e.kind)
        return e.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            err = ApiError(404, f"no route {request.method} {clip(request.url.path)}", code="not_found")
        elif e.status_code == 405:
            err = ApiError(405, f"{request.method} is not allowed on {clip(request.url.path)}", code="method_not_allowed")
        else:
            err = ApiError(e.status_code, str(e.detail), code="http_error")
        return await _api_error(request, err)

    @app.get("/health")
    async def health():
        # plain reads of the engine's queues, no lock and no stats pass: it answers however busy the engine is
        return {"status": "ok", "model": model_id, "running": len(engine.running),
                "waiting": len(engine.waiting) + engine._incoming.qsize()}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(api.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        api.authorize(request)
        return {"object": "list", "data": [describe(m) for m in [model_id] + [f"kb:{k}" for k in api.kbs]]}

    def describe(name: str) -> dict:
        return {"id": name, "object": "model", "created": int(api.started), "owned_by": "camelid",
                "max_model_len": engine.max_model_len}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        api.authorize(request)
        api.check_model(name)
        return describe(name)

    @app.get("/v1/kb")
    async def list_kbs(request: Request):
        api.authorize(request)
        return {"object": "list", "data": [
            {"id": name, "object": "knowledge_base", "model": f"kb:{name}", "documents": len(docs),
             "chunks": sum(d["chunks"] for d in docs), "encoder": kb.meta["embedding_model"]}
            for name, kb in api.kbs.items() for docs in [kb.documents()]]}

    app.post("/v1/kb/{name}/search")(api.kb_search)
    app.post("/v1/kb/{name}/ask")(api.kb_ask)

    app.post("/v1/chat/completions")(api.chat)
    app.post("/v1/completions")(api.completions)

    def no_session(sid: str) -> ApiError:
        return ApiError(404, f"session '{clip(sid)}' not found", param="session_id", code="session_not_found")

    @app.post("/v1/sessions")
    async def create_session(request: Request):
        owner = api.authorize(request)
        r = await api.read(request, SessionCreate)
        try:
            return store.create(owner, model_id, [m.plain() for m in r.messages], r.session_id)
        except KeyError:  # ids are per key: only the caller's own sessions can clash
            raise ApiError(409, f"session '{clip(r.session_id)}' already exists", param="session_id",
                           code="session_exists") from None

    @app.get("/v1/sessions")
    async def list_sessions(request: Request):
        return {"object": "list", "data": store.list(api.authorize(request))}

    @app.get("/v1/sessions/{sid}")
    async def get_session(sid: str, request: Request):
        sess = store.get(api.authorize(request), sid)
        if sess is None:
            raise no_session(sid)
        return sess

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str, request: Request):
        owner = api.authorize(request)
        if not store.delete(owner, sid):
            raise no_session(sid)
        api.abort_turns(owner, sid)
        return {"id": sid, "object": "session.deleted", "deleted": True}

    return app
