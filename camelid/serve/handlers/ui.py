"""The web UI's own routes: its static files (camelid/serve/ui/, shipped in the wheel; nothing from a CDN) and
/v1/server, what the page's Models view shows — the model served, its chat template and context, the limits a
request must keep, and the engine's live stats (the numbers /metrics exports)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.responses import Response

from camelid.serve.protocol import ApiError, clip
from camelid.serve.runtime import Api

ASSETS = Path(__file__).resolve().parent.parent / "ui"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
# No inline script and nothing from elsewhere may run in the page, whatever text a model or document puts in it:
# even were escaping to miss a spot, the browser would refuse the script. Reports are shown in a sandboxed frame
# (srcdoc, no scripts), whose inline styles need 'unsafe-inline' for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


_CACHE: dict[str, bytes] = {}


def asset(name: str) -> Response:
    """A UI file from memory after its first read: on a 2-core server every millisecond of CPU an HTTP request takes
    is taken from generation (a FileResponse, through a worker thread, cost ~3x more)."""
    f = ASSETS / name
    if name not in _CACHE:
        if "/" in name or name.startswith(".") or f.suffix not in TYPES or not f.is_file():
            raise ApiError(404, f"no UI file '{clip(name)}'", code="not_found")
        _CACHE[name] = f.read_bytes()
    return Response(
        _CACHE[name],
        media_type=TYPES[f.suffix],
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def server_info(api: Api) -> dict:
    template = getattr(api.tok, "chat_template", None)
    return {
        "object": "server",
        "model": api.model_id,
        "context_length": api.engine.max_model_len,
        "chat_template": template if isinstance(template, str) else None,
        "knowledge_bases": list(api.kbs),
        "limits": {
            "max_tokens": api.cfg.max_tokens,
            "default_max_tokens": api.default_max_tokens,
            "max_upload_bytes": api.cfg.max_upload_bytes,
            "max_concurrent_per_key": api.cfg.max_concurrent_per_key,
        },
        "runs_root": api.cfg.runs_root,
        "api_keys": bool(api.keys),
        "uptime": round(time.time() - api.started, 1),
        "engine": api.stats(),
    }
