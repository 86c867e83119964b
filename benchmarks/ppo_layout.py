"""PPO memory and time per update: the shared-base LoRA layout vs separate model copies.

Both layouts run the same PPO (same model, LoRA r=16 on all linear layers, prompts, seeds, rollout batch, mini-batch,
epochs and answer length) through `camelid.train.ppo.main`, each in its own subprocess so its peak memory is its own:

- shared:   ONE base model; actor = LoRA adapter "default", critic = LoRA adapter "critic" + value head,
            reference = the base with adapters off;
- separate: three copies of the base: actor (+ LoRA), critic (+ LoRA + value head), frozen reference.

The reward is a Python function (answer length near 200 characters) rather than a reward model, so that only the
layouts differ: a reward model costs the same in both. Reported per layout: peak RSS of the process (CPU) or peak
allocated CUDA memory (GPU), the median wall time of one PPO update (rollout + scoring + the PPO epochs) over the
updates after the first, and the shared/separate ratios. With --repeats 2 the order is shared, separate, separate,
shared, so a drifting machine biases neither side.

Where the memory goes: each process samples its resident memory every 10 ms and marks the phases of the first
update (model load, generation, scoring the rollout, the PPO epochs) for their peaks, and counts the model weights
(all copies, adapters and value head), the engine's KV cache and the AdamW state from the tensors themselves; the
rest of the peak is activations and gradients, logits and what the allocator keeps.

    python benchmarks/ppo_layout.py                          # SmolLM2-135M on CPU (~6 min on 2 cores)
    python benchmarks/ppo_layout.py --random-model qwen2-0.5b --steps 2   # a Qwen2-0.5B shape, random weights
    python benchmarks/ppo_layout.py --device cuda --dtype bfloat16 --random-model qwen2-0.5b
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import LIVE_MEMORY_ENV, LIVE_MEMORY_HELP, RANDOM_MODELS, build_random_model, machine, write_results

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "## PPO: shared-base LoRA vs separate model copies"


def length_reward(prompts, answers):
    return [-abs(len(a) - 200) / 200 for a in answers]


class Phases:
    """Resident memory sampled every 10 ms; `mark(name)` closes the running phase and records its peak and its end."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self):
        self.peak = self.rss()
        self.marks: list[tuple[str, int, int]] = []  # (phase, peak during it, resident at its end)
        threading.Thread(target=self._sample, daemon=True).start()  # ends with the process

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.PAGE

    def _sample(self) -> None:
        while True:
            time.sleep(0.01)
            self.peak = max(self.peak, self.rss())

    def mark(self, name: str) -> None:
        now = self.rss()
        self.marks.append((name, max(self.peak, now), now))
        self.peak = now

    def wrap(self, owner, attr: str, name: str, seen: dict | None = None) -> None:
        """Mark `name` when owner.attr (called the first time) returns, and the phase before it as `name`'s start;
        that first call's arguments and result go into `seen` (to count the tensors it made)."""
        original, calls = getattr(owner, attr), [0]

        def wrapped(*a, **kw):
            calls[0] += 1
            if calls[0] > 1:
                return original(*a, **kw)
            self.mark(f"before {name}")
            out = original(*a, **kw)
            self.mark(name)
            if seen is not None:
                seen[name] = (a, out)
            return out

        setattr(owner, attr, wrapped)


def phase_peaks(marks: list[tuple[str, int, int]]) -> dict[str, int]:
    """Resident memory before any model, and the peak during each phase of the first update. (Differences between
    phases do not measure parts: weights are memory-mapped and become resident as generation first reads them, and
    the allocator keeps freed activations resident, so they are counted from the tensors instead.)"""
    at = {name: (peak, end) for name, peak, end in marks}
    return {
        "before models": at["before models"][1],
        "models loaded": at["models"][0],
        "generation": at["generate"][0],
        "rollout scoring": at["rollout"][0],
        "PPO epochs": at["update"][0],
    }


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages (a tied or shared weight counts once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def exact_parts(seen: dict) -> dict[str, int]:
    """The tensors behind three parts, counted exactly: weights of every model, the KV cache, AdamW's state."""
    ac = seen["models"][1]
    models = [m for m in (ac.policy, ac.critic, ac.reference, ac.value_head) if m is not None]
    engine = seen["engine"][1]
    optimizer = seen["update"][0][3]
    state = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "untyped_storage")]
    return {
        "weights (all copies)": tensor_bytes(p for m in models for p in m.parameters()),
        "KV cache": tensor_bytes(list(engine.cache.k) + list(engine.cache.v)),
        "optimizer state": tensor_bytes(state),
    }


