"""`camelid clean` vs datatrove on the rules both have, on the same corpus, 1 and 2 workers each.

Corpus: People's Daily 1998 (zh) after a `camelid clean` (no duplicates of its own left), with 400 planted copies of
earlier documents (exact, and near ones with 1-3% of their characters changed), from `clean_scaling.plant`, split
into 8 files (datatrove's tasks read whole files; camelid reads the same 8 files and shards them itself).

- camelid: `camelid clean` with only dedup on: exact dedup and MinHash near dedup (5-character shingles); every
  other rule off.
- datatrove 0.10.1 (in its own virtual environment, made here on first use: its pins differ from camelid's): its
  four MinHash stages (word 5-grams, Chinese words by jieba through spaCy), `benchmarks/datatrove_pipeline.py`.
- Then the Gopher repetition rules alone on the same corpus: datatrove's GopherRepetitionFilter(language="zh")
  with its defaults, and camelid's repeated_lines + repeated_ngrams with theirs.
datatrove has no offline language filter (its fastText model is a download), so that rule is not compared.

Reported: wall seconds and MB/s (each tool's own pipeline from reading to the written output), documents removed,
and the planted copies each found.

    python benchmarks/clean_vs_datatrove.py          # ~5 min on 2 cores, plus the datatrove install the first time
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clean_scaling import plant
from common import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Corpus cleaning: camelid vs datatrove"
INTRO = """`benchmarks/clean_vs_datatrove.py`: the rules both tools have (exact and MinHash near dedup, Gopher-style
repetition), on the same planted-duplicate corpus, with 1 and 2 workers each. Each tool's numbers count its own whole
pipeline from reading the input to writing the kept documents. Reading guide: a planted copy's "Jaccard" is measured
on camelid's 5-character shingles; datatrove compares word 5-grams (jieba words), on which the same character edits
leave less overlap, so its lower near-copy recall is partly that definition. Exact copies and "other documents
removed" compare directly: the latter counts originals removed while their later copy was kept.
"""
NO_RULES = [
    "clean.min_units=0",
    "clean.max_symbol_share=1",
    "clean.max_digit_share=1",
    "clean.languages=[]",
    "clean.pii=[]",
]
DEDUP_ONLY = [*NO_RULES, "clean.max_repeated_line_share=1", "clean.max_repeated_ngram_share=1"]
GOPHER_ONLY = [*NO_RULES, "clean.exact_dedup=false", "clean.near_dedup=false"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    p.add_argument("--work", default=str(ROOT / "artifacts" / "clean-vs-datatrove"), help="corpora and outputs")
    return p.parse_args(argv)


def datatrove_python(work: Path) -> Path:
    venv = ROOT / "artifacts" / "venv-datatrove"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "datatrove[processing,io]==0.10.1", "spacy", "jieba"], check=True
        )
    return py


def corpus(work: Path) -> tuple[Path, dict[int, tuple[str, float]], int]:
    """8 files of People's Daily's kept documents with planted copies; records carry their global line as id."""
    from camelid.config import load_config
    from camelid.data import clean

    clean.main(load_config(None, ["clean.inputs=[peoples_daily_1998]", f"clean.out={work / 'pd-kept'}"]))
    truth = plant(work / "pd-kept" / "peoples_daily_1998.jsonl", work / "planted.jsonl")
    lines = (work / "planted.jsonl").read_text(encoding="utf-8").splitlines()
    folder = work / "input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per = -(-len(lines) // 8)
    for k in range(8):
        with open(folder / f"part{k}.jsonl", "w", encoding="utf-8") as f:
            for i in range(k * per, min(len(lines), (k + 1) * per)):
                f.write(json.dumps({"id": i + 1, "text": json.loads(lines[i])["text"]}, ensure_ascii=False) + "\n")
    return folder, truth, len(lines)


def camelid_run(folder: Path, out: Path, workers: int, rules: list[str]) -> tuple[float, set[int]]:
    from camelid.config import load_config
    from camelid.data import clean

    files = ",".join(str(p) for p in sorted(folder.glob("*.jsonl")))
    cfg = load_config(None, [f"clean.inputs=[{files}]", f"clean.out={out}", f"clean.workers={workers}", *rules])
    t0 = time.perf_counter()
    clean.main(cfg)
    seconds = time.perf_counter() - t0
    kept = {json.loads(x)["id"] for p in out.glob("part*.jsonl") for x in p.read_text(encoding="utf-8").splitlines()}
    return seconds, kept


def datatrove_run(
    py: Path, folder: Path, work: Path, tasks: int, gopher: bool = False
) -> tuple[float, set[int], list[float]]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = work / "result.json"
    script = ROOT / "benchmarks" / "datatrove_pipeline.py"
    cmd = [str(py), str(script), str(folder), str(work), "zh", str(tasks), str(result)] + ["--gopher"] * gopher
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.loads(result.read_text())
    return r["seconds"], {int(i) for i in r["kept"]}, r["stage_seconds"]


def found(kept: set[int], truth: dict[int, tuple[str, float]], kind: str, high: bool | None = None) -> str:
    mine = [n for n, (k, j) in truth.items() if k == kind and (high is None or (j >= 0.8) == high)]
    return f"{sum(n not in kept for n in mine)}/{len(mine)}"


def main(argv=None) -> None:
    args = parse_args(argv)
    from camelid.utils import setup_logging

    setup_logging()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    py = datatrove_python(work)
    folder, truth, n = corpus(work)
    mb = sum(p.stat().st_size for p in folder.glob("*.jsonl")) / 1e6
    rows = {}
    for workers in (1, 2):
        seconds, kept = camelid_run(folder, work / f"camelid-{workers}", workers, DEDUP_ONLY)
        rows[f"camelid, {workers} worker{'s' * (workers > 1)}"] = (seconds, kept, None)
        seconds, kept, stages = datatrove_run(py, folder, work / f"datatrove-{workers}", workers)
        rows[f"datatrove, {workers} task{'s' * (workers > 1)}"] = (seconds, kept, stages)
    _, camelid_gopher = camelid_run(folder, work / "camelid-gopher", 2, GOPHER_ONLY)
    _, datatrove_gopher, _ = datatrove_run(py, folder, work / "datatrove-gopher", 2, gopher=True)
    base = rows["datatrove, 1 task"][0]
    body = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{shlex.join(['python', 'benchmarks/clean_vs_datatrove.py'] + (argv or sys.argv[1:]))}`",
        "",
        f"People's Daily kept documents with 400 planted copies: {n:,} documents, {mb:.2f} MB in 8 files.",
        "",
        "| run | seconds | MB/s | vs datatrove, 1 task | removed | exact copies found | near copies, Jaccard ≥ 0.8 | near copies, < 0.8 | other documents removed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (seconds, kept, _) in rows.items():
        others = sum(1 for i in range(1, n + 1) if i not in kept and i not in truth)
        body.append(
            f"| {name} | {seconds:.1f} | {mb / seconds:.2f} | {base / seconds:.2f}× | {n - len(kept):,} | "
            f"{found(kept, truth, 'exact')} | {found(kept, truth, 'near', True)} | "
            f"{found(kept, truth, 'near', False)} | {others} |"
        )
    body += [
        "",
        f'Gopher repetition rules alone, same corpus: datatrove\'s GopherRepetitionFilter(language="zh") removes '
        f"{n - len(datatrove_gopher):,} of {n:,} documents; camelid's repeated_lines + repeated_ngrams remove "
        f"{n - len(camelid_gopher):,}.",
        "",
        "datatrove's seconds per pipeline (read + write, signatures, buckets, clusters, filter + write): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{s:.1f}" for s in st) for name, (_, _, st) in rows.items() if st is not None
        )
        + ".",
    ]
    text = "\n".join(body)
    print(text)
    if args.out:
        write_results(Path(args.out), SECTION, INTRO, "cpu, People's Daily 1998 with planted duplicates", text)


if __name__ == "__main__":
    main()
