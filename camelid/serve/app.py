"""The OpenAI-compatible HTTP API over one Engine, as routes: /v1/models, /v1/chat/completions, /v1/completions,
/v1/sessions, /v1/kb, /health, /metrics; for the web UI (camelid/serve/ui/, at /ui) also /v1/server (what is
served, engine stats) and /v1/runs (run folders, read-only). Each route checks the API key, reads its body and
hands both to its handler (serve/handlers/); this module adds only what is the same for all: every error in OpenAI's shape
{"error": {"message", "type", "param", "code"}} (unknown routes and methods too), counted in /metrics, and
`Guard`, which turns anything unexpected into a 500 of that shape.

Beyond OpenAI's request fields: `top_k`, `repetition_penalty`, `ignore_eos`, and `session_id` and `kb` on chat
completions. Unknown fields are refused with a 400 naming them, as OpenAI does (serve/protocol.py).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from starlette.exceptions import HTTPException

from camelid.config import RagConfig, ServeConfig
from camelid.engine import Engine
from camelid.rag.store import KnowledgeBase
from camelid.serve.handlers import chat, completions, kb, models, runs, sessions, ui
from camelid.serve.metrics import prometheus
from camelid.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    KbAsk,
    KbCreate,
    KbSearch,
    SessionCreate,
    SessionRename,
    clip,
)
from camelid.serve.runtime import Api, internal_error
from camelid.serve.sessions import SessionStore

log = logging.getLogger("camelid")


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


def create_app(
    engine: Engine,
    cfg: ServeConfig,
    model_id: str,
    store: SessionStore,
    keys: set[str],
    kbs: dict[str, KnowledgeBase] | None = None,
    rag: RagConfig | None = None,
) -> FastAPI:
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
            err = ApiError(
                405, f"{request.method} is not allowed on {clip(request.url.path)}", code="method_not_allowed"
            )
        else:
            err = ApiError(e.status_code, str(e.detail), code="http_error")
        return await _api_error(request, err)

    @app.get("/health")
    async def health():
        # plain reads of the engine's queues, no lock and no stats pass: it answers however busy the engine is
        return {
            "status": "ok",
            "model": model_id,
            "running": len(engine.running),
            "waiting": len(engine.waiting) + engine._incoming.qsize(),
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(prometheus(api.stats(), api.errors), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request):
        api.authorize(request)
        return models.listing(api)

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        api.authorize(request)
        return models.get(api, name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        owner = api.authorize(request)
        return await chat.complete(api, request, owner, await api.read(request, ChatRequest))

    @app.post("/v1/completions")
    async def text_completions(request: Request):
        owner = api.authorize(request)
        return await completions.complete(api, request, owner, await api.read(request, CompletionRequest))

    @app.post("/v1/sessions")
    async def create_session(request: Request):
        owner = api.authorize(request)
        return sessions.create(api, owner, await api.read(request, SessionCreate))

    @app.get("/v1/sessions")
    async def list_sessions(request: Request):
        return sessions.listing(api, api.authorize(request))

    @app.get("/v1/sessions/{sid}")
    async def get_session(sid: str, request: Request):
        return sessions.get(api, api.authorize(request), sid)

    @app.patch("/v1/sessions/{sid}")
    async def rename_session(sid: str, request: Request):
        owner = api.authorize(request)
        return sessions.rename(api, owner, sid, await api.read(request, SessionRename))

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str, request: Request):
        return sessions.delete(api, api.authorize(request), sid)

    @app.get("/v1/kb")
    async def list_kbs(request: Request):
        api.authorize(request)
        return kb.listing(api)

    @app.post("/v1/kb")
    async def create_kb(request: Request):
        api.authorize(request)
        return await kb.create(api, await api.read(request, KbCreate))

    @app.get("/v1/kb/{name}/documents")
    async def kb_documents(name: str, request: Request):
        api.authorize(request)
        return kb.documents(api, name, api.knowledge_base(name, "name"))

    @app.put("/v1/kb/{name}/documents/{filename}")
    async def kb_upload(name: str, filename: str, request: Request):
        api.authorize(request)
        return await kb.upload(api, request, name, api.knowledge_base(name, "name"), filename)

    @app.delete("/v1/kb/{name}/documents/{doc:path}")
    async def kb_remove(name: str, doc: str, request: Request):
        api.authorize(request)
        return await kb.remove(api, name, api.knowledge_base(name, "name"), doc)

    @app.post("/v1/kb/{name}/search")
    async def kb_search(name: str, request: Request):
        api.authorize(request)
        base = api.knowledge_base(name, "name")
        return await kb.find(api, name, base, await api.read(request, KbSearch))

    @app.post("/v1/kb/{name}/ask")
    async def kb_ask(name: str, request: Request):
        owner = api.authorize(request)
        base = api.knowledge_base(name, "name")
        return await kb.ask(api, request, owner, name, base, await api.read(request, KbAsk))

    @app.get("/v1/server")
    async def server_info(request: Request):
        api.authorize(request)
        return ui.server_info(api)

    @app.get("/v1/runs")
    async def list_runs(request: Request):
        api.authorize(request)
        return runs.listing(api)

    @app.get("/v1/runs/{path:path}/report/{name}")
    async def run_report(path: str, name: str, request: Request):
        api.authorize(request)
        return FileResponse(await runs.report(api, path, name), headers={"Cache-Control": "no-store"})

    @app.get("/v1/runs/{path:path}/data")
    async def run_data(path: str, request: Request):
        api.authorize(request)
        return await asyncio.to_thread(runs.data_preview, api, path)

    @app.get("/v1/runs/{path:path}")
    async def run_detail(path: str, request: Request):
        api.authorize(request)
        return await asyncio.to_thread(runs.detail, api, path)

    if cfg.ui:
        # The page itself holds no data (everything comes from the API, with the key): it is served to anyone
        # who can reach the port, as the API's 401s are.
        @app.get("/")
        @app.get("/ui")
        async def root():
            return RedirectResponse("/ui/")

        @app.get("/ui/{name:path}")
        async def ui_file(name: str):
            return ui.asset(name or "index.html")

    return app