def child(args) -> None:
    from camelid import allocator

    allocator.use_fast_allocator()  # as the `camelid ppo` command starts (CAMELID_ALLOCATOR=system: glibc's malloc)
    import torch

    from camelid.config import load_config
    from camelid.engine import engine as engine_module
    from camelid.train import ppo

    phases, seen = Phases(), {}
    phases.wrap(ppo, "ActorCritic", "models", seen)
    phases.wrap(ppo, "Engine", "engine", seen)
    phases.wrap(engine_module.Engine, "generate", "generate")
    phases.wrap(ppo, "rollout", "rollout")
    phases.wrap(ppo, "ppo_update", "update", seen)

    out = Path(args.work) / args.child
    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"model.dtype={args.dtype}",
            f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
            "method=lora",
            "lora.r=16",
            "lora.alpha=32",
            f"ppo.layout={args.child}",
            f"ppo.rollout_batch={args.rollout}",
            f"ppo.mini_batch={args.mini}",
            f"ppo.ppo_epochs={args.epochs}",
            f"ppo.max_new_tokens={args.max_new}",
            "ppo.top_k=50",
            "data.train=[alpaca_en_demo]",
            "data.max_length=512",
            f"data.max_samples={args.rollout * args.steps}",
            f"train.max_steps={args.steps}",
            "train.lr=1e-5",
            "train.tensorboard=false",
            "train.resume=false",
            f"train.output_dir={out}",
        ],
    )
    ppo.main(cfg, reward_fn=length_reward)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # episodes_per_s is cumulative from the first update: elapsed after update k = k * rollout / rate_k
    ends = [m["step"] * args.rollout / m["episodes_per_s"] for m in lines]
    per_update = [b - a for a, b in zip(ends, ends[1:])]
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "layout": args.child,
                "allocator": allocator.malloc_name(),
                "update_s": statistics.median(per_update),
                "updates_s": per_update,
                "peak_bytes": peak,
                "answer_tokens": statistics.mean(m["response_length"] for m in lines),
                "phases": phase_peaks(phases.marks),
                "exact": exact_parts(seen),
                "peak_sampled": max(p for _, p, _ in phases.marks),
            }
        )
    )


