"""Serving: camelid's engine vs one-at-a-time `generate`, an HTTP load test, and session prefix reuse.

Four parts, one run, the same model, dtype, threads and prompts (alpaca_en/zh_demo instructions from the offline
catalog, each rendered with the model's chat template; greedy; every request generates exactly --max-tokens tokens,
end-of-sequence masked on both sides, so token counts match):

1. Closed loop, N = 1, 4, 16, 64 clients, each sending --requests requests back to back.
   (a) camelid's engine in-process (continuous batching, paged KV, prefix cache on as shipped);
   (b) sequential HF `generate`: a server that runs one `model.generate` at a time. Its service time per request is
       measured for real on --seq-requests requests; since a serial FIFO server's schedule is fixed, the N-client
       closed loop is then replayed from those measured times (latency = waiting + service) instead of waiting
       N x longer for the same numbers.
2. Offline batch of 16 prompts: camelid `Engine.generate` vs transformers' own continuous batching
   (`generate_batch`, paged attention) vs static padded batch `generate`.
3. Load test over HTTP: `camelid serve` in a subprocess, 64 client threads x 10 requests, errors counted; twice,
   with the web UI off, then on with one more thread requesting what open pages request (/ui/, /v1/server,
   /v1/sessions, /v1/runs) every second throughout, its errors and latencies counted apart: more than one page
   asks (its only timers are the Model view's /v1/server every 2 s and a training run's view every 3 s).
4. Multi-turn session over HTTP: a ~500-token system prompt and 8 turns sent with `session_id`, prefix cache on vs
   off (two server runs); latency per turn and cached prompt tokens.

    .venv/bin/python benchmarks/serve_throughput.py                  # ~10 min on 2 cores
    .venv/bin/python benchmarks/serve_throughput.py --clients 1,4 --requests 2 --parts 1 --out ''   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import RANDOM_MODELS, build_random_model, camelid_serve, machine, publish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTION = "## Serving: camelid engine vs sequential generate"
INTRO = """\
`benchmarks/serve_throughput.py`. Same model, dtype, torch threads and prompts on every side (alpaca_en/zh_demo
instructions from the offline catalog, rendered with the model's chat template); greedy; every request generates
exactly `max_tokens` tokens (end-of-sequence masked on both sides). Closed loop: N clients each send their next
request when the previous one returns. camelid: the engine in-process, prefix cache on as shipped (the template's
default system prompt is shared by all prompts). Sequential `generate`: a server running one `model.generate` at a
time; its per-request service time is measured on real requests and the N-client FIFO schedule is replayed from
those times (a serial server's schedule is fixed, so this gives the same latencies as running it). Throughput =
generated tokens / wall time; latency = request sent → last token.
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=4, help="requests per client (closed loop)")
    p.add_argument("--seq-requests", type=int, default=12, help="real sequential generate calls to time")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--load-clients", type=int, default=64)
    p.add_argument("--load-requests", type=int, default=10)
    p.add_argument("--load-rounds", type=int, default=1, help="load test: UI off then on, this many times")
    p.add_argument("--load-max-tokens", type=int, default=32)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--parts", default="1,2,3,4")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        default=None,
        help="serve a randomly initialised model of this shape (--model's or --inputs' tokenizer): speed only",
    )
    p.add_argument("--save-inputs", default="", help="write the prompts and --model's tokenizer here, and exit")
    p.add_argument("--inputs", default="", help="a folder from --save-inputs, instead of the offline catalog")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    return p.parse_args(argv)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def prompt_sets(inputs: str) -> tuple[list[dict], list[str]]:
    """(chat records for parts 1, 2 and 4, instruction texts for the load test): from the offline catalog, or from
    an --inputs folder that --save-inputs wrote."""
    if inputs:
        saved = json.loads((Path(inputs) / "prompts.json").read_text(encoding="utf-8"))
        return saved["records"], saved["load_texts"]
    from camelid.data.formats import load_source

    recs = []
    for name in ("alpaca_en_demo", "alpaca_zh_demo"):
        got, _ = load_source(name, "prompt", "skip", None, "auto")
        recs.extend(got)
    recs = [{"prompt": r["prompt"]} for r in recs if 20 <= len(r["prompt"][-1]["content"]) <= 300]
    load, _ = load_source("alpaca_en_demo", "prompt", "skip", 200, "auto")
    return recs, [r["prompt"][-1]["content"] for r in load]


def prompts(tokenizer, n: int, recs: list[dict]) -> list[list[int]]:
    from camelid.data.templates import prompt_ids

    return [prompt_ids(tokenizer, recs[(i * 7919) % len(recs)]["prompt"]) for i in range(n)]


# ---------------------------------------------------------------- part 1


