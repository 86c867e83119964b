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

    python benchmarks/ppo_layout.py                          # SmolLM2-135M on CPU (~6 min on 2 cores)
    python benchmarks/ppo_layout.py --device cuda --dtype bfloat16 --model /path/to/qwen2.5-0.5b-instruct
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "## PPO: shared-base LoRA vs separate model copies"


def length_reward(prompts, answers):
    return [-abs(len(a) - 200) / 200 for a in answers]


def child(args) -> None:
    import torch

    from camelid.config import load_config
    from camelid.train import ppo

    out = Path(args.work) / args.child
    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"model.dtype={args.dtype}",
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
                "update_s": statistics.median(per_update),
                "updates_s": per_update,
                "peak_bytes": peak,
                "answer_tokens": statistics.mean(m["response_length"] for m in lines),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=5, help="PPO updates per run; the first is warm-up")
    ap.add_argument("--rollout", type=int, default=8)
    ap.add_argument("--mini", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="2 runs shared, separate, separate, shared")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="'' writes nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    order = ["shared", "separate"] + (["separate", "shared"] if args.repeats > 1 else [])
    results: dict[str, list[dict]] = {"shared": [], "separate": []}
    with tempfile.TemporaryDirectory() as work:
        for layout in order:
            cmd = [sys.executable, __file__, "--child", layout, "--work", work] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k in ("model", "dtype", "steps", "rollout", "mini", "epochs", "max_new")
            ]
            env = {**__import__("os").environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{layout} failed:\n{proc.stderr[-3000:]}")
            results[layout].append(json.loads(line[7:]))
            print(
                f"{layout}: {results[layout][-1]['update_s']:.2f} s/update, "
                f"peak {results[layout][-1]['peak_bytes'] / 2**30:.2f} GiB"
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
    table = "\n".join(rows)
    print(table)
    if not args.out:
        return
    command = "python benchmarks/ppo_layout.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--out"))
    key = f"{Path(args.model).name}, {args.dtype}, {args.device}"
    body = (
        f"{datetime.date.today()} · {machine()}\n\n`{command.strip()}`\n\n"
        f"LoRA r=16 all-linear; {args.rollout} prompts per update, mini-batch {args.mini}, {args.epochs} PPO "
        f"epoch(s), up to {args.max_new} answer tokens (top-k 50, temperature 1); median over updates 2..{args.steps}"
        f"{', mean of 2 runs each (ABBA order)' if args.repeats > 1 else ''}.\n\n{table}\n"
    )
    intro = (
        "`benchmarks/ppo_layout.py`: the same PPO run with actor, critic and reference on one base (LoRA adapters "
        "switched on and off) vs three separate model copies; each layout in its own process."
    )
    write_results(Path(args.out), SECTION, intro, key, body)


if __name__ == "__main__":
    main()
