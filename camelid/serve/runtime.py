"""What every endpoint shares: `Api`, the server's state (engine, config, sessions, knowledge bases, keys) and the
plumbing the handlers call — reading a body within serve.max_body_bytes, API keys, the model and knowledge base a
request names, sampling parameters within the server's limits, rendering a chat, and running a call's
generations on the engine.

One client must not hurt another: a call counts each generation it asks for (prompts x n) against its key's
`serve.max_concurrent_per_key`; a client that disconnects has its generations aborted at once, streaming or not
(`start` watches it); deleting a session aborts its running turn (`abort_turns`, answered 409 `session_deleted`);
a stream that fails after its 200 ends with an error event (`sse_response`). Every error answered is counted for
/metrics (`count_error`).
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

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from camelid.config import RagConfig, ServeConfig
from camelid.data.templates import prompt_ids
from camelid.engine import Completion, Engine, SamplingParams
from camelid.rag.rerank import LlmJudge
from camelid.rag.store import KnowledgeBase
from camelid.serve.protocol import (
    ApiError,
    SamplingFields,
    check_content_type,
    clip,
    max_tokens_too_large,
    parse,
    session_deleted,
    session_not_found,
)
from camelid.serve.sessions import SessionStore

log = logging.getLogger("camelid")

GONE = None  # put in a call's output queue when its client disconnects
DRAIN_BYTES = 8 << 20  # how far past its limit a refused body is still read (and dropped) so the 413 arrives


def internal_error() -> ApiError:
    return ApiError(500, "internal error", "server_error", code="internal_error")


def _owner(key: str | None) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "local"


def seeded(sp: SamplingParams, n: int) -> list[SamplingParams]:
    """n choices with a seed: seeds seed, seed+1, ... so choices differ yet the request is reproducible."""
    if sp.seed is None:
        return [sp] * n
    return [SamplingParams(**{**sp.__dict__, "seed": sp.seed + i}) for i in range(n)]


@dataclass(eq=False)
class Turn:
    """A session turn being generated; deleting its session aborts it, and it is answered with a 409."""

    owner: str
    sid: str
    reqs: list = field(default_factory=list)
    deleted: bool = False


class Api:
    def __init__(
        self,
        engine: Engine,
        cfg: ServeConfig,
        model_id: str,
        store: SessionStore,
        keys: set[str],
        kbs: dict[str, KnowledgeBase] | None = None,
        rag: RagConfig | None = None,
    ):
        self.engine, self.cfg, self.model_id, self.store, self.keys = engine, cfg, model_id, store, keys
        self.kbs, self.rag = kbs or {}, rag or RagConfig()
        self.tok = engine.tokenizer
        # rag.reranker=llm: the served model judges the candidates (its requests count against no key)
        self.judge = LlmJudge(engine, self.render) if self.rag.reranker == "llm" else None
        self.in_flight: dict[str, int] = {}  # unfinished engine requests per key (a call with 3 prompts, n=2: 6)
        self.errors: collections.Counter = collections.Counter()  # (status, kind, sent) -> count
        self.turns: dict[tuple[str, str], list[Turn]] = {}
        self.watchers: set[asyncio.Task] = set()
        self.started = time.time()

    # ---------------------------------------------------------------- requests

    async def read(self, request: Request, schema: type[BaseModel]):
        check_content_type(request.headers.get("content-type"))
        return parse(await self.body(request, self.cfg.max_body_bytes, "serve.max_body_bytes"), schema)

    async def body(self, request: Request, limit: int, setting: str) -> bytes:
        """The raw body, refused with a 413 naming `setting` when it exceeds `limit` bytes. A body at most
        DRAIN_BYTES over the limit is read to its end and dropped first: closing a connection with unread data in
        it makes the kernel reset it, and the client then sees "connection reset" instead of the 413 (it did, now
        and then, for a 1.1 MB body). A larger one is refused from its Content-Length before anything is read."""
        too_large = ApiError(
            413, f"request body exceeds {limit} bytes (the server's {setting})", code="request_too_large"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
            raise too_large
        raw, size = bytearray(), 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    raw += chunk
                elif size > limit + DRAIN_BYTES:
                    break
        except ClientDisconnect:  # gone mid-upload: counted, not logged as an internal error
            raise ApiError(
                499, "the client disconnected while sending its request", code="client_disconnected"
            ) from None
        if size > limit:
            raise too_large
        return bytes(raw)

    def authorize(self, request: Request) -> str:
        if not self.keys:
            return _owner(None)
        header = request.headers.get("authorization", "")
        # as bytes: compare_digest raises on str with non-ASCII characters; a header arrives decoded as latin-1
        given = (header[7:].strip() if header.lower().startswith("bearer ") else "").encode("latin-1")
        key = next((k for k in self.keys if secrets.compare_digest(given, k.encode())), None) if given else None
        if key is None:
            raise ApiError(
                401,
                "invalid or missing API key (send 'Authorization: Bearer KEY')",
                "authentication_error",
                code="invalid_api_key",
            )
        return _owner(key)

    def count_error(self, status: int, kind: str, sent: str = "response") -> None:
        self.errors[(status, kind, sent)] += 1

    def check_model(self, name: str, kb: str | None = None) -> KnowledgeBase | None:
        """The knowledge base a request names (model "kb:<name>", or the field `kb`), if any."""
        if name.startswith("kb:") and kb is None:
            kb = name[3:]
        elif name != self.model_id:
            served = ", ".join([f"'{self.model_id}'"] + [f"'kb:{k}'" for k in self.kbs])
            raise ApiError(
                404,
                f"model '{clip(name)}' not found; this server serves {served}",
                param="model",
                code="model_not_found",
            )
        if kb is None:
            return None
        return self.knowledge_base(kb, "kb" if not name.startswith("kb:") else "model")

    def knowledge_base(self, name: str, param: str = "kb") -> KnowledgeBase:
        if name not in self.kbs:
            known = ", ".join(self.kbs) or "none (start the server with serve.kb=[NAME])"
            raise ApiError(
                404,
                f"knowledge base '{clip(name)}' is not served here; served: {known}",
                param=param,
                code="kb_not_found",
            )
        return self.kbs[name]

    def session(self, owner: str, sid: str) -> dict:
        """The caller's session `sid`, or the 404 saying it has none by that id."""
        sess = self.store.get(owner, sid)
        if sess is None:
            raise session_not_found(sid)
        return sess

    @property
    def default_max_tokens(self) -> int:
        """max_tokens of a request that sets none: serve.default_max_tokens within serve.max_tokens."""
        return min(self.cfg.default_max_tokens, self.cfg.max_tokens)

    def check_max_tokens(self, max_tokens: int | None) -> None:
        if max_tokens is not None and max_tokens > self.cfg.max_tokens:
            raise max_tokens_too_large(self.cfg.max_tokens)

    def params(self, r: SamplingFields, max_tokens: int | None, logprobs: bool, top: int) -> SamplingParams:
        if r.n > self.cfg.max_n:
            raise ApiError(400, f"'n' must be <= {self.cfg.max_n}", param="n")
        self.check_max_tokens(max_tokens)
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        # Below 1e-5 a temperature samples as greedy: it already is in effect, and dividing float32 logits by a
        # tiny enough one gives inf, then NaN probabilities, which would fail the step of every request batched.
        temperature = 0.0 if r.temperature < 1e-5 else r.temperature
        sp = SamplingParams(
            max_tokens=self.default_max_tokens if max_tokens is None else max_tokens,
            temperature=temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            repetition_penalty=r.repetition_penalty,
            presence_penalty=r.presence_penalty,
            frequency_penalty=r.frequency_penalty,
            stop=stop,
            seed=r.seed,
            logprobs=logprobs,
            top_logprobs=top,
            ignore_eos=r.ignore_eos,
        )
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
        return ApiError(
            400,
            f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
            f"of {self.engine.max_model_len} tokens",
            param="messages",
            code="context_length_exceeded",
        )

    # ---------------------------------------------------------------- generations

    def acquire(self, owner: str, count: int, param: str) -> None:
        """Count a call's generations (prompts x n) against its key's limit: one call with 40 prompts is 40 in
        flight, not one. More than the limit alone can never run (400); more beside what runs waits (429)."""
        limit, busy = self.cfg.max_concurrent_per_key, self.in_flight.get(owner, 0)
        if count > limit:
            raise ApiError(
                400,
                f"this request asks for {count} generations (prompts x n) but a key may run at most "
                f"{limit} at once (serve.max_concurrent_per_key)",
                param=param,
                code="too_many_generations",
            )
        if busy + count > limit:
            raise ApiError(
                429,
                f"this key has {busy} generations in flight and this request adds {count}; at most "
                f"{limit} run at once (serve.max_concurrent_per_key)",
                "rate_limit_error",
                code="rate_limit_exceeded",
            )
        self.in_flight[owner] = busy + count

    def start(
        self,
        request: Request,
        owner: str,
        prompts: list[list[int]],
        params: list[SamplingParams],
        param: str = "n",
        turn: Turn | None = None,
    ):
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
                reqs.append(
                    self.engine.submit(
                        p, sp, owner=owner, on_output=lambda o, i=i: loop.call_soon_threadsafe(deliver, i, o)
                    )
                )
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
                    raise ApiError(
                        504,
                        f"the request ran past {self.cfg.request_timeout:.0f}s and was aborted",
                        "timeout_error",
                        code="timeout",
                    ) from None
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

    def raise_failed(self, result, turn: Turn | None = None) -> None:
        """An Output or Completion that ended in error or abort, as the ApiError to answer with."""
        if result.finish_reason == "error":
            raise ApiError(500, f"generation failed: {result.error}", "server_error", code="error")
        if result.finish_reason == "abort":
            if turn is not None and turn.deleted:
                raise session_deleted(turn.sid)
            raise ApiError(503, "the request was aborted (server shutting down)", "server_error", code="aborted")

    def client_gone(self) -> JSONResponse:
        """What a non-streaming call answers once its client left: nobody reads it, /metrics counts it."""
        self.count_error(499, "client_disconnected")
        return JSONResponse({}, status_code=499)

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

    def stats(self) -> dict:
        for _ in range(3):
            try:
                return self.engine.stats()
            except RuntimeError:  # the engine thread changed a deque or dict while it was read: read again
                continue
        return self.engine.stats()