def engine_closed_loop(engine, pool: list[list[int]], clients: int, per_client: int, max_tokens: int) -> dict:
    from camelid.engine import SamplingParams

    sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    lat, tokens, left, sent = [], [0], {c: per_client for c in range(clients)}, [0]

    def send(c: int) -> None:
        t0, k = time.perf_counter(), sent[0]
        sent[0] += 1

        def on_output(out):
            tokens[0] += len(out.token_ids)
            if out.finished:
                lat.append(time.perf_counter() - t0)
                left[c] -= 1
                if left[c]:
                    send(c)

        engine.submit(pool[k % len(pool)], sp, on_output=on_output)

    start = time.perf_counter()
    for c in range(clients):
        send(c)
    while len(lat) < clients * per_client:
        engine._step_once()
    wall = time.perf_counter() - start
    return {"tok_s": tokens[0] / wall, "p50": pct(lat, 50), "p99": pct(lat, 99), "requests": len(lat), "wall": wall}


def generate_exactly(model, prompt: list[int], tokens: int, pad: int = 0) -> tuple[list[int], float]:
    """HF `generate`, greedy, exactly `tokens` new tokens (end-of-sequence masked): the new ids and the seconds."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt], device=model.device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - t0
    assert out.shape[1] - len(prompt) == tokens
    return out[0, len(prompt) :].tolist(), seconds


def measure_sequential(model, pool: list[list[int]], n: int, max_tokens: int) -> list[float]:
    return [generate_exactly(model, ids, max_tokens)[1] for ids in pool[:n]]


def replay_sequential(service: list[float], clients: int, per_client: int, max_tokens: int) -> dict:
    """A serial FIFO server under a closed loop of `clients`, with service times taken cyclically from `service`."""
    clock, lat, k = 0.0, [], 0
    queue = [(0.0, c) for c in range(clients)]  # (arrival, client), FIFO
    left = {c: per_client for c in range(clients)}
    while queue:
        arrival, c = queue.pop(0)
        clock = max(clock, arrival) + service[k % len(service)]
        k += 1
        lat.append(clock - arrival)
        left[c] -= 1
        if left[c]:
            queue.append((clock, c))
    return {
        "tok_s": len(lat) * max_tokens / clock,
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "requests": len(lat),
        "wall": clock,
    }


# ---------------------------------------------------------------- part 2


def offline_batch(engine, model, tokenizer, pool, max_tokens: int) -> dict:
    import torch
    from transformers import GenerationConfig

    from camelid.engine import SamplingParams

    res = {}
    t0 = time.perf_counter()
    outs = engine.generate(pool, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    res["camelid Engine.generate"] = sum(o.completion_tokens for o in outs) / (time.perf_counter() - t0)

    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gc = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1)
    # its defaults size the cache from GPU memory; on CPU give it what camelid's engine gets per request and more
    cb = ContinuousBatchingConfig(page_size=32, num_blocks=512, max_batch_tokens=512)
    try:
        t0 = time.perf_counter()
        got = model.generate_batch(pool, generation_config=gc, continuous_batching_config=cb, progress_bar=False)
        res["transformers generate_batch (continuous batching)"] = sum(
            len(v.generated_tokens) for v in got.values()
        ) / (time.perf_counter() - t0)
    except Exception as e:  # report, don't hide, an API that moved
        res["transformers generate_batch (continuous batching)"] = f"failed: {type(e).__name__}: {e}"[:120]
    model.set_attn_implementation("sdpa")

    width = max(len(p) for p in pool)
    ids = torch.tensor([[tokenizer.pad_token_id or 0] * (width - len(p)) + p for p in pool], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in pool], device=model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
    res["static padded batch generate"] = (out.shape[1] - width) * len(pool) / (time.perf_counter() - t0)
    return res


# ---------------------------------------------------------------- parts 3 and 4 (HTTP)


@contextlib.contextmanager
def serve(model: str, *overrides: str):
    with tempfile.TemporaryDirectory(prefix="camelid-bench-") as work:
        with camelid_serve(
            model, f"serve.sessions_db={work}/s.sqlite", "serve.model_name=m", "serve.max_concurrent_per_key=1000",
            *overrides,
        ) as url:  # fmt: skip
            yield url


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def load_test(
    model: str, dtype: str, texts: list[str], clients: int, per_client: int, max_tokens: int, ui: bool
) -> dict:
    lat, errors, tokens, lock = [], [], [0], threading.Lock()

    def client(c: int) -> None:
        for k in range(per_client):
            msg = [{"role": "user", "content": texts[(c * per_client + k) % len(texts)]}]
            t0 = time.perf_counter()
            try:
                r = post(
                    url,
                    "/v1/chat/completions",
                    {"model": "m", "messages": msg, "max_tokens": max_tokens, "temperature": 0.7, "seed": c * 1000 + k},
                )
                with lock:
                    lat.append(time.perf_counter() - t0)
                    tokens[0] += r["usage"]["completion_tokens"]
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    ui_lat, ui_errors, running = [], [], [True]

    def page() -> None:
        while running[0]:
            for path in ("/ui/", "/v1/server", "/v1/sessions", "/v1/runs"):
                t0 = time.perf_counter()
                try:
                    urllib.request.urlopen(url + path, timeout=60).read()
                    ui_lat.append(time.perf_counter() - t0)
                except Exception as e:
                    ui_errors.append(f"{path}: {type(e).__name__}: {e}")
            time.sleep(1.0)

    with serve(model, f"engine.dtype={dtype}", f"serve.ui={str(ui).lower()}") as url:
        post(
            url,
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        if ui:
            threads.append(threading.Thread(target=page))
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads[:clients]:
            t.join()
        wall = time.perf_counter() - start
        running[0] = False
        threads[-1].join()
    return {
        "requests": len(lat) + len(errors),
        "errors": len(errors),
        "first_error": errors[:1],
        "wall": wall,
        "tok_s": tokens[0] / wall,
        "p50": pct(lat, 50) if lat else None,
        "p99": pct(lat, 99) if lat else None,
        "ui_requests": len(ui_lat) + len(ui_errors),
        "ui_errors": len(ui_errors),
        "ui_first_error": ui_errors[:1],
        "ui_p50": pct(ui_lat, 50) if ui_lat else None,
        "ui_max": max(ui_lat) if ui_lat else None,
    }


SYSTEM = (
    "You are the support assistant of a regional hospital. Answer in the patient's language, briefly and "
    "kindly. Never give a diagnosis; suggest seeing a doctor for anything serious. Opening hours: Monday to "
    "Friday 8:00-18:00, Saturday 9:00-12:00. The emergency department is open at all times. "
) * 5


def session_latency(model: str, dtype: str, prefix_cache: bool, turns: int) -> dict:
    questions = [
        "When are you open on Saturday?",
        "周六几点开门？",
        "Is the emergency department open at night?",
        "我头疼，应该怎么办？",
        "Can I book online?",
        "停车方便吗？",
        "Where do I get my results?",
        "谢谢你的帮助！",
    ]
    with serve(model, f"engine.dtype={dtype}", f"engine.prefix_cache={str(prefix_cache).lower()}") as url:
        post(
            url,
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        sid = post(url, "/v1/sessions", {"messages": [{"role": "system", "content": SYSTEM}]})["id"]
        rows = []
        for k in range(turns):
            t0 = time.perf_counter()
            r = post(
                url,
                "/v1/chat/completions",
                {
                    "model": "m",
                    "session_id": sid,
                    "max_tokens": 16,
                    "temperature": 0,
                    "ignore_eos": True,
                    "messages": [{"role": "user", "content": questions[k % len(questions)]}],
                },
            )
            rows.append(
                (
                    time.perf_counter() - t0,
                    r["usage"]["prompt_tokens"],
                    r["usage"]["prompt_tokens_details"]["cached_tokens"],
                )
            )
    later = rows[1:]
    return {
        "mean_latency_later_turns": statistics.mean(x[0] for x in later),
        "first_turn": rows[0][0],
        "prompt_tokens_last": rows[-1][1],
        "cached_share_later": sum(x[2] for x in later) / sum(x[1] for x in later),
    }


# ---------------------------------------------------------------- main


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid import hub
    from camelid.config import EngineConfig
    from camelid.engine.engine import Engine
    from camelid.utils import fast_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {int(x) for x in args.parts.split(",")}
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if fast_bf16(device) else "float32"
    records, load_texts = prompt_sets(args.inputs)
    if args.save_inputs:
        out = Path(args.save_inputs)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"records": records, "load_texts": load_texts}, ensure_ascii=False)
        (out / "prompts.json").write_text(text, encoding="utf-8")
        AutoTokenizer.from_pretrained(str(hub.resolve_model(args.model))).save_pretrained(str(out / "tokenizer"))
        print(f"wrote {len(records)} prompts and the tokenizer of {args.model} to {out}")
        return
    work = tempfile.TemporaryDirectory(prefix="camelid-serve-bench-")
    if args.random_model:  # weights that cost what a real model of this shape costs; the tokenizer is real
        tok_from = Path(args.inputs) / "tokenizer" if args.inputs else hub.resolve_model(args.model)
        path = Path(work.name) / "model"
        build_random_model(args.random_model, dtype, path, 0, AutoTokenizer.from_pretrained(str(tok_from)))
        name = f"random {args.random_model}"
    else:
        path, name = hub.resolve_model(args.model), args.model
    engine = Engine.load(path, EngineConfig(dtype=dtype))
    tok = engine.tokenizer
    clients = [int(x) for x in args.clients.split(",")]
    pool = prompts(tok, max(clients) * args.requests, records)
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; torch threads: {torch.get_num_threads()}",
        f"- command: `{shlex.join(['python', 'benchmarks/serve_throughput.py'] + (argv if argv is not None else sys.argv[1:]))}`",
        f"- model: {name}, {dtype}; prompts {min(map(len, pool))}–{max(map(len, pool))} tokens; "
        f"max_tokens {args.max_tokens}",
    ]
    engine.generate(pool[:2], None)  # warm up

    if 1 in parts:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval().to(device)
        measure_sequential(ref, pool, 1, 4)  # warm up
        service = measure_sequential(ref, pool, args.seq_requests, args.max_tokens)
        lines += [
            "",
            f"Sequential `generate` service time: mean {statistics.mean(service):.2f} s per request "
            f"({args.seq_requests} real calls, {args.max_tokens * len(service) / sum(service):.1f} tok/s)",
            "",
            "| clients | requests | camelid tok/s | camelid p50 s | camelid p99 s | sequential tok/s | sequential p50 s | sequential p99 s | throughput ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for n in clients:
            a = engine_closed_loop(engine, pool, n, args.requests, args.max_tokens)
            b = replay_sequential(service, n, args.requests, args.max_tokens)
            lines.append(
                f"| {n} | {a['requests']} | {a['tok_s']:.1f} | {a['p50']:.2f} | {a['p99']:.2f} | "
                f"{b['tok_s']:.1f} | {b['p50']:.2f} | {b['p99']:.2f} | **{a['tok_s'] / b['tok_s']:.1f}×** |"
            )
            print(lines[-1], flush=True)
        del ref

    if 2 in parts:
        fresh = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval().to(device)
        res = offline_batch(engine, fresh, tok, pool[:16], args.max_tokens)
        lines += [
            "",
            "Offline batch of 16 prompts (no queueing), generated tokens/s:",
            "",
            "| side | tok/s |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in res.items()]
        print("\n".join(lines[-len(res) :]), flush=True)
        del fresh

    del engine
    if 3 in parts:
        texts = load_texts
        lines += [
            "",
            f"Load test over HTTP (`camelid serve`, {args.load_clients} client threads × {args.load_requests} "
            f"requests, max_tokens {args.load_max_tokens}, temperature 0.7, stop at end-of-sequence), without the "
            "web UI, then with it and pages open (/ui/, /v1/server, /v1/sessions, /v1/runs requested every second):",
            "",
            "| web UI | requests | errors | wall s | generated tok/s | latency p50 s | p99 s | page requests | page errors "
            "| page p50 ms | page max ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        # off/on interleaved --load-rounds times: this shared machine's speed drifts by 2x over minutes, so a
        # single pair can mislead; each round's pair ran minutes apart at most
        for ui in [False, True] * args.load_rounds:
            r = load_test(path, dtype, texts, args.load_clients, args.load_requests, args.load_max_tokens, ui)
            page = (
                f"{r['ui_requests']} | **{r['ui_errors']}** | {r['ui_p50'] * 1000:.0f} | {r['ui_max'] * 1000:.0f}"
                if ui
                else "— | — | — | —"
            )
            lines.append(
                f"| {'on, page open' if ui else 'off'} | {r['requests']} | **{r['errors']}** | {r['wall']:.1f} | "
                f"{r['tok_s']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {page} |"
            )
            if r["first_error"] or r["ui_first_error"]:
                lines.append(f"first errors: {r['first_error']} {r['ui_first_error']}")
            print(lines[-1], flush=True)

    if 4 in parts:
        on = session_latency(path, dtype, True, args.turns)
        off = session_latency(path, dtype, False, args.turns)
        lines += [
            "",
            f"Multi-turn session over HTTP ({args.turns} turns with `session_id`, ~{on['prompt_tokens_last']} "
            "prompt tokens by the last turn, 16 new tokens a turn, greedy):",
            "",
            "| prefix cache | first turn s | mean latency turns 2.. s | prompt tokens served from cache (turns 2..) |",
            "|---|---|---|---|",
            f"| on | {on['first_turn']:.2f} | {on['mean_latency_later_turns']:.2f} | {on['cached_share_later']:.0%} |",
            f"| off | {off['first_turn']:.2f} | {off['mean_latency_later_turns']:.2f} | {off['cached_share_later']:.0%} |",
            "",
            f"**prefix reuse: later turns {off['mean_latency_later_turns'] / on['mean_latency_later_turns']:.1f}× faster**",
        ]
        print("\n".join(lines[-5:]), flush=True)

    publish(args.out, SECTION, INTRO, f"{device}, {dtype}, {name}", lines)
    work.cleanup()


if __name__ == "__main__":
    main()
