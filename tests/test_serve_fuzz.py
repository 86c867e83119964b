"""Malformed requests by the hundred against a live server while another key streams: each gets a 4xx in
OpenAI's error shape, the other key's streams finish untouched, and /metrics counts every error."""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_serve_isolation import (
    KEYS,
    app_server,
    errors,
    http,
    idle,
    metrics,
    raw_request,
    read_all,
    sse_events,
    wait_for,
)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMP = {"model": "tiny", "prompt": "hi", "max_tokens": 2}

# wrong types and out-of-range values, for every field of both bodies
WRONG = {
    "model": [1, None, [], {}],
    "max_tokens": ["5", 5.5, -1, True, 10**6, 2**70],
    "temperature": ["1", -1, 3, True, None, 1e400],
    "top_p": [0, 1.5, "x", -1e400],
    "top_k": [-1, 1.5, "x"],
    "n": [0, -1, "2", 1.0, 100],
    "stop": [1, [1], ["a"] * 9, [""], {"a": 1}],
    "seed": ["1", 1.5, 2**64, -(2**70), True],
    "presence_penalty": [3, "0"],
    "frequency_penalty": [-3, []],
    "repetition_penalty": [0, -1, 1e6, "1", 1e-300],
    "ignore_eos": ["yes", 1],
    "stream": ["true", 1],
    "stream_options": ["x", {"include_usage": "yes"}, {"bad": 1}],
}
CHAT_ONLY = {
    "messages": [
        "hi",
        {},
        [1],
        [],
        None,
        [{"role": "x", "content": "hi"}],
        [{"role": "user", "content": 1}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
        [{"role": "user", "content": "hi", "x": 1}],
    ],
    "logprobs": [1, "true"],
    "top_logprobs": [21, -1],
    "max_completion_tokens": [-1, "1"],
    "session_id": [1, [], "no-such-session"],
    "kb": [1, "no-such-kb"],
}
COMP_ONLY = {
    "prompt": [1, {}, [1.5], [[1], "a"], None, [], [True], [-1], [[2**70]], "\ud800", ["x" * 10, "\udc00"]],
    "logprobs": [21, -1, True],
    "echo": ["no"],
}


def bodies() -> list[tuple[str, bytes, dict]]:
    """(path, raw body, extra headers) for every malformed request."""
    out = []
    for base, path, extra in ((CHAT, "/v1/chat/completions", CHAT_ONLY), (COMP, "/v1/completions", COMP_ONLY)):
        for field, values in {**WRONG, **extra}.items():
            out += [(path, json.dumps({**base, field: v}).encode(), {}) for v in values]
        out += [(path, json.dumps({**base, name: 1}).encode(), {}) for name in ("temprature", "logit_bias", "x" * 5000)]
    for n in (70, 1000, 100_000):  # nesting, in a field and as the whole body
        out.append(("/v1/completions", b'{"model": "tiny", "prompt": ' + b"[" * n + b"]" * n + b"}", {}))
        out.append(("/v1/chat/completions", b'{"a":' * n + b"1" + b"}" * n, {}))
    out += [("/v1/completions", b'{"model": "tiny", "metadata": ' + b"[" * 200 + b"]" * 200 + b', "prompt": "hi"}', {})]
    out += [
        ("/v1/completions", raw, {})
        for raw in [
            b"",
            b"null",
            b"[]",
            b"1",
            b'"text"',
            b"{",
            b'{"model": "tiny", "prompt": "hi",}',
            b"\x00\x01",
            '{"model": "tiny", "prompt": "caf\u00e9"}'.encode("latin-1"),  # not UTF-8
            b'{"model": "tiny", "prompt": "\xc0\xaf"}',  # an overlong encoding
            b'{"model": "tiny", "prompt": "hi", "temperature": NaN}',
            b'{"model": "tiny", "prompt": "hi", "top_p": Infinity}',
            b'{"model": "tiny", "prompt": "hi", "seed": 1' + b"0" * 5000 + b"}",  # past Python's int-parsing limit
            b'{"model": "tiny", "prompt": "hi", "max_tokens": 1e999}',
            b'{"model": "tiny", "prompt": "hi", "\\ud800": 1}',
            json.dumps({**COMP, "model": "m" * 400_000}).encode(),  # a huge string
            json.dumps({**COMP, "prompt": "fox " * 200_000}).encode(),  # past the context
            json.dumps({**COMP, "prompt": "x" * 1_100_000}).encode(),  # past serve.max_body_bytes
        ]
    ]
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"):
        out.append(("/v1/completions", json.dumps(COMP).encode(), {"Content-Type": ctype}))
    out.append(("/v1/completions", b"model=tiny&prompt=hi", {"Content-Type": "application/x-www-form-urlencoded"}))
    out += [
        ("/v1/sessions", json.dumps(b).encode(), {})
        for b in [
            {"session_id": ""},
            {"session_id": "s" * 129},
            {"session_id": 5},
            {"messages": "x"},
            {"messages": [{"role": "user", "content": "\ud800"}]},
            {"messages": [{"role": "tool", "content": "x"}]},
            {"x": 1},
        ]
    ]
    return out


@pytest.fixture(scope="module")
def srv(tiny_model, tmp_path_factory):
    with app_server(
        tiny_model, tmp_path_factory.mktemp("fuzz") / "s.sqlite", max_concurrent_per_key=4, max_tokens=256
    ) as s:
        yield s


def test_malformed_requests_get_4xx_while_another_key_streams(srv):
    cases = bodies()
    assert len(cases) >= 100
    before = metrics(srv.url)
    results = [None, None]

    def stream(i):
        s = raw_request(
            srv.port,
            "/v1/chat/completions",
            json.dumps(
                {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"stream {i}"}],
                    "max_tokens": 120,
                    "ignore_eos": True,
                    "stream": True,
                    "temperature": 0,
                }
            ).encode(),
            key=KEYS[1],
        )
        results[i] = sse_events(read_all(s))
        s.close()

    streams = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in streams:
        t.start()
    assert wait_for(lambda: len(srv.engine.running) == 2 and srv.engine.counters["generated_tokens"] >= 2)
    t0 = time.monotonic()
    sent = 0
    while sent < len(cases) or any(t.is_alive() for t in streams):  # every case once, and more while they stream
        path, raw, headers = cases[sent % len(cases)]
        status, body = http(srv.url, path, raw=raw, headers=headers)
        assert 400 <= status < 500, (path, raw[:200], headers, status, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
        sent += 1
    fuzz_seconds = time.monotonic() - t0
    # a key whose header is not ASCII: 401, not a failed comparison
    s = raw_request(srv.port, "/v1/completions", json.dumps(COMP).encode(), key="ключ")
    assert b" 401 " in read_all(s).split(b"\r\n", 1)[0]
    s.close()
    for t in streams:
        t.join(timeout=120)
    for events in results:
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
        finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
        assert finishes[-1] == "length"
    after = metrics(srv.url)
    assert errors(after) - errors(before) == sent + 1  # each bad request counted once
    assert errors(after, status=500) == 0 and wait_for(lambda: idle(srv))
    assert fuzz_seconds < 30, fuzz_seconds
