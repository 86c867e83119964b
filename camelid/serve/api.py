"""The OpenAI-compatible HTTP API over one Engine: /v1/models, /v1/chat/completions, /v1/completions,
/v1/sessions, /v1/kb, /health, /metrics. Every error has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Beyond OpenAI's request fields: `top_k`, `repetition_penalty`, `ignore_eos`, and `session_id` on chat completions
(the server keeps the conversation; the client sends only its new messages). Unknown fields are refused with a
400 naming them, as OpenAI does.

Knowledge bases (`serve.kb`): a chat completion with model "kb:<name>" (or the model's own id and the field
`"kb": "<name>"`) answers its last user turn from that knowledge base: the reply carries `citations`, numbered as
the sources in the prompt (on the first chunk when streaming), and is the "not found" sentence, without
generating, when nothing relevant is retrieved. /v1/kb/{name}/ask answers one question as `camelid kb ask` does;
/v1/kb/{name}/search returns the passages alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from camelid.config import RagConfig, ServeConfig
from camelid.data.templates import prompt_ids
from camelid.rag.prompt import citations, not_found
from camelid.rag.retrieve import search
from camelid.rag.store import KnowledgeBase
from camelid.serve.engine import Completion, Engine
from camelid.serve.kb import ground, prompt_budget
from camelid.serve.sampling import SamplingParams
from camelid.serve.schemas import (IGNORED_FIELDS, ApiError, ChatRequest, CompletionRequest, KbAsk, KbSearch,
                                   SamplingFields, SessionCreate)
from camelid.serve.sessions import SessionStore
from camelid.utils import CamelidError

def _owner(key: str | None) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "local"


class Api:
    def __init__(self, engine: Engine, cfg: ServeConfig, model_id: str, store: SessionStore, keys: set[str],
                 kbs: dict[str, KnowledgeBase] | None = None, rag: RagConfig | None = None):
        self.engine, self.cfg, self.model_id, self.store, self.keys = engine, cfg, model_id, store, keys
        self.kbs, self.rag = kbs or {}, rag or RagConfig()
        self.tok = engine.tokenizer
        self.in_flight: dict[str, int] = {}
        self.http_errors: dict[int, int] = {}
        self.started = time.time()

    # ---------------------------------------------------------------- plumbing

    async def read(self, request: Request, schema: type[BaseModel]):
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.cfg.max_body_bytes:
                raise ApiError(413, f"request body exceeds {self.cfg.max_body_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        for name in IGNORED_FIELDS & body.keys():
            body.pop(name)
        try:
            return schema.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(x) for x in err["loc"])
            msg = "unrecognized request argument" if err["type"] == "extra_forbidden" else err["msg"]
            raise ApiError(400, f"'{param}': {msg}", param=param) from None

    def authorize(self, request: Request) -> str:
        if not self.keys:
            return _owner(None)
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not key or not any(secrets.compare_digest(key, k) for k in self.keys):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           "authentication_error", code="invalid_api_key")
        return _owner(key)

    def check_model(self, name: str, kb: str | None = None) -> KnowledgeBase | None:
        """The knowledge base a request names (model "kb:<name>", or the field `kb`), if any."""
        if name.startswith("kb:") and kb is None:
            kb = name[3:]
        elif name != self.model_id:
            served = ", ".join([f"'{self.model_id}'"] + [f"'kb:{k}'" for k in self.kbs])
            raise ApiError(404, f"model '{name}' not found; this server serves {served}", param="model",
                           code="model_not_found")
        if kb is None:
            return None
        return self.knowledge_base(kb, "kb" if not name.startswith("kb:") else "model")

    def knowledge_base(self, name: str, param: str = "kb") -> KnowledgeBase:
        if name not in self.kbs:
            known = ", ".join(self.kbs) or "none (start the server with serve.kb=[NAME])"
            raise ApiError(404, f"knowledge base '{name}' is not served here; served: {known}", param=param,
                           code="kb_not_found")
        return self.kbs[name]

    def params(self, r: SamplingFields, max_tokens: int | None, logprobs: bool, top: int) -> SamplingParams:
        if r.n > self.cfg.max_n:
            raise ApiError(400, f"'n' must be <= {self.cfg.max_n}", param="n")
        if max_tokens is not None and max_tokens > self.cfg.max_tokens:
            raise ApiError(400, f"'max_tokens' must be <= {self.cfg.max_tokens} on this server", param="max_tokens")
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        sp = SamplingParams(
            max_tokens=self.cfg.default_max_tokens if max_tokens is None else max_tokens, temperature=r.temperature,
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

    def acquire(self, owner: str) -> None:
        if self.in_flight.get(owner, 0) >= self.cfg.max_concurrent_per_key:
            raise ApiError(429, f"more than {self.cfg.max_concurrent_per_key} concurrent requests for this key",
                           "rate_limit_error", code="rate_limit_exceeded")
        self.in_flight[owner] = self.in_flight.get(owner, 0) + 1

    def release(self, owner: str) -> None:
        self.in_flight[owner] -= 1

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]):
        """Engine requests delivering into one asyncio queue as (choice index, Output)."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        reqs = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params)):
                reqs.append(self.engine.submit(p, sp, on_output=lambda o, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, o))))
        except ValueError as e:
            self.cancel(reqs)
            raise ApiError(400, str(e), code="context_length_exceeded" if "context" in str(e) else None) from None
        except RuntimeError as e:
            self.cancel(reqs)
            raise ApiError(503, str(e), "server_error", code="shutting_down") from None
        return reqs, queue

    def start(self, owner: str, prompts: list[list[int]], params: list[SamplingParams]):
        """Count the request against its key's concurrency, then submit; the caller releases when done."""
        self.acquire(owner)
        try:
            return self.submit(prompts, params)
        except ApiError:
            self.release(owner)
            raise

    async def collect(self, request: Request, reqs, queue, owner: str) -> list[Completion] | None:
        """Every request's Completion (None if the client went away); a failed one raises as an ApiError."""
        try:
            async for _ in self.outputs(request, reqs, queue):
                pass
        finally:
            self.release(owner)
        if not all(q.finished for q in reqs):
            return None
        done = [q.result() for q in reqs]
        for c in done:
            self.raise_failed(c)
        return done

    def cancel(self, reqs) -> None:
        for r in reqs:
            if not r.finished:
                self.engine.cancel(r.id)

    async def outputs(self, request: Request, reqs, queue: asyncio.Queue):
        """(index, Output) until every request finished; cancels them on timeout or when the client goes away."""
        deadline = time.monotonic() + self.cfg.request_timeout
        left = len(reqs)
        try:
            while left:
                try:
                    i, out = await asyncio.wait_for(queue.get(), timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    if time.monotonic() >= deadline:
                        raise ApiError(504, f"the request ran past {self.cfg.request_timeout:.0f}s and was aborted",
                                       "timeout_error", code="timeout") from None
                    if await request.is_disconnected():
                        return
                    continue
                left -= out.finished
                yield i, out
        finally:
            self.cancel(reqs)

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

    @staticmethod
    def raise_failed(result) -> None:
        """An Output or Completion that ended in error or abort, as the ApiError to answer with."""
        if result.finish_reason == "error":
            raise ApiError(500, f"generation failed: {result.error}", "server_error", code="error")
        if result.finish_reason == "abort":
            raise ApiError(503, "the request was aborted (server shutting down)", "server_error", code="aborted")

    def sse_response(self, events, owner: str) -> StreamingResponse:
        """Server-sent events from `events` (chunk dicts), then [DONE]. A stream that fails after its 200 ends with
        OpenAI's error object as its last event. The key's concurrency slot is released however it ends."""
        async def body():
            try:
                async for obj in events:
                    yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            except ApiError as e:
                err = {"message": e.message, "type": e.type, "param": None, "code": e.code}
                yield f"data: {json.dumps({'error': err})}\n\n"
            finally:
                self.release(owner)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- chat

    def session_prompt(self, owner: str, r: ChatRequest, max_tokens: int,
                       grounded_turn: dict | None = None) -> tuple[list[int], list[dict], int | None]:
        """The prompt for a session turn: stored history + new messages, windowed to fit; returns the new window.
        `grounded_turn` stands in for the last new message in the prompt; the session keeps the message as sent."""
        sess = self.store.get(owner, r.session_id)
        if sess is None:
            raise ApiError(404, f"session '{r.session_id}' not found", param="session_id", code="session_not_found")
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
        turn, used = await self.grounded_turn(kb, r, sp.max_tokens) if kb else (None, [])
        if kb and turn is None:
            return self.not_found(owner, r)
        new, window = None, None
        if r.session_id:
            if r.n > 1:
                raise ApiError(400, "'n' must be 1 with a session: a session keeps one reply per turn", param="n")
            ids, new, window = self.session_prompt(owner, r, sp.max_tokens, turn)
        else:
            messages = [m.plain() for m in r.messages]
            ids = self.render(messages[:-1] + [turn] if turn else messages)
            if not self.fits(len(ids), sp.max_tokens):
                raise self.too_long(len(ids), sp.max_tokens)
        reqs, queue = self.start(owner, [ids] * r.n, self._seeded(sp, r.n))
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        head = {"id": rid, "created": created, "model": r.model}
        if r.session_id:
            head["session_id"] = r.session_id

        def save(c: Completion) -> None:
            if r.session_id and c.finish_reason in ("stop", "length"):
                self.store.append(owner, r.session_id, new + [{"role": "assistant", "content": c.text}], window)

        if not r.stream:
            done = await self.collect(request, reqs, queue, owner)
            if done is None:  # the client went away
                return JSONResponse({}, status_code=499)
            save(done[0])
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                        "logprobs": {"content": self.logprob_items(c.logprobs)} if r.logprobs else None}
                       for i, c in enumerate(done)]
            cite = {"citations": citations(used, done[0].text)} if kb else {}
            return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                                 "usage": self.usage(len(ids), done), **cite})

        async def events():
            chunk = {**head, "object": "chat.completion.chunk"}
            for i in range(r.n):
                cite = {"citations": citations(used)} if kb and i == 0 else {}
                yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None, "logprobs": None}], **cite}
            async for i, out in self.outputs(request, reqs, queue):
                self.raise_failed(out)
                if out.text or out.finished or out.logprobs:
                    lp = {"content": self.logprob_items(out.logprobs)} if r.logprobs else None
                    yield {**chunk, "choices": [{"index": i, "delta": {"content": out.text} if out.text else {},
                                                 "finish_reason": out.finish_reason, "logprobs": lp}]}
            done = [q.result() for q in reqs]
            save(done[0])
            if r.stream_options and r.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": self.usage(len(ids), done)}

        return self.sse_response(events(), owner)

    def not_found(self, owner: str, r: ChatRequest):
        """The answer when the knowledge base holds nothing relevant: said plainly, without the model."""
        text = not_found(r.messages[-1].plain()["content"])
        if r.session_id:
            if self.store.get(owner, r.session_id) is None:
                raise ApiError(404, f"session '{r.session_id}' not found", param="session_id", code="session_not_found")
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

        self.acquire(owner)  # sse_response releases it
        return self.sse_response(events(), owner)

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
        done = await self.collect(request, *self.start(owner, [ids], [sp]), owner)
        if done is None:  # the client went away
            return JSONResponse({}, status_code=499)
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
        ids = [self.tok(x, add_special_tokens=False)["input_ids"] if isinstance(x, str) else list(x) for x in prompts]
        for x in ids:  # token ids out of the vocabulary are refused by the engine (400 from `submit`)
            if not x:
                raise ApiError(400, "'prompt' is empty", param="prompt")
            if not self.fits(len(x), sp.max_tokens):
                raise self.too_long(len(x), sp.max_tokens)
        texts = [x if isinstance(x, str) else self.tok.decode(x) for x in prompts]
        flat = [x for x in ids for _ in range(r.n)]
        reqs, queue = self.start(owner, flat, self._seeded(sp, r.n) * len(ids))
        head = {"id": "cmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": self.model_id}
        n_prompt = sum(len(x) for x in ids)

        def logprobs(entries: list[dict]) -> dict | None:
            if r.logprobs is None:
                return None
            items = self.logprob_items(entries)
            return {"tokens": [e["token"] for e in items], "token_logprobs": [e["logprob"] for e in items],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in items]}

        if not r.stream:
            done = await self.collect(request, reqs, queue, owner)
            if done is None:  # the client went away
                return JSONResponse({}, status_code=499)
            choices = [{"index": i, "text": (texts[i // r.n] if r.echo else "") + c.text,
                        "finish_reason": c.finish_reason, "logprobs": logprobs(c.logprobs)} for i, c in enumerate(done)]
            return JSONResponse({**head, "object": "text_completion", "choices": choices,
                                 "usage": self.usage(n_prompt, done)})

        async def events():
            chunk = {**head, "object": "text_completion"}
            if r.echo:
                for i in range(len(flat)):
                    yield {**chunk, "choices": [{"index": i, "text": texts[i // r.n], "finish_reason": None, "logprobs": None}]}
            async for i, out in self.outputs(request, reqs, queue):
                self.raise_failed(out)
                if out.text or out.finished:
                    yield {**chunk, "choices": [{"index": i, "text": out.text, "finish_reason": out.finish_reason,
                                                 "logprobs": logprobs(out.logprobs)}]}
            if r.stream_options and r.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": self.usage(n_prompt, [q.result() for q in reqs])}

        return self.sse_response(events(), owner)

    # ---------------------------------------------------------------- the rest

    def metrics(self) -> str:
        s = self.engine.stats()
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
        for status, n in sorted(self.http_errors.items()):
            metric("camelid_http_errors_total", "counter", "Error responses by status.", n, f'{{status="{status}"}}')
        return "\n".join(lines) + "\n"


def create_app(engine: Engine, cfg: ServeConfig, model_id: str, store: SessionStore, keys: set[str],
               kbs: dict[str, KnowledgeBase] | None = None, rag: RagConfig | None = None) -> FastAPI:
    api = Api(engine, cfg, model_id, store, keys, kbs, rag)
    app = FastAPI(title="camelid", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        api.http_errors[e.status] = api.http_errors.get(e.status, 0) + 1
        return e.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").response()

    @app.get("/health")
    async def health():
        s = engine.stats()
        return {"status": "ok", "model": model_id, "running": s["running"], "waiting": s["waiting"]}

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

    @app.post("/v1/sessions")
    async def create_session(request: Request):
        owner = api.authorize(request)
        r = await api.read(request, SessionCreate)
        try:
            return store.create(owner, model_id, [m.plain() for m in r.messages], r.session_id)
        except KeyError:
            raise ApiError(409, f"session '{r.session_id}' already exists", param="session_id", code="session_exists") from None

    @app.get("/v1/sessions")
    async def list_sessions(request: Request):
        return {"object": "list", "data": store.list(api.authorize(request))}

    @app.get("/v1/sessions/{sid}")
    async def get_session(sid: str, request: Request):
        sess = store.get(api.authorize(request), sid)
        if sess is None:
            raise ApiError(404, f"session '{sid}' not found", param="session_id", code="session_not_found")
        return sess

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str, request: Request):
        if not store.delete(api.authorize(request), sid):
            raise ApiError(404, f"session '{sid}' not found", param="session_id", code="session_not_found")
        return {"id": sid, "object": "session.deleted", "deleted": True}

    return app
