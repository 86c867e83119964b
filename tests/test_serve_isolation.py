"""One client must never hurt another, nor the server: limits counted per generation, aborts when a client
leaves or its session is deleted, a 4xx naming the field for every malformed body, OpenAI's error shape for
anything unexpected, every error counted, session ids private to their key.

The server runs in this process (uvicorn in a thread on 127.0.0.1, the engine loop in another) so the tests can
see the engine's requests; clients are raw HTTP, to send and to drop what a client library would not."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

KEYS = ("key-alice", "key-bob")
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@contextlib.contextmanager
def app_server(model_dir, db, keys=KEYS, **serve):
    """The app as `camelid serve` builds it, with `serve.*` fields as keywords."""
    import uvicorn

    from camelid.config import EngineConfig, ServeConfig
    from camelid.engine import Engine
    from camelid.serve.app import create_app
    from camelid.serve.sessions import SessionStore

    engine = Engine.load(str(model_dir), EngineConfig(block_size=4, kv_cache_tokens=4096, dtype="float32"))
    store = SessionStore(db)
    app = create_app(engine, ServeConfig(**serve), "tiny", store, set(keys))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threads = [threading.Thread(target=engine.run, daemon=True), threading.Thread(target=server.run, daemon=True)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            if server.started:
                break
            time.sleep(0.05)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, engine=engine, api=app.state.api, store=store)
    finally:
        server.should_exit = True
        threads[1].join(timeout=10)
        engine.shutdown(0)
        threads[0].join(timeout=10)
        store.close()


def http(url, path, body=None, key=KEYS[0], method=None, raw: bytes | None = None, headers: dict | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def raw_request(port, path, body: bytes, key=KEYS[0], content_type="application/json", extra: bytes = b""):
    """A socket that has sent one POST: the caller reads what comes back, or drops the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    s.sendall(head + extra + b"\r\n" + body)
    return s


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def sse_events(raw: bytes) -> list:
    """The data of each server-sent event, decoded ([DONE] stays a string)."""
    body = raw.split(b"\r\n\r\n", 1)[1].decode()
    out = []
    for line in body.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metrics(url) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"
    }


def errors(m: dict[str, float], **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in m.items() if k.startswith("camelid_http_errors_total{") and all(w in k for w in want))


def wait_for(cond, timeout=30.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def idle(srv) -> bool:
    return not srv.engine.running and not srv.engine.waiting and not any(srv.api.in_flight.values())


@pytest.fixture(scope="module")
def srv(tiny_model, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "sessions.sqlite"
    with app_server(tiny_model, db, max_concurrent_per_key=4, max_prompts_per_request=8, max_tokens=480) as s:
        yield s


LONG = {"max_tokens": 400, "ignore_eos": True}  # runs for many seconds on the tiny model: aborted, never finished


def test_a_call_counts_prompts_times_n_against_its_key(srv):
    url, owner = srv.url, srv.api.authorize(SimpleNamespace(headers={"authorization": f"Bearer {KEYS[0]}"}))
    # the report's flood: 5,000 prompts x n=8 in one 55 KB call; refused before any tokenizing or queueing
    flood = {"model": "tiny", "prompt": ["hi"] * 5000, "n": 8, "max_tokens": 4}
    t = time.monotonic()
    status, body = http(url, "/v1/completions", flood)
    assert (
        status == 400 and body["error"]["param"] == "prompt" and "max_prompts_per_request" in body["error"]["message"]
    )
    assert time.monotonic() - t < 5 and idle(srv)
    # within the prompt cap, but 3 prompts x n=2 = 6 generations can never run under a limit of 4
    status, body = http(url, "/v1/completions", {"model": "tiny", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 2})
    assert (
        status == 400
        and body["error"]["code"] == "too_many_generations"
        and "6 generations" in body["error"]["message"]
    )
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "n": 5, "max_tokens": 2})
    assert status == 400 and body["error"]["param"] == "n"
    # one generation in flight: a call adding 4 more waits its turn (429), one adding 3 runs
    s = raw_request(srv.port, "/v1/completions", json.dumps({"model": "tiny", "prompt": [5, 6], **LONG}).encode())
    try:
        assert wait_for(lambda: srv.api.in_flight.get(owner) == 1)
        status, body = http(url, "/v1/completions", {"model": "tiny", "prompt": ["a", "b"], "n": 2, "max_tokens": 2})
        assert (
            status == 429
            and body["error"]["type"] == "rate_limit_error"
            and "1 generations in flight" in body["error"]["message"]
        )
        status, body = http(url, "/v1/completions", {"model": "tiny", "prompt": ["a", "b", "c"], "max_tokens": 2})
        assert status == 200 and len(body["choices"]) == 3
        # another key is not held back by this one
        assert (
            http(url, "/v1/completions", {"model": "tiny", "prompt": ["a"] * 4, "max_tokens": 2}, key=KEYS[1])[0] == 200
        )
    finally:
        s.close()
    assert wait_for(lambda: idle(srv))


