"""DPO step time and memory with the reference log-probs precomputed (`dpo.precompute_ref=true`) vs computed live
at every step, for LoRA (the reference is the policy with its adapter switched off) and full fine-tuning (the
reference is a frozen copy of the base).

Per method, one subprocess loads the model once and trains with camelid's own loop (`fit`, and the `dpo_batch_loss`
that `camelid dpo` uses) on a fixed list of batches. Every batch is trained on twice, once with a live reference and
once with its precomputed log-probs, in ABBA order (live-pre, pre-live, ...), so the two modes see the same model, the
same batches and the same machine noise. A step is timed from the collate of its batch to the loop's `on_step`
callback (forward, reference, backward, clipping, optimizer, logging); one warm-up step per mode comes first. The
precompute pass over the same batches (the one-off cost precomputing pays before training) is timed too.

Memory is the peak RSS of each step (Linux VmHWM, reset before each step: resident weights, optimizer state and the
step's transient tensors). The live steps need the full method's frozen copy, so it stays loaded through the ABBA
steps; afterwards the copy is dropped as `camelid dpo` drops it when precomputing, and the first measured batches are
trained on once more with precomputed log-probs: the peak RSS of a precompute_ref=true run.

    python benchmarks/dpo_reference.py                                   # CPU defaults (~7 min on 2 idle cores)
    python benchmarks/dpo_reference.py --steps 2 --methods lora --out ''  # a quicker smoke run, writes nothing

Results go to stdout and into `--out` (default benchmarks/RESULTS.md), replacing only this benchmark's subsection.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path

from common import machine, run_worker, write_results

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere without installing camelid
    sys.path.insert(0, str(ROOT))

SECTION = "## DPO: precomputed vs live reference"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or model folder")
    p.add_argument("--data", default="dpo_en_demo,dpo_zh_demo", help="preference sources, comma-separated")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--steps", type=int, default=5, help="measured steps per mode (each on its own batch)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per mode first")
    p.add_argument(
        "--after-free",
        type=int,
        default=2,
        help="full method: precomputed steps after dropping the frozen copy (on the first measured batches)",
    )
    p.add_argument("--batch-pairs", type=int, default=2, help="pairs per step (2× rows: chosen + rejected)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument(
        "--per-source", type=int, default=24, help="records read from each source (batches are drawn from them)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = do not write")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the worker (one subprocess per method)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if field == "VmHWM" else float("nan")


def _hwm_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


def make_plan(warmup: int, steps: int, after_free: int) -> list[tuple[int, str, bool]]:
    """(batch index, mode, measured) per step: warm-up live+pre, then ABBA over the measured batches, then
    (full method) precomputed steps once the frozen copy is gone."""
    plan = []
    for i in range(warmup):
        plan += [(i, "live", False), (i, "pre", False)]
    for j in range(steps):
        order = ("live", "pre") if j % 2 == 0 else ("pre", "live")
        plan += [(warmup + j, order[0], True), (warmup + j, order[1], True)]
    plan += [(warmup + j, "freed", True) for j in range(min(after_free, steps))]
    return plan


def worker(spec: dict) -> None:
    import random

    import torch

    torch.set_num_threads(spec["threads"])
    from camelid.config import load_config
    from camelid.data.loader import collate_pairs, prepare_preference
    from camelid.model import load_model, load_tokenizer
    from camelid.train import dpo
    from camelid.train.loop import fit, make_accelerator

    full = spec["method"] not in dpo.ADAPTERS
    plan = make_plan(spec["warmup"], spec["steps"], spec["after_free"] if full else 0)
    n_batches = spec["warmup"] + spec["steps"]
    over = {
        "model.name": spec["model"],
        "method": spec["method"],
        "data.train": json.dumps(spec["data"]),
        "data.max_length": spec["max_length"],
        "data.max_samples": spec["per_source"],
        "train.output_dir": spec["run_dir"],
        "train.batch_size": spec["batch_pairs"],
        "train.max_steps": len(plan),
        "train.lr": 1e-5,
        "train.scheduler": "constant",
        "train.warmup_ratio": 0.0,
        "train.tensorboard": "false",
        "train.seed": spec["seed"],
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    acc = make_accelerator(cfg.train)
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    data = prepare_preference(tok, cfg.data, cfg.train.seed)
    pool = list(data.train)
    random.Random(spec["seed"]).shuffle(pool)  # mix the sources
    if len(pool) < n_batches * spec["batch_pairs"]:
        sys.exit(f"only {len(pool)} usable pairs; raise --per-source")
    batches = [pool[i * spec["batch_pairs"] : (i + 1) * spec["batch_pairs"]] for i in range(n_batches)]

    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg)
    model.to(acc.device)
    ref = dpo.Reference(cfg, model, acc)
    copy_mb = sum(p.numel() * p.element_size() for p in ref.copy.parameters()) / 2**20 if full else 0.0

    def collate(pairs):
        return collate_pairs(pairs, tok.pad_token_id)

    # the one-off pass precompute_ref pays before training, over exactly the batches trained on below
    t0 = time.perf_counter()
    for b in batches:
        dpo.precompute(ref, b, collate, spec["batch_pairs"], acc.device)
    precompute_s = time.perf_counter() - t0
    check = {k: v for k, v in collate(batches[0]).items() if k != "num_tokens"}
    stored = check.pop("ref_logps")
    ref_diff = float((stored - ref.logps(check, model).float().cpu()).abs().max())  # stored == live reference

    step_log: list[dict] = []
    freed = {}

    def plan_collate(_ignored):  # the loop's own batch order is replaced by the plan
        i, mode, measured = plan[len(step_log)]
        if mode == "freed" and ref.copy is not None:  # what dpo.main does after precomputing
            alive = weakref.ref(ref.copy)
            ref.copy = None
            freed["by_refcount"] = alive() is None
            gc.collect()
            freed["after_gc"] = alive() is None
        _hwm_reset()
        step_log.append(
            {"batch": i, "mode": mode, "measured": measured, "t0": time.perf_counter(), "c0": time.process_time()}
        )
        batch = collate(batches[i])
        if mode == "live":
            batch.pop("ref_logps")
        return batch

    def on_step(step: int, metrics: dict) -> None:
        rec = step_log[step - 1]
        rec["s"] = time.perf_counter() - rec.pop("t0")
        rec["cpu_s"] = time.process_time() - rec.pop("c0")  # all threads' CPU time: steadier when the machine is shared
        rec["peak_rss_mb"] = _status_mb("VmHWM")
        rec["loss"] = metrics["loss"]

    units = [p for b in batches for p in b]
    fit(
        model,
        dpo.dpo_batch_loss(ref, cfg.dpo),
        units,
        [],
        plan_collate,
        cfg.train,
        spec["run_dir"],
        acc,
        on_step=on_step,
    )
    result = {
        "method": spec["method"],
        "steps": step_log,
        "precompute_s": precompute_s,
        "precompute_batches": n_batches,
        "ref_logp_max_diff": ref_diff,
        "copy_mb": copy_mb,
        "freed": freed,
        "batch_tokens": [int(collate(b)["input_ids"].numel()) for b in batches],
    }
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the parent


def run_method(spec: dict, work: Path) -> dict:
    name = spec["method"]
    spec = dict(spec, run_dir=str(work / f"run-{name}"), result=str(work / f"result-{name}.json"))
    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--spec", str(spec_path)]
    return run_worker(cmd, spec, name, cpu_only=True)


def summarize(r: dict) -> dict:
    steps = [s for s in r["steps"] if s["measured"]]
    by = {m: [s for s in steps if s["mode"] == m] for m in ("live", "pre", "freed")}
    paired: dict[int, dict] = {}
    for s in steps:
        if s["mode"] != "freed":
            paired.setdefault(s["batch"], {})[s["mode"]] = s
    ratios = [p["live"]["s"] / p["pre"]["s"] for p in paired.values()]
    cpu_ratios = [p["live"]["cpu_s"] / p["pre"]["cpu_s"] for p in paired.values()]
    out = {
        "median": {m: statistics.median(s["s"] for s in v) for m, v in by.items() if v},
        "mean": {m: statistics.fmean(s["s"] for s in v) for m, v in by.items() if v},
        "sd": {m: statistics.stdev([s["s"] for s in v]) if len(v) > 1 else 0.0 for m, v in by.items() if v},
        "peak": {m: max(s["peak_rss_mb"] for s in v) for m, v in by.items() if v},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_ratio_median": statistics.median(cpu_ratios),
    }
    if by["freed"]:  # the same batches, with and without the copy resident
        pre = {s["batch"]: s["peak_rss_mb"] for s in by["pre"]}
        out["freed_delta"] = [s["peak_rss_mb"] - pre[s["batch"]] for s in by["freed"]]
    return out


NAMES = {
    "lora": "LoRA (adapter off)",
    "qlora": "QLoRA (adapter off)",
    "full": "full (frozen copy)",
    "freeze": "freeze (frozen copy)",
}


def report(results: list[dict]) -> str:
    lines = [
        "| method (live reference) | live s/step: median (mean ± sd) | precomputed s/step: median (mean ± sd) "
        "| live / precomputed, same batch: median [min–max] | same, in CPU time | peak RSS MB: live / precomputed "
        "| peak RSS MB, precompute_ref=true run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = summarize(r)
        real = s["peak"].get("freed", s["peak"]["pre"])  # LoRA: nothing to free, the precomputed steps are the run
        lines.append(
            f"| {NAMES.get(r['method'], r['method'])} | {s['median']['live']:.2f} ({s['mean']['live']:.2f} ± {s['sd']['live']:.2f}) "
            f"| {s['median']['pre']:.2f} ({s['mean']['pre']:.2f} ± {s['sd']['pre']:.2f}) "
            f"| **{s['ratio_median']:.2f}×** [{s['ratio_min']:.2f}–{s['ratio_max']:.2f}] | {s['cpu_ratio_median']:.2f}× "
            f"| {s['peak']['live']:.0f} / {s['peak']['pre']:.0f} | **{real:.0f}** |"
        )
    lines.append("")
    for r in results:
        s = summarize(r)
        per_batch = r["precompute_s"] / r["precompute_batches"]
        saved = s["median"]["live"] - s["median"]["pre"]
        text = (
            f"- {NAMES.get(r['method'], r['method'])}: the precompute pass took {r['precompute_s']:.1f} s for "
            f"{r['precompute_batches']} batches ({per_batch:.2f} s a batch) against {saved:.2f} s saved per step; "
            f"stored and live reference log-probs differ by at most {r['ref_logp_max_diff']:.1e} nats"
        )
        if r["copy_mb"]:
            deltas = ", ".join(f"{d:+.0f}" for d in s.get("freed_delta", []))
            f = r.get("freed", {})
            text += (
                f"; the frozen copy holds {r['copy_mb']:.0f} MB of weights, and dropping it changed the peak RSS "
                f"of the same batches by {deltas} MB (copy freed by reference counting alone: "
                f"{f.get('by_refcount')}, after gc.collect: {f.get('after_gc')})"
            )
        lines.append(text + f"; batch sizes in tokens (padded rows × width): {', '.join(map(str, r['batch_tokens']))}.")
    busy = [f"{r['method']} {r['others_cores']:.2f}" for r in results if "others_cores" in r]
    if busy:
        shared = any(r.get("others_cores", 0) > 0.25 for r in results)
        lines.append(
            f"\nOther processes' CPU use while each method ran (cores, of {os.cpu_count()}): {', '.join(busy)}"
            + (
                " — **the machine was shared**: absolute times are inflated and noisy; the interleaved ratios less so"
                if shared
                else " (machine otherwise idle)"
            )
        )
    return "\n".join(lines)


INTRO = """\
`benchmarks/dpo_reference.py`: `camelid dpo`'s loss (`dpo_batch_loss`) in camelid's loop (`fit`), with the
reference log-probs either computed at every step (the policy with its LoRA adapter switched off, or a frozen copy of
the base for full fine-tuning) or precomputed once before training (`dpo.precompute_ref=true`). Per method one
process, one model, the same batches: every batch is trained on once per mode, in ABBA order after one warm-up step
per mode, and timed from collate to the loop's `on_step` (forward, reference, backward, optimizer), in wall time and
in the process's CPU time (all threads; steadier than wall time when another process shares the cores). The precompute
pass over the same batches is timed separately: it costs about what the live reference forwards cost in one epoch,
so precomputing pays back in time from the second epoch on (and makes every step faster), and in memory at once for
full fine-tuning, whose frozen copy is dropped before training. Peak RSS is per step (Linux VmHWM, reset before each
step); the full method's copy stays loaded through the interleaved steps (the live ones need it), and the last
column retrains the first measured batches after dropping it, as a precompute_ref=true run would.
"""


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.spec).read_text()))
        return
    from camelid import hub

    hub.resolve_model(args.model)  # fail early when the model is not pulled
    base = {
        "model": args.model,
        "data": [d.strip() for d in args.data.split(",") if d.strip()],
        "max_length": args.max_length,
        "per_source": args.per_source,
        "batch_pairs": args.batch_pairs,
        "steps": args.steps,
        "warmup": args.warmup,
        "after_free": args.after_free,
        "threads": args.threads,
        "seed": args.seed,
    }
    work = Path(tempfile.mkdtemp(prefix="camelid-bench-dpo-"))
    t0 = time.perf_counter()
    try:
        results = [run_method(dict(base, method=m.strip()), work) for m in args.methods.split(",") if m.strip()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0

    text = report(results)
    print("\n" + text + f"\n\n(total {total:.0f} s)\n")
    if args.out:
        cmd = "python " + " ".join(
            shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])
        )
        key = f"cpu, float32, {args.model}"
        body = (
            f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {machine()}; torch threads: {args.threads}\n"
            f"- command: `{cmd}`\n"
            f"- settings: {args.batch_pairs} pairs ({2 * args.batch_pairs} rows) a step, max_length "
            f"{args.max_length}, {args.steps} measured steps per mode after {args.warmup} warm-up, data "
            f"{args.data} ({args.per_source} records of each, batches drawn at random), lr 1e-5 constant, "
            f"LoRA r=8/alpha=16/all-linear (camelid's defaults), float32 on CPU; whole run {total:.0f} s\n\n"
            f"{text}\n"
        )
        write_results(Path(args.out), SECTION, INTRO, key, body)
        print(f"wrote {args.out} (section '{SECTION[3:]}', subsection '{key}')")


if __name__ == "__main__":
    main()
