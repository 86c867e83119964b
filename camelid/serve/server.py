"""`camelid serve`: the OpenAI-compatible server for a model, catalog name, run folder or LoRA adapter.

    camelid serve runs/quickstart                          # http://127.0.0.1:8000/v1, model id "quickstart"
    camelid serve runs/quickstart serve.port=9000 engine.max_running=32
    CAMELID_API_KEYS=secret camelid serve runs/quickstart serve.host=0.0.0.0
    camelid serve runs/quickstart serve.kb=[handbook]       # + model "kb:handbook": answers from that knowledge base

The engine loop runs in the main thread (see Engine.run) and HTTP in a second one. SIGINT/SIGTERM stop taking
connections, give in-flight requests `serve.shutdown_grace` seconds to finish, abort the rest, then exit.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
import time
from pathlib import Path

from camelid.config import Config
from camelid.utils import CamelidError

log = logging.getLogger("camelid")


def load_keys(cfg: Config) -> set[str]:
    keys = {k.strip() for k in os.environ.get("CAMELID_API_KEYS", "").split(",") if k.strip()}
    if cfg.serve.api_keys_file:
        path = Path(cfg.serve.api_keys_file)
        if not path.is_file():
            raise CamelidError(f"serve.api_keys_file: {path} does not exist")
        keys |= {line.split("#", 1)[0].strip() for line in path.read_text().splitlines()} - {""}
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_id(cfg: Config, target: str) -> str:
    if cfg.serve.model_name:
        return cfg.serve.model_name
    path = Path(target)
    return path.resolve().name if path.exists() else target


def open_kbs(cfg: Config) -> dict:
    """The knowledge bases named in serve.kb, opened and warmed (encoder, vector index, segmenter) so the first
    question is not the one that waits for them."""
    from camelid.rag.store import KnowledgeBase, kb_folder
    from camelid.rag.terms import terms

    kbs = {}
    for name in cfg.serve.kb:
        kb = KnowledgeBase.open(kb_folder(name, cfg.rag))
        if kb.name in kbs:
            raise CamelidError(f"serve.kb names two knowledge bases called '{kb.name}'")
        if cfg.rag.retriever != "bm25":
            kb.encoder(cfg.rag.embedding_batch, cfg.rag.embedding_dtype)
        kb.index()
        kbs[kb.name] = kb
    if kbs:
        terms("预热 warm-up")
    return kbs


def main(cfg: Config, target: str) -> None:
    import uvicorn

    from camelid.engine import Engine
    from camelid.serve.app import create_app
    from camelid.serve.sessions import SessionStore

    keys = load_keys(cfg)
    if not is_loopback(cfg.serve.host) and not keys:
        raise CamelidError(
            f"serve.host={cfg.serve.host} is reachable from other machines: set API keys first "
            "(serve.api_keys_file or CAMELID_API_KEYS)"
        )
    kbs = open_kbs(cfg)
    engine = Engine.load(target, cfg.engine, trust_remote_code=cfg.model.trust_remote_code)
    store = SessionStore(cfg.serve.sessions_db)
    name = model_id(cfg, target)
    app = create_app(engine, cfg.serve, name, store, keys, kbs, cfg.rag)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.serve.host,
            port=cfg.serve.port,
            log_level="warning",
            timeout_graceful_shutdown=int(cfg.serve.shutdown_grace) + 5,
        )
    )
    http = threading.Thread(target=server.run, name="camelid-http", daemon=True)

    def stop(signum, frame):
        if server.should_exit:  # a second signal: no more waiting
            engine.shutdown(0)
            return
        log.info("shutting down: finishing in-flight requests for up to %.0fs", cfg.serve.shutdown_grace)
        server.should_exit = True
        threading.Thread(target=engine.shutdown, args=(cfg.serve.shutdown_grace,), daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    http.start()
    while not server.started and http.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise CamelidError(f"could not listen on {cfg.serve.host}:{cfg.serve.port} (in use?)")
    # when HTTP ends (after a graceful shutdown, or by failing), the engine loop ends too
    threading.Thread(target=lambda: (http.join(), engine.shutdown(0)), daemon=True).start()
    served = "".join(f", 'kb:{k}'" for k in kbs)
    print(
        f"serving '{name}'{served} at http://{cfg.serve.host}:{cfg.serve.port}/v1 "
        f"({'API keys required' if keys else 'no API keys'}; sessions in {cfg.serve.sessions_db})",
        flush=True,
    )
    engine.run()
    server.should_exit = True
    http.join(timeout=cfg.serve.shutdown_grace + 10)
    store.close()
    for kb in app.state.api.kbs.values():  # those made through the API too
        kb.close()
    print("server stopped", flush=True)
