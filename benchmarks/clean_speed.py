"""`camelid clean` per core, this checkout against an earlier commit, in the same run: one worker, every rule on
(the corpus and rules of clean_scaling.py), the two sides taking turns so that the machine's drift hits both.
Reports the best of each side's rounds, the seconds per rule, and whether the outputs are byte-identical.

The baseline is the commit's tree (`git archive`) unpacked into the work folder; each run is a fresh Python process
importing camelid from its side's tree. The clock is `camelid clean`'s own (reading to writing, setup excluded).

    python benchmarks/clean_speed.py --baseline d8822f7          # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from clean_scaling import fingerprint
from clean_throughput import corpora, reference
from common import machine, publish

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Corpus cleaning per core: this code against an earlier commit (`benchmarks/clean_speed.py`)"
INTRO = """`benchmarks/clean_speed.py`: `camelid clean` with one worker and every rule on (People's Daily 1998 + Shakespeare,
MMLU decontamination, the perplexity filter), this checkout and a baseline commit taking turns in fresh processes;
the best round of each. MB/s counts reading to writing, setup excluded.
"""

# Runs in the side's own tree: clean once with one worker, print the summary as JSON.
CHILD = """
import json, sys
from camelid.config import load_config
from camelid.data import clean
from camelid.eval.contamination import benchmark_items
inputs, out, ref = sys.argv[1:4]
cfg = load_config(None, [f"clean.inputs=[{inputs}]", f"clean.out={out}", f"clean.ppl_reference=[{ref}]",
                         "clean.workers=1"])
s = clean.main(cfg, benchmark_items(["mmlu"]))
keep = ("seconds", "mb_in", "mb_per_s", "rule_seconds", "documents")
print("SUMMARY " + json.dumps({**{k: s[k] for k in keep}, "camelid": clean.__file__}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="the commit to compare with (any git revision)")
    p.add_argument("--rounds", type=int, default=2, help="runs per side, taking turns")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    p.add_argument("--work", default="", help="folder for the baseline tree and outputs (default: temporary)")
    return p.parse_args(argv)


def unpack(revision: str, into: Path) -> tuple[Path, str]:
    """The baseline commit's files under `into`; returns the folder and the commit's short hash."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = into / f"baseline-{commit}"
    if not (tree / "camelid").is_dir():
        archive = into / f"{commit}.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        archive.unlink()
    return tree, commit


def run_side(tree: Path, inputs: list[str], out: Path, ref: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(inputs), str(out), str(ref)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")]
    if proc.returncode or not lines:
        raise SystemExit(f"clean in {tree} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1][len("SUMMARY ") :])
    if not Path(summary["camelid"]).resolve().is_relative_to(tree.resolve()):  # an installed camelid won instead
        raise SystemExit(f"the run for {tree} imported {summary['camelid']}")
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    pd, sk, _ = corpora()
    inputs = ["peoples_daily_1998", "shakespeare", "shakespeare_folio"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        ref = reference(work, [pd, sk / "shakespeare.jsonl", sk / "shakespeare_folio.jsonl"])
        base_tree, commit = unpack(args.baseline, work)
        sides = {f"baseline {commit}": base_tree, "this checkout": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        hashes = {}
        for _ in range(args.rounds):
            for name, tree in sides.items():
                out = work / f"out-{name.replace(' ', '-')}"
                runs[name].append(run_side(tree, inputs, out, ref))
                hashes[name] = fingerprint(out)

    best = {name: min(r, key=lambda s: s["seconds"]) for name, r in runs.items()}
    base, mine = best[f"baseline {commit}"], best["this checkout"]
    same = len(set(hashes.values())) == 1
    body = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{shlex.join(['python', 'benchmarks/clean_speed.py'] + (argv or sys.argv[1:]))}`",
        "",
        f"People's Daily 1998 + Shakespeare (modern and First Folio), {mine['documents']:,} documents, "
        f"{mine['mb_in']:.2f} MB, one worker, every rule on; best of {args.rounds} rounds per side "
        f"(all rounds, seconds: "
        + "; ".join(f"{n} " + ", ".join(f"{s['seconds']:.1f}" for s in r) for n, r in runs.items())
        + "):",
        "",
        "| side | seconds | MB/s per core | vs baseline | output |",
        "|---|---|---|---|---|",
    ]
    for name, s in best.items():
        body.append(
            f"| {name} | {s['seconds']:.1f} | {s['mb_per_s']:.2f} | {base['seconds'] / s['seconds']:.2f}× | "
            f"{'identical' if same else 'DIFFERENT'} |"
        )
    body += ["", "| step | " + " | ".join(f"{n}, s" for n in best) + " | speed-up |", "|---|---|---|---|"]
    for rule in sorted(base["rule_seconds"], key=lambda r: -base["rule_seconds"][r]):
        a, b = base["rule_seconds"][rule], mine["rule_seconds"].get(rule, 0.0)
        body.append(f"| {rule} | {a:.2f} | {b:.2f} | {a / b if b else float('inf'):.1f}× |")
    publish(args.out, SECTION, INTRO, "cpu, People's Daily 1998 + Shakespeare", body)


if __name__ == "__main__":
    main()