def main() -> None:
    load_before = os.getloadavg()[0]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        help="a randomly initialised model of this public shape (memory does not depend on the weights' values)",
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=5, help="PPO updates per run; the first is warm-up")
    ap.add_argument("--rollout", type=int, default=8)
    ap.add_argument("--mini", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="2 runs shared, separate, separate, shared")
    ap.add_argument(
        "--gradient-checkpointing", action="store_true", help="model.gradient_checkpointing=true in both layouts"
    )
    ap.add_argument("--live-memory", action="store_true", help=LIVE_MEMORY_HELP)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="'' writes nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    order = ["shared", "separate"] + (["separate", "shared"] if args.repeats > 1 else [])
    results: dict[str, list[dict]] = {"shared": [], "separate": []}
    label = args.model
    with tempfile.TemporaryDirectory() as work:
        if args.random_model:
            from camelid import hub
            from camelid.model import load_tokenizer

            label = f"random {args.random_model}"
            args.model = str(Path(work) / args.random_model)
            tokenizer = load_tokenizer(hub.resolve_model("smollm2-135m-instruct"))
            build_random_model(args.random_model, args.dtype, Path(args.model), 0, tokenizer)
        for layout in order:
            cmd = (
                [sys.executable, __file__, "--child", layout, "--work", work]
                + [
                    f"--{k.replace('_', '-')}={v}"
                    for k, v in vars(args).items()
                    if k in ("model", "dtype", "steps", "rollout", "mini", "epochs", "max_new")
                ]
                + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
            )
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
            if args.live_memory:  # glibc's malloc with its mmap threshold fixed
                env.update(LIVE_MEMORY_ENV, CAMELID_ALLOCATOR="system")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{layout} failed:\n{proc.stderr[-3000:]}")
            results[layout].append(json.loads(line[7:]))
            print(
                f"{layout}: {results[layout][-1]['update_s']:.2f} s/update, "
                f"peak {results[layout][-1]['peak_bytes'] / 2**30:.2f} GiB, phase peaks (GiB): "
                + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in results[layout][-1]["phases"].items()),
                flush=True,
            )

    def agg(layout, key):
        return statistics.mean(r[key] for r in results[layout])

    mem = "peak allocated CUDA memory" if args.device == "cuda" else "peak RSS"
    rows = [f"| layout | time per update (s) | {mem} (GiB) | answer tokens (mean) |", "|---|---|---|---|"]
    for layout in ("shared", "separate"):
        rows.append(
            f"| {layout} | {agg(layout, 'update_s'):.2f} | {agg(layout, 'peak_bytes') / 2**30:.2f} | "
            f"{agg(layout, 'answer_tokens'):.1f} |"
        )
    ratio_t = agg("shared", "update_s") / agg("separate", "update_s")
    ratio_m = agg("shared", "peak_bytes") / agg("separate", "peak_bytes")
    rows.append(f"| **shared / separate** | **{ratio_t:.2f}x** | **{ratio_m:.2f}x** | |")
    if args.device == "cpu":  # resident memory: on a GPU the parts live in device memory instead
        gib = 2**30
        rows += [
            "",
            "Where the peak goes (GiB, first update): the process before any model, then weights, KV cache and optimizer "
            "state counted from the tensors, and the rest of the sampled peak (activations and gradients, logits, what "
            "the allocator keeps):",
            "",
            "| layout | before models | weights (all copies) | KV cache | optimizer state | rest of the peak | sampled peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for layout in ("shared", "separate"):
            r = results[layout][0]
            base, exact = r["phases"]["before models"], r["exact"]
            rest = r["peak_sampled"] - base - sum(exact.values())
            cells = [base, *exact.values(), rest, r["peak_sampled"]]
            rows.append(f"| {layout} | " + " | ".join(f"{v / gib:.2f}" for v in cells) + " |")
        names = list(results["shared"][0]["phases"])[1:]
        rows += ["", "Peak RSS during each phase (GiB):", "", "| layout | " + " | ".join(names) + " |"]
        rows.append("|---|" + "---|" * len(names))
        for layout in ("shared", "separate"):
            r = results[layout][0]["phases"]
            rows.append(f"| {layout} | " + " | ".join(f"{r[n] / gib:.2f}" for n in names) + " |")
    table = "\n".join(rows)
    print(table)
    if not args.out:
        return
    command = "python benchmarks/ppo_layout.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))
    if os.environ.get("CAMELID_ALLOCATOR"):
        command = f"CAMELID_ALLOCATOR={os.environ['CAMELID_ALLOCATOR']} {command}"
    malloc = results["shared"][0]["allocator"]
    key = (
        f"{label if args.random_model else Path(args.model).name}, {args.dtype}, {args.device}"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
        + (", live memory" if args.live_memory else "")
        + (", glibc malloc" if args.device == "cpu" and malloc == "glibc" and not args.live_memory else "")
    )
    body = (
        f"{datetime.date.today()} · {machine(load_before)}\n\n`{command.strip()}`\n\n"
        f"LoRA r=16 all-linear; {args.rollout} prompts per update, mini-batch {args.mini}, {args.epochs} PPO "
        f"epoch(s), up to {args.max_new} answer tokens (top-k 50, temperature 1); median over updates 2..{args.steps}"
        f"; {malloc} malloc"
        f"{', mean of 2 runs each (ABBA order)' if args.repeats > 1 else ''}."
        + (
            " Live memory: glibc's mmap threshold fixed at 1 MB in both processes, so peak RSS is the live peak; "
            "the times of this mode are not comparable."
            if args.live_memory
            else ""
        )
        + f"\n\n{table}\n"
    )
    intro = (
        "`benchmarks/ppo_layout.py`: the same PPO run with actor, critic and reference on one base (LoRA adapters "
        "switched on and off) vs three separate model copies; each layout in its own process."
    )
    write_results(Path(args.out), SECTION, intro, key, body)


if __name__ == "__main__":
    main()