def test_health_answers_while_the_engine_is_busy_or_locked(srv):
    s = raw_request(
        srv.port, "/v1/completions", json.dumps({"model": "tiny", "prompt": [5, 6], "n": 4, **LONG}).encode()
    )
    try:
        assert wait_for(lambda: len(srv.engine.running) == 4)
        with srv.engine._step_lock:  # no step can run: /health must not need the lock, nor wait for a step
            t = time.monotonic()
            status, body = http(srv.url, "/health", key=None)
            assert status == 200 and body["running"] == 4 and time.monotonic() - t < 2
    finally:
        s.close()
    assert wait_for(lambda: idle(srv))


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_has_its_requests_aborted_at_once(srv, stream):
    before = dict(srv.engine.counters)
    body = {"model": "tiny", "prompt": [5, 6, 7], "n": 2, "stream": stream, **LONG}
    s = raw_request(srv.port, "/v1/completions", json.dumps(body).encode())
    assert wait_for(lambda: len(srv.engine.running) == 2 and srv.engine.pool.used > 0)
    s.close()
    t = time.monotonic()
    assert wait_for(lambda: srv.engine.counters["requests_abort"] == before.get("requests_abort", 0) + 2, timeout=10)
    assert time.monotonic() - t < 3  # the next step or so, not the ~30 s the 400 tokens would take
    assert wait_for(lambda: idle(srv)) and srv.engine.pool.used == 0  # every KV block is back
    assert srv.engine.counters["requests_length"] == before.get("requests_length", 0)


def test_deleting_a_session_aborts_its_running_turn(srv):
    url = srv.url
    # not streaming: the turn answers 409 in OpenAI's error shape, and saves nothing
    sid = http(url, "/v1/sessions", {"session_id": "doomed"})[1]["id"]
    result = {}
    turn = threading.Thread(
        target=lambda: result.update(
            r=http(url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "session_id": sid, **LONG})
        )
    )
    turn.start()
    assert wait_for(lambda: srv.engine.running)
    assert http(url, f"/v1/sessions/{sid}", method="DELETE") == (
        200,
        {"id": sid, "object": "session.deleted", "deleted": True},
    )
    # a new session may take the id at once: the aborted turn must not land in it
    assert http(url, "/v1/sessions", {"session_id": sid})[0] == 200
    turn.join(timeout=30)
    status, body = result["r"]
    assert status == 409 and body["error"]["code"] == "session_deleted" and body["error"]["param"] == "session_id"
    assert http(url, f"/v1/sessions/{sid}")[1]["messages"] == []
    assert http(url, f"/v1/sessions/{sid}", method="DELETE")[0] == 200

    # streaming: an error event, then [DONE]
    sid = http(url, "/v1/sessions", {})[1]["id"]
    s = raw_request(
        srv.port,
        "/v1/chat/completions",
        json.dumps({"model": "tiny", "messages": HELLO, "session_id": sid, "stream": True, **LONG}).encode(),
    )
    assert wait_for(lambda: srv.engine.running)
    assert http(url, f"/v1/sessions/{sid}", method="DELETE")[0] == 200
    events = sse_events(read_all(s))
    s.close()
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "session_deleted"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert wait_for(lambda: idle(srv)) and srv.api.turns == {}
    assert http(url, f"/v1/sessions/{sid}")[0] == 404


