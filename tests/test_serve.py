"""`camelid serve` as users run it: a real server process on a tiny model, driven by the official openai client
and raw HTTP for what a client library would refuse to send."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")

KEYS = ("key-alice", "key-bob")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model_dir, db, *overrides, keys=KEYS):
    port = free_port()
    env = {**os.environ, "CAMELID_API_KEYS": ",".join(keys)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "camelid",
            "serve",
            str(model_dir),
            f"serve.port={port}",
            f"serve.sessions_db={db}",
            "serve.model_name=tiny",
            "engine.block_size=4",
            "engine.kv_cache_tokens=4096",
            *overrides,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def http(url, path, body=None, key=KEYS[0], method=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def metrics(url) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"
    }


def errors(m: dict[str, float], **labels) -> float:
    """camelid_http_errors_total summed over the series whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in m.items() if k.startswith("camelid_http_errors_total{") and all(w in k for w in want))


@pytest.fixture(scope="module")
def live(tiny_model, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "sessions.sqlite"
    with server(
        tiny_model, db, "serve.max_concurrent_per_key=2", "serve.max_tokens=256", "serve.max_body_bytes=20000"
    ) as (url, _):
        yield url, db


def client(url, key=KEYS[0]):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_chat_completions_and_streaming(live):
    url, _ = live
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content  # greedy: streamed = non-streamed
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason

    two = c.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, n=2, seed=3, logprobs=True, top_logprobs=2
    )
    assert [ch.index for ch in two.choices] == [0, 1]
    lp = two.choices[0].logprobs.content
    assert len(lp) == len(two.choices[0].logprobs.content) > 0 and all(x.logprob <= 0 for x in lp)
    assert all(len(x.top_logprobs) == 2 and x.top_logprobs[0].logprob >= x.top_logprobs[1].logprob for x in lp)

    comp = c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0, logprobs=1)
    assert comp.object == "text_completion" and comp.usage.completion_tokens == len(comp.choices[0].logprobs.tokens)
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0, stream=True
        )
    )
    assert streamed == comp.choices[0].text
    stopped = c.completions.create(
        model="tiny",
        prompt="The quick brown fox",
        max_tokens=6,
        temperature=0,
        stop=[comp.choices[0].text[2:4]] if len(comp.choices[0].text) >= 4 else None,
    )
    assert comp.choices[0].text.startswith(stopped.choices[0].text)


def test_errors_are_4xx_with_a_reason_and_the_server_keeps_serving(live):
    url, _ = live
    c = client(url)
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert http(url, "/v1/models", key=None)[0] == 401
    with pytest.raises(openai.NotFoundError, match="not found"):
        c.chat.completions.create(model="gpt-4", messages=HELLO)
    status, body = http(url, "/v1/chat/completions", raw=b'{"model": "tiny", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "temprature": 0.5})
    assert status == 400 and "temprature" in body["error"]["message"]
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 10_000})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "top_p": 0})
    assert status == 400 and body["error"]["param"] == "top_p"
    long = [{"role": "user", "content": "北京 上海 " * 1500}]
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": long})
    assert status == 413  # over serve.max_body_bytes
    long = [{"role": "user", "content": "fox dog " * 400}]
    status, body = http(url, "/v1/chat/completions", {"model": "tiny", "messages": long, "max_tokens": 8})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    status, body = http(
        url,
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
    )
    assert status == 400 and "messages" in body["error"]["message"]
    assert http(url, "/v1/nothing", {})[0] == 404
    # still serving
    assert c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4).choices[0].finish_reason
    assert errors(metrics(url), status=400) >= 5


def test_per_key_concurrency_limit(live):
    url, _ = live
    c = client(url)
    streams = [
        c.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
        )
        for _ in range(2)
    ]
    for s in streams:
        next(iter(s))
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert client(url, KEYS[1]).chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)  # other key
    for s in streams:
        s.close()


def wait_idle(url) -> dict[str, float]:
    for _ in range(100):
        m = metrics(url)
        if m["camelid_kv_blocks_used"] == 0 and m["camelid_requests_running"] == 0:
            return m
        time.sleep(0.1)
    return m


def test_cancelled_stream_frees_its_kv_blocks(live):
    url, _ = live
    before = wait_idle(url)['camelid_requests_total{finish_reason="abort"}']
    stream = client(url).chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=250, stream=True, extra_body={"ignore_eos": True}
    )
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert metrics(url)["camelid_kv_blocks_used"] > 0
    stream.close()
    m = wait_idle(url)
    assert m["camelid_kv_blocks_used"] == 0 and m['camelid_requests_total{finish_reason="abort"}'] == before + 1


