"""/v1/sessions: conversations the server keeps (camelid/serve/sessions.py stores them), each visible only to the
key that made it; ids are per key. Deleting one aborts its running turn; PATCH gives one a title."""

from __future__ import annotations

from camelid.serve.protocol import ApiError, SessionCreate, SessionRename, clip, session_not_found
from camelid.serve.runtime import Api


def create(api: Api, owner: str, r: SessionCreate) -> dict:
    try:
        return api.store.create(owner, api.model_id, [m.plain() for m in r.messages], r.session_id)
    except KeyError:  # ids are per key: only the caller's own sessions can clash
        raise ApiError(
            409, f"session '{clip(r.session_id)}' already exists", param="session_id", code="session_exists"
        ) from None


def listing(api: Api, owner: str) -> dict:
    return {"object": "list", "data": api.store.list(owner)}


def get(api: Api, owner: str, sid: str) -> dict:
    return api.session(owner, sid)


def rename(api: Api, owner: str, sid: str, r: SessionRename) -> dict:
    if not api.store.rename(owner, sid, r.title.strip()):
        raise session_not_found(sid)
    return api.session(owner, sid)


def delete(api: Api, owner: str, sid: str) -> dict:
    if not api.store.delete(owner, sid):
        raise session_not_found(sid)
    api.abort_turns(owner, sid)
    return {"id": sid, "object": "session.deleted", "deleted": True}