def test_malformed_values_get_a_400_naming_the_field(srv):
    url = srv.url
    comp = {"model": "tiny", "max_tokens": 2}
    cases = [  # (body, the param named)
        ({**comp, "prompt": [-1]}, "prompt"),
        ({**comp, "prompt": [2**70]}, "prompt"),
        ({**comp, "prompt": [[5, 6], [600000]]}, "prompt"),
        ({**comp, "prompt": "\ud800"}, "prompt"),
        ({**comp, "prompt": ["ok", "x\udfff"]}, "prompt.1"),
        ({**comp, "prompt": "hi", "seed": 2**70}, "seed"),
        ({**comp, "prompt": "hi", "n": "2"}, "n"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "hi\ud800"}]}, "messages.0.content"),
    ]
    for body, param in cases:
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        status, got = http(url, path, raw=json.dumps(body).encode())
        assert status == 400 and got["error"]["param"] == param, (body, got)
        assert got["error"]["type"] == "invalid_request_error"
    status, got = http(
        url, "/v1/sessions", raw=json.dumps({"messages": [{"role": "user", "content": "\ud800"}]}).encode()
    )
    assert status == 400 and got["error"]["param"] == "messages.0.content"
    status, got = http(
        url, "/v1/completions", raw=b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    assert status == 400 and got["error"]["code"] == "invalid_json" and "nested" in got["error"]["message"]
    status, got = http(url, "/v1/completions", raw=b'{"model": "tiny", "prompt": "hi", "temperature": NaN}')
    assert status == 400 and got["error"]["param"] == "temperature"
    status, got = http(
        url,
        "/v1/completions",
        raw=json.dumps({**comp, "prompt": "hi"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415 and got["error"]["code"] == "unsupported_media_type"
    # a key with non-ASCII bytes is a 401, not a TypeError from the comparison
    s = raw_request(srv.port, "/v1/completions", b"{}", key="ключ")
    assert b" 401 " in read_all(s).split(b"\r\n", 1)[0]
    s.close()
    # a tiny temperature samples greedily instead of turning logits into inf and the batch's step into NaN
    status, got = http(url, "/v1/completions", {**comp, "prompt": "hi", "temperature": 1e-300})
    assert status == 200 and got["choices"][0]["finish_reason"] in ("stop", "length")
    assert wait_for(lambda: idle(srv))


def test_unexpected_exceptions_answer_in_openai_shape_and_are_logged(srv, monkeypatch, caplog):
    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    before = metrics(srv.url)
    monkeypatch.setattr(srv.api.store, "list", broken)
    with caplog.at_level(logging.ERROR, logger="camelid"):
        status, body = http(srv.url, "/v1/sessions")
    assert status == 500 and body == {
        "error": {"message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}
    }
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    # inside a stream: an error event, then [DONE]
    from camelid.serve.handlers import completions

    monkeypatch.setattr(completions, "usage", broken)
    s = raw_request(
        srv.port,
        "/v1/completions",
        json.dumps(
            {
                "model": "tiny",
                "prompt": "hi",
                "max_tokens": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode(),
    )
    events = sse_events(read_all(s))
    s.close()
    assert events[-2]["error"]["code"] == "internal_error" and events[-1] == "[DONE]"
    after = metrics(srv.url)
    assert errors(after, status=500, sent="response") == errors(before, status=500, sent="response") + 1
    assert errors(after, status=500, sent="stream") == errors(before, status=500, sent="stream") + 1


def test_metrics_count_every_error_by_status_and_kind(srv):
    url = srv.url
    before = metrics(url)
    http(url, "/v1/nothing", {})
    http(url, "/v1/chat/completions", method="GET")
    http(url, "/v1/completions", raw=b"{")
    http(url, "/v1/models", key="wrong")
    sid = http(url, "/v1/sessions", {})[1]["id"]
    s = raw_request(
        srv.port,
        "/v1/chat/completions",
        json.dumps({"model": "tiny", "messages": HELLO, "session_id": sid, "stream": True, **LONG}).encode(),
    )
    assert wait_for(lambda: srv.engine.running)
    http(url, f"/v1/sessions/{sid}", method="DELETE")
    read_all(s)
    s.close()
    # a client that leaves halfway through sending its body
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[0]}\r\n"
        'Content-Length: 100000\r\n\r\n{"model": '.encode()
    )
    time.sleep(0.2)
    s.close()
    assert wait_for(lambda: errors(metrics(url), status=499) == errors(before, status=499) + 1, timeout=10)
    after = metrics(url)
    for labels in [
        dict(status=404, kind="not_found"),
        dict(status=405, kind="method_not_allowed"),
        dict(status=400, kind="invalid_json"),
        dict(status=401, kind="invalid_api_key"),
        dict(status=409, kind="session_deleted", sent="stream"),
        dict(status=499, kind="client_disconnected"),
    ]:
        assert errors(after, **labels) == errors(before, **labels) + 1, labels
    assert errors(after, status=500) == errors(before, status=500)  # none of it was an internal error
    assert wait_for(lambda: idle(srv))


def test_session_ids_are_private_to_each_key(srv):
    url = srv.url
    assert http(url, "/v1/sessions", {"session_id": "shared"})[0] == 200
    # bob may use the same id, and learns nothing about alice's
    status, bob = http(url, "/v1/sessions", {"session_id": "shared", "messages": HELLO}, key=KEYS[1])
    assert status == 200 and bob["id"] == "shared"
    assert http(url, "/v1/sessions", {"session_id": "shared"})[1]["error"]["code"] == "session_exists"  # alice's own
    assert http(url, "/v1/sessions/shared")[1]["messages"] == []
    assert http(url, "/v1/sessions/shared", key=KEYS[1])[1]["messages"] == HELLO
    assert http(url, "/v1/sessions/shared", method="DELETE")[0] == 200
    assert http(url, "/v1/sessions/shared", key=KEYS[1])[1]["messages"] == HELLO
    assert [s["id"] for s in http(url, "/v1/sessions", key=KEYS[1])[1]["data"]] == ["shared"]
    assert http(url, "/v1/sessions/shared", key=KEYS[1], method="DELETE")[0] == 200


def test_a_sessions_file_from_before_per_key_ids_is_migrated(tmp_path):
    from camelid.serve.sessions import SessionStore

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE sessions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,
            updated REAL NOT NULL, window INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX sessions_owner ON sessions(owner, updated);
        CREATE TABLE messages (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
            role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (session_id, seq));
        INSERT INTO sessions VALUES ('s1', 'alice', 'tiny', 1, 2, 1);
        INSERT INTO messages VALUES ('s1', 0, 'user', 'hi', 1), ('s1', 1, 'assistant', 'yo', 2);
    """)
    con.commit()
    con.close()
    store = SessionStore(db)
    got = store.get("alice", "s1")
    assert got["window"] == 1 and got["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert store.get("bob", "s1") is None
    store.create("bob", "tiny", [{"role": "user", "content": "mine"}], "s1")
    store.append("alice", "s1", [{"role": "user", "content": "again"}])
    assert len(store.get("alice", "s1")["messages"]) == 3 and len(store.get("bob", "s1")["messages"]) == 1
    assert store.delete("alice", "s1") and store.get("bob", "s1")["messages"] == [{"role": "user", "content": "mine"}]
    store.close()
    store = SessionStore(db)  # opened again: already current, nothing to migrate
    assert store.get("bob", "s1") is not None and [s["id"] for s in store.list("alice")] == []
    store.close()


def test_a_sessions_file_without_titles_is_migrated_and_titles_are_per_key(tmp_path):
    from camelid.serve.sessions import SessionStore

    db = tmp_path / "v2.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE sessions (owner TEXT NOT NULL, id TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,
            updated REAL NOT NULL, window INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (owner, id));
        CREATE TABLE messages (owner TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL,
            content TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, session_id, seq));
        INSERT INTO sessions VALUES ('alice', 's1', 'tiny', 1, 2, 0);
        INSERT INTO messages VALUES ('alice', 's1', 0, 'system', 'be brief', 1), ('alice', 's1', 1, 'user', 'hi', 1);
        PRAGMA user_version = 2;
    """)
    con.commit()
    con.close()
    store = SessionStore(db)
    [listed] = store.list("alice")
    assert listed["title"] == "" and listed["first_message"] == "hi" and listed["message_count"] == 2
    assert store.rename("alice", "s1", "Greeting") and not store.rename("bob", "s1", "theirs")
    assert store.get("alice", "s1")["title"] == "Greeting" and store.list("alice")[0]["title"] == "Greeting"
    store.close()
    store = SessionStore(db)
    assert store.get("alice", "s1")["title"] == "Greeting"
    store.close()