def test_sessions_keep_history_reuse_prefix_and_are_per_key(live):
    url, _ = live
    c = client(url)
    # as the README shows it: the official client's generic post
    sess = c.post("/sessions", body={"messages": [{"role": "system", "content": "Answer briefly."}]}, cast_to=dict)
    assert sess["id"].startswith("sess_")
    sid = sess["id"]
    first = c.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=8, temperature=0, extra_body={"session_id": sid}
    )
    second = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "And of China?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"session_id": sid},
    )
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 3  # the server added the history
    assert second.usage.prompt_tokens_details.cached_tokens >= 4  # earlier turns' KV blocks were reused
    status, got = http(url, f"/v1/sessions/{sid}")
    assert [m["role"] for m in got["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert got["messages"][2]["content"] == first.choices[0].message.content
    # per key: bob sees none of alice's sessions
    assert sid in [s["id"] for s in http(url, "/v1/sessions")[1]["data"]]
    assert http(url, "/v1/sessions", key=KEYS[1])[1]["data"] == []
    assert http(url, f"/v1/sessions/{sid}", key=KEYS[1])[0] == 404
    assert http(url, f"/v1/sessions/{sid}", key=KEYS[1], method="DELETE")[0] == 404
    with pytest.raises(openai.NotFoundError):
        client(url, KEYS[1]).chat.completions.create(model="tiny", messages=HELLO, extra_body={"session_id": sid})
    assert http(url, f"/v1/sessions/{sid}", method="DELETE") == (
        200,
        {"id": sid, "object": "session.deleted", "deleted": True},
    )
    assert http(url, f"/v1/sessions/{sid}")[0] == 404


def test_session_history_is_windowed_when_the_context_would_overflow(live):
    url, _ = live
    c = client(url)
    _, sess = http(url, "/v1/sessions", {})
    turn = [{"role": "user", "content": "fox dog cat " * 25}]  # ~150 tokens a turn, context 512
    used = []
    for _ in range(6):
        r = c.chat.completions.create(model="tiny", messages=turn, max_tokens=8, extra_body={"session_id": sess["id"]})
        used.append(r.usage.prompt_tokens)
    assert max(used) + 8 <= 512
    drop = next(i for i in range(1, 6) if used[i] < used[i - 1])  # older exchanges were dropped ...
    assert used[drop] <= (512 - 8) // 2 and used[drop + 1] > used[drop]  # ... down to half, then it grows again
    _, got = http(url, f"/v1/sessions/{sess['id']}")
    assert len(got["messages"]) == 12 and got["window"] > 0  # the stored history is complete


def test_sessions_survive_a_restart_and_shutdown_is_graceful(tiny_model, tmp_path):
    db = tmp_path / "s.sqlite"
    with server(tiny_model, db) as (url, proc):
        _, sess = http(url, "/v1/sessions", {})
        r = client(url).chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=6, temperature=0, extra_body={"session_id": sess["id"]}
        )
        # SIGTERM while a long request runs: it still completes, then the process exits cleanly
        stream = client(url).chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=60, stream=True, extra_body={"ignore_eos": True}
        )
        it = iter(stream)
        next(it)
        proc.send_signal(signal.SIGTERM)
        rest = list(it)
        assert [ch.choices[0].finish_reason for ch in rest if ch.choices][-1] == "length"
        assert proc.wait(timeout=60) == 0
    with server(tiny_model, db, "serve.request_timeout=0.1") as (url, _):
        _, got = http(url, f"/v1/sessions/{sess['id']}")
        assert got["messages"] == [HELLO[0], {"role": "assistant", "content": r.choices[0].message.content}]
        status, body = http(
            url, "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 480, "ignore_eos": True}
        )
        assert status == 504 and body["error"]["code"] == "timeout"
        assert http(url, "/health", key=None)[0] == 200


def test_binding_beyond_localhost_requires_keys(tiny_model, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "camelid",
            "serve",
            str(tiny_model),
            "serve.host=0.0.0.0",
            f"serve.sessions_db={tmp_path}/s.db",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "CAMELID_API_KEYS"},
        timeout=120,
    )
    assert proc.returncode == 1 and "API keys" in proc.stderr
