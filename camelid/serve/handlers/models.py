"""/v1/models: the served model and, beside it, one "kb:<name>" model per knowledge base it answers from."""

from __future__ import annotations

from camelid.serve.runtime import Api


def describe(api: Api, name: str) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": int(api.started),
        "owned_by": "camelid",
        "max_model_len": api.engine.max_model_len,
    }


def listing(api: Api) -> dict:
    return {"object": "list", "data": [describe(api, m) for m in [api.model_id] + [f"kb:{k}" for k in api.kbs]]}


def get(api: Api, name: str) -> dict:
    api.check_model(name)
    return describe(api, name)
