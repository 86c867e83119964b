"""Long generations: does the engine's own per-step work stay flat as outputs grow, and 2,048 tokens vs HF generate.

Each engine step is timed whole and its model forward apart (the forward call wrapped in a timer); the difference is
the engine's host-side work for that step: scheduling, building the paged-attention batch (slot tables), sampling,
penalties, detokenization, stop-string search and delivery. Attention itself reads every earlier token's KV, so the
forward grows with the context by nature; the host-side work should not.

1. One request, greedy, exactly --tokens new tokens (end-of-sequence masked), vs HF `generate` on the same prompt
   (`min_new_tokens` = `max_new_tokens`, greedy, its own KV cache): tokens/s and how many leading tokens agree.
2. --batch concurrent requests of --tokens new tokens each, with two stop strings that never occur, repetition
   penalty 1.05 and logprobs on (every per-token path of the engine busy): host-side ms per step by output position.

    .venv/bin/python benchmarks/serve_long.py                     # ~8 min on 2 cores
    .venv/bin/python benchmarks/serve_long.py --tokens 256 --batch 2 --out ''   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from common import machine, publish
from serve_throughput import generate_exactly, prompt_sets, prompts

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Serving: long generations (engine host work per step, 2,048 tokens vs HF generate)"
INTRO = """\
`benchmarks/serve_long.py`. Each engine step is timed whole and its model forward apart; host work = step − forward:
scheduling, the paged-attention batch (slot tables), sampling and penalties, detokenization, stop-string search,
delivery. The forward (attention reads all earlier KV) grows with the context by nature; host work should stay
flat. The single-request run is compared with HF `generate` (greedy, its own KV cache, same prompt and dtype).
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=2048, help="new tokens per request")
    p.add_argument("--batch", type=int, default=8, help="concurrent requests in part 2")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    return p.parse_args(argv)


class TimedForward:
    """Stands in for the engine's step model: forwards the call and adds its duration to `self.seconds`."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def run_timed(engine, prompt_list, params) -> tuple[list[tuple[int, float, float]], list]:
    """Step the engine until every request ends; per step (output position, step s, forward s), and the requests."""
    timed = TimedForward(engine.step_model)
    engine.step_model = timed
    reqs = [engine.submit(p, params, on_output=lambda o: None) for p in prompt_list]
    steps = []
    try:
        while not all(r.finished for r in reqs):
            before, t0 = timed.seconds, time.perf_counter()
            engine._step_once()
            steps.append((max(len(r.generated) for r in reqs), time.perf_counter() - t0, timed.seconds - before))
    finally:
        engine.step_model = timed.model
    return steps, reqs


def by_position(steps, tokens: int) -> list[tuple[str, float, float, int]]:
    """(window, host ms per step, forward ms per step, steps) over windows of output positions."""
    edges = [e for e in (1, 64, 128, 256, 512, 1024, 1536, 2048, 4096, 8192) if e < tokens] + [tokens + 1]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        got = [(s, f) for pos, s, f in steps if lo <= pos < hi]
        if got:
            host = statistics.median((s - f) * 1000 for s, f in got)
            fwd = statistics.median(f * 1000 for s, f in got)
            rows.append((f"{lo}–{hi - 1}", host, fwd, len(got)))
    return rows


def teacher_forced_agreement(model, prompt: list[int], generated: list[int]) -> int:
    """Positions where the reference model's argmax, given the engine's own prefix, is the engine's next token: unlike
    comparing two free runs, one near-tie does not make every later position differ."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1]
    return int((logits.argmax(-1) == torch.tensor(generated)).sum())


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    import torch
    from transformers import AutoModelForCausalLM

    from camelid import hub
    from camelid.config import EngineConfig
    from camelid.engine import SamplingParams
    from camelid.engine.engine import Engine
    from camelid.utils import native_bf16_cpu

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if native_bf16_cpu() else "float32"
    path = hub.resolve_model(args.model)
    engine = Engine.load(path, EngineConfig(dtype=dtype))
    pool = prompts(engine.tokenizer, args.batch + 1, prompt_sets("")[0])
    engine.generate(pool[:2], SamplingParams(max_tokens=8, temperature=0))  # warm up
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine(load_before)}; torch threads: {torch.get_num_threads()}",
        f"- command: `{shlex.join(['python', 'benchmarks/serve_long.py'] + (argv if argv is not None else sys.argv[1:]))}`",
        f"- model: {args.model}, {dtype}; {args.tokens} new tokens per request",
    ]

    # 1. one request vs HF generate
    greedy = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    steps, (req,) = run_timed(engine, pool[:1], greedy)
    ours_s = sum(s for _, s, _ in steps)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    generate_exactly(ref, pool[0], 8, engine.tokenizer.pad_token_id or 0)  # warm up
    theirs, theirs_s = generate_exactly(ref, pool[0], args.tokens, engine.tokenizer.pad_token_id or 0)
    forced = teacher_forced_agreement(ref, pool[0], req.generated)
    del ref
    same = next((i for i, (a, b) in enumerate(zip(req.generated, theirs)) if a != b), min(len(theirs), args.tokens))
    lines += [
        "",
        f"One request, {args.tokens} new tokens, greedy (prompt {len(pool[0])} tokens):",
        "",
        "| side | seconds | tokens/s | ratio |",
        "|---|---|---|---|",
        f"| camelid engine | {ours_s:.1f} | {args.tokens / ours_s:.1f} | **{theirs_s / ours_s:.2f}×** |",
        f"| HF generate | {theirs_s:.1f} | {args.tokens / theirs_s:.1f} | 1.00× |",
        "",
        f"Leading tokens identical to HF generate's: {same} of {args.tokens}"
        + (" (all)" if same == args.tokens else " (then a near-tie in this dtype breaks differently)")
        + f"; the engine's token is HF's own greedy choice given the engine's prefix at {forced} of {args.tokens} "
        "positions (one teacher-forced HF forward over the engine's output).",
        "",
        "| output positions | host ms/step | forward ms/step | steps |",
        "|---|---|---|---|",
    ]
    lines += [f"| {w} | {h:.2f} | {f:.1f} | {n} |" for w, h, f, n in by_position(steps, args.tokens)]
    print("\n".join(lines[-12:]), flush=True)

    # 2. a batch with every per-token path on
    busy = SamplingParams(
        max_tokens=args.tokens,
        temperature=0,
        ignore_eos=True,
        stop=["<|never-a|>", "\n\n### never"],
        repetition_penalty=1.05,
        logprobs=True,
        top_logprobs=2,
    )
    steps, reqs = run_timed(engine, pool[1 : args.batch + 1], busy)
    wall = sum(s for _, s, _ in steps)
    rows = by_position(steps, args.tokens)
    lines += [
        "",
        f"{args.batch} concurrent requests, {args.tokens} new tokens each, two stop strings, repetition penalty 1.05, "
        f"logprobs with top 2: {sum(len(r.generated) for r in reqs) / wall:.1f} tokens/s in all",
        "",
        "| output positions | host ms/step | host ms per request-step | forward ms/step | steps |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {w} | {h:.2f} | {h / args.batch:.3f} | {f:.1f} | {n} |" for w, h, f, n in rows]
    if len(rows) > 1:
        lines += ["", f"host work per step, last window / first window: **{rows[-1][1] / rows[0][1]:.2f}×**"]
    print("\n".join(lines[-len(rows) - 6 :]), flush=True)

    key = f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {dtype}, {args.model}"
    publish(args.out, SECTION, INTRO, key, lines)


if __name__ == "__main__":
    main()
