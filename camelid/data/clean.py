"""`camelid clean`: a cleaning pipeline for text corpora of any size (.txt, .jsonl, .json, .csv, .parquet), on
every core or on a Ray cluster.

    camelid clean corpus.jsonl notes.txt --out runs/clean [clean.languages=[zh] clean.pii=[email,phone] ...]
    camelid clean peoples_daily_1998 shakespeare --out runs/pd clean.ppl_reference=[ref.txt] clean.decontaminate=[mmlu]
    camelid clean big/*.jsonl --out runs/big clean.workers=16               # processes on this machine
    camelid clean big/*.jsonl --out /shared/big clean.executor=ray clean.ray_address=auto   # a running Ray cluster
    camelid clean clean.yaml                       # a config file whose `clean:` section lists the inputs

A document is a line of a .txt file, or the `clean.text_field` of a record. Each is normalized (NFKC, so full-width
ASCII becomes half-width; optionally Traditional → Simplified; invisible characters and extra blank lines go), then
meets the rules in order; the first that fires removes it:

    empty             nothing left after normalization
    exact_dup         the same normalized text seen before (8-byte BLAKE2b digests)
    length            fewer than clean.min_units units (a CJK character or a word) or more than clean.max_units
    symbols, digits   too large a share of symbols / digits among the non-space characters
    repeated_lines    too many lines repeat an earlier line (Gopher); repeated_ngrams: too many repeated n-grams
    language          too small a share of units in the scripts of clean.languages (zh: Han, en: Latin)
    benchmark         shares an n-gram (13 words, 25 CJK characters) with a question of clean.decontaminate
    perplexity        a character n-gram LM trained on clean.ppl_reference finds it too surprising (gibberish)
    near_dup          MinHash-LSH: Jaccard similarity of character shingles >= clean.near_dedup_threshold
                      with a document kept earlier (it is last because it is the costliest)

How it runs, in three stages, so the result is the same for any number of workers and any shard size:

1. shards (`shards.py`): each input file, large .txt/.jsonl files cut into clean.shard_mb byte ranges at line
   ends. Workers (`workers.py`: processes, or Ray tasks) clean shards independently (`clean_shard.py`): normalize,
   the rules that need no other document, PII masking, digests and MinHash signatures, written to
   `<out>.shards/shard-NNNNN/`. A shard's folder appears complete or not at all, so a killed run started again
   with the same inputs and settings redoes only the shards it had not finished.
2. dedup (`dedup.py`), over all shards in input order: exact duplicates by one sort of the digests; near duplicates
   by LSH band buckets (one sort per band, run as tasks too), then a pass in document order that keeps a document
   unless it nearly repeats one kept before it.
3. write: the kept documents of each input, in order, to the output folder, which is built beside its final name
   and renamed into place at the end (a crash leaves no half-written corpus under that name):

    <input name>      the kept documents, in the input's format: .txt lines, or .jsonl records with their other
                      fields kept (.json/.csv/.parquet inputs are written as .jsonl)
    removed.jsonl     one line per removed document, in input order: source, line, rule, detail, the text's
                      first 200 characters
    summary.md/.json  documents and MB removed per rule, PII masked per kind, MB/s; the table is printed too

Memory: a worker holds one chunk (<= 1000 documents or 8 MB) plus the shard's signatures (~0.6 KB per document);
the merge ~20 bytes per document for exact dedup and one band's keys at a time (dedup.py); the reference LM and
the benchmark n-grams are fixed at the start and shared by every worker. On Ray, clean.out must be on storage every
node sees (the shards are written beside it), and camelid installed on every node.

The benchmark questions come from camelid.eval (`camelid clean` loads them and passes them to `main`), since
camelid.data may not import the layer above it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from camelid.config import CleanConfig, Config, validate
from camelid.data.clean_shard import (
    BAD_RECORD,
    PASSES,
    PerplexityFilter,
    ShardContext,
    clean_shard,
    normalizer,
)
from camelid.data.dedup import BenchmarkIndex, MinHasher, first_of_equal, near_duplicates, shared_buckets
from camelid.data.shards import Shard, output_name, plan, resolve_input
from camelid.data.workers import cores, run_tasks
from camelid.utils import atomic_dir, log, write_json

FORMAT = 1  # of the shard folders: a resumed run only reuses folders written by this format


def main(cfg: Config, benchmarks: dict[str, str] | None = None) -> dict:
    """Clean cfg.clean.inputs into cfg.clean.out. `benchmarks` maps item ids to the benchmark texts to decontaminate
    against (the CLI fills it from clean.decontaminate). Returns the summary."""
    from tqdm import tqdm

    c = validate(cfg, "clean").clean
    t_start = time.time()
    inputs = [(spec, *resolve_input(spec, c.text_field)) for spec in c.inputs]
    taken: set[str] = set()
    names = {spec: output_name(path, taken) for spec, path, _ in inputs}
    index = BenchmarkIndex(benchmarks, c.decontam_ngram, c.decontam_ngram_zh) if benchmarks else None
    if index is not None and index.too_short:
        log.warning(
            f"{len(index.too_short)} of {len(index.names)} benchmark items are shorter than their n-gram "
            f"(clean.decontam_ngram/_zh) and cannot be checked, e.g. {index.too_short[0]}"
        )
    ppl = PerplexityFilter(c, normalizer(c)) if c.ppl_reference else None
    ctx = ShardContext(c, index, ppl)
    workers = c.workers or cores()
    total = sum(path.stat().st_size for _, path, _ in inputs)
    # 64 shards or more keep 2-16 workers evenly busy to the end (a shard's cost depends on its text, not only its
    # size: 1 MB shards gave 1.55x on 2 workers, 0.25 MB ones 1.9x); 64 MB bounds the files one shard writes
    shard_bytes = int(c.shard_mb * 1e6) if c.shard_mb else int(min(max(total / 64, 0.25e6), 64e6))
    shards = plan(inputs, shard_bytes)
    work = Path(c.out).with_name(Path(c.out).name + ".shards")
    finished = _resume(work, _fingerprint(c, inputs, shards, benchmarks))
    setup_s = time.time() - t_start

    t0 = time.time()
    todo = [s for s in shards if s.index not in finished]
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"clean ×{workers}", mininterval=1.0) as bar:
        bar.update(sum(s.size for s in shards if s.index in finished))
        run_tasks(
            clean_shard,
            ctx,
            [(s, str(work)) for s in todo],
            workers=workers,
            executor=c.executor,
            ray_address=c.ray_address,
            bar=bar,
            sizes=[s.size for s in todo],
        )
    stats = [json.loads((_folder(work, s) / "stats.json").read_text()) for s in shards]
    stages = {"shards": time.time() - t0}
    offsets = _line_offsets(shards, stats)
    dups = _dedup(c, shards, work, offsets, workers)
    stages["dedup"] = time.time() - t0 - stages["shards"]
    with atomic_dir(c.out) as tmp:
        tally = _write(tmp, shards, work, offsets, dups, names)
        stages["write"] = time.time() - t0 - stages["shards"] - stages["dedup"]
        seconds = Counter()
        for st in stats:
            seconds.update(st["seconds"])
        seconds["dedup merge"] = stages["dedup"]
        tally.update(workers=workers, shards=len(shards), resumed=len(finished), stages=stages)
        summary = _summary(c, tally, time.time() - t0, setup_s, ppl, index, seconds)
        write_json(tmp / "summary.json", summary)
        (tmp / "summary.md").write_text(summary_table(summary) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(summary_table(summary))
    print(f"kept corpus, removed.jsonl and summary in {c.out}")
    return summary


# ------------------------------------------------------------------------------------------ resuming


def _fingerprint(c: CleanConfig, inputs: list, shards: list[Shard], benchmarks: dict | None) -> dict:
    """What the shard folders depend on: the inputs as they are on disk, the settings the rules read, the shard
    plan, the benchmark items. The executor, the worker count and the output folder are not in it."""
    settings = {
        k: v for k, v in dataclasses.asdict(c).items() if k not in ("out", "workers", "executor", "ray_address")
    }
    files = [(spec, str(p), p.stat().st_size, p.stat().st_mtime_ns) for spec, p, _ in inputs]
    for spec in c.ppl_reference:
        p = resolve_input(spec, c.text_field)[0]
        files.append((spec, str(p), p.stat().st_size, p.stat().st_mtime_ns))
    items = hashlib.blake2b(json.dumps(benchmarks or {}, sort_keys=True).encode(), digest_size=16).hexdigest()
    plan_ = [dataclasses.astuple(s) for s in shards]
    return json.loads(
        json.dumps({"format": FORMAT, "settings": settings, "files": files, "benchmarks": items, "shards": plan_})
    )


def _resume(work: Path, fingerprint: dict) -> set[int]:
    """The shards a killed run with the same fingerprint finished; a different run's folder is cleared."""
    mark = work / "plan.json"
    if mark.exists() and json.loads(mark.read_text()) == fingerprint:
        done = {int(p.name.split("-")[1]) for p in work.glob("shard-?????") if (p / "stats.json").exists()}
        if done:
            log.info(f"clean: resuming, {len(done)} of {len(fingerprint['shards'])} shards already done in {work}")
        return done
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_json(mark, fingerprint)
    return set()


def _folder(work: Path, shard: Shard) -> Path:
    return work / f"shard-{shard.index:05d}"


def _line_offsets(shards: list[Shard], stats: list[dict]) -> list[int]:
    """Per shard: the lines of its file in the shards before it (shard-local line + offset = the file's line)."""
    offsets, before = [], {}
    for s, st in zip(shards, stats):
        offsets.append(before.get(s.path, 0))
        before[s.path] = offsets[-1] + st["lines"]
    return offsets


# -------------------------------------------------------------------------------------------- dedup


def _dedup(c: CleanConfig, shards: list[Shard], work: Path, offsets: list[int], workers: int) -> list[dict]:
    """Per shard, {row: (rule, detail)} for the documents exact or near dedup removes. Documents are numbered
    globally, in input order (g); their shard and row within it are shard_of[g], row_of[g]."""
    metas = [np.load(_folder(work, s) / "meta.npy", mmap_mode="r") for s in shards]
    shard_of = np.concatenate([np.full(len(m), i, dtype=np.int32) for i, m in enumerate(metas)])
    row_of = np.concatenate([np.arange(len(m)) for m in metas])
    state = np.concatenate([np.asarray(m["state"]) for m in metas])
    found: list[dict] = [{} for _ in shards]

    def where(g: int) -> str:
        s, row = shard_of[g], row_of[g]
        return f"{shards[s].source}:{int(metas[s]['line'][row]) + offsets[s]}"

    duplicate = np.zeros(len(state), dtype=bool)
    if c.exact_dedup:
        judged = np.flatnonzero((state != BAD_RECORD) & (state != 1))  # state 1 is `empty`, the one rule before
        first = judged[first_of_equal(np.concatenate([np.asarray(m["digest"]) for m in metas])[judged])]
        for g, f in zip(judged[first != judged], first[first != judged]):
            found[shard_of[g]][int(row_of[g])] = ("exact_dup", f"same as {where(f)}")
            duplicate[g] = True
    if not c.near_dedup:
        return found
    # Near dedup among the documents every other rule let through. Signatures are stored for a shard's passing
    # documents in order, so a document's signature row is its rank among them.
    sig_row = np.concatenate([np.cumsum(np.asarray(m["state"]) == PASSES) - 1 for m in metas])
    candidates = np.flatnonzero((state == PASSES) & ~duplicate)
    cand_shard, cand_row = shard_of[candidates], sig_row[candidates]
    picks = [cand_row[cand_shard == i] for i in range(len(shards))]
    bands = MinHasher(c.near_dedup_threshold, c.minhash_perm, c.shingle).bands
    context = (str(work), [s.index for s in shards], picks)
    # a process pool costs more than sorting under a few million keys; Ray runs the bands as tasks at any size
    pool = workers if len(candidates) > 2_000_000 else 1
    buckets = run_tasks(
        _band_buckets, context, range(bands), workers=pool, executor=c.executor, ray_address=c.ray_address
    )
    sigs = [np.load(_folder(work, s) / "signatures.npy", mmap_mode="r") for s in shards]
    signature = lambda p: sigs[cand_shard[p]][cand_row[p]]  # noqa: E731
    for p, (best, score) in near_duplicates(buckets, signature, c.near_dedup_threshold).items():
        g = candidates[p]
        found[shard_of[g]][int(row_of[g])] = ("near_dup", f"~ {where(candidates[best])} (Jaccard ~{score:.2f})")
    return found


def _band_buckets(context: tuple, band: int, report) -> tuple[np.ndarray, np.ndarray]:
    """One LSH band over every shard's near-dedup candidates: its buckets shared by two or more (a task)."""
    work, indexes, picks = context
    keys = [
        np.load(Path(work) / f"shard-{i:05d}" / "bands.npy", mmap_mode="r")[:, band][rows]
        for i, rows in zip(indexes, picks)
    ]
    return shared_buckets(np.concatenate(keys))


# -------------------------------------------------------------------------------------------- write


def _write(out: Path, shards: list[Shard], work: Path, offsets: list[int], dups: list[dict], names: dict) -> dict:
    """The kept documents per input and removed.jsonl, shard by shard in order; returns the counts."""
    tally = {"documents": 0, "kept": 0, "bytes_in": 0, "bytes_kept": 0}
    removed, removed_bytes, pii = Counter(), Counter(), Counter()
    kept_file, kept_path = None, None
    with open(out / "removed.jsonl", "w", encoding="utf-8") as rm_file:
        for s, offset, dup in zip(shards, offsets, dups):
            folder = _folder(work, s)
            if kept_path != out / names[s.source]:
                if kept_file is not None:
                    kept_file.close()
                kept_path = out / names[s.source]
                kept_file = open(kept_path, "w", encoding="utf-8")
            tally["bytes_in"] += s.size
            meta = np.load(folder / "meta.npy")
            with (
                open(folder / "removed.jsonl", encoding="utf-8") as gone,
                open(folder / "kept.txt", encoding="utf-8") as kept,
                open(folder / "passing.jsonl", encoding="utf-8") as passing,
            ):
                for row, (line, size, _, state, out_bytes) in enumerate(meta.tolist()):
                    tally["documents"] += 1
                    if state == PASSES:
                        text, (snippet, found) = next(kept), json.loads(next(passing))
                    else:
                        rule, detail, snippet = json.loads(next(gone))
                    if row in dup:
                        rule, detail = dup[row]
                    elif state == PASSES:
                        kept_file.write(text)
                        tally["kept"] += 1
                        tally["bytes_kept"] += out_bytes
                        pii.update(found)
                        continue
                    removed[rule] += 1
                    removed_bytes[rule] += size
                    record = {
                        "source": s.source,
                        "line": line + offset,
                        "rule": rule,
                        "detail": detail,
                        "text": snippet,
                    }
                    rm_file.write(json.dumps(record, ensure_ascii=False) + "\n")
    if kept_file is not None:
        kept_file.close()
    return {**tally, "removed": removed, "removed_bytes": removed_bytes, "pii": pii}


# ------------------------------------------------------------------------------------------ summary


def _summary(
    c: CleanConfig,
    tally: dict,
    seconds: float,
    setup_s: float,
    ppl: PerplexityFilter | None,
    index: BenchmarkIndex | None,
    rule_s: Counter,
) -> dict:
    docs, mb = max(tally["documents"], 1), tally["bytes_in"] / 1e6
    removed, removed_bytes = tally["removed"], tally["removed_bytes"]
    return {
        "inputs": c.inputs,
        "out": c.out,
        "documents": tally["documents"],
        "kept": tally["kept"],
        "mb_in": round(mb, 3),
        "mb_kept": round(tally["bytes_kept"] / 1e6, 3),
        "seconds": round(seconds, 2),
        "setup_seconds": round(setup_s, 2),
        "mb_per_s": round(mb / seconds, 3) if seconds else None,
        "executor": c.executor,
        "workers": tally["workers"],
        "shards": tally["shards"],
        "shards_resumed": tally["resumed"],
        "stage_seconds": {k: round(v, 2) for k, v in tally["stages"].items()},
        "removed": {
            rule: {"documents": n, "share": round(n / docs, 4), "mb": round(removed_bytes[rule] / 1e6, 3)}
            for rule, n in removed.most_common()
        },
        "pii_masked": dict(tally["pii"].most_common()),
        "rule_seconds": {k: round(v, 2) for k, v in rule_s.most_common()},
        "perplexity_thresholds": ppl.thresholds if ppl else None,
        "benchmark_items": len(index.names) if index else 0,
        "benchmark_items_unchecked": len(index.too_short) if index else 0,
    }


def summary_table(s: dict) -> str:
    lines = [
        f"{s['documents']} documents ({s['mb_in']:.2f} MB) -> {s['kept']} kept ({s['mb_kept']:.2f} MB) in "
        f"{s['seconds']:.1f} s, {s['mb_per_s'] or 0:.2f} MB/s (+{s['setup_seconds']:.1f} s setup); "
        f"{s['shards']} shards ({s['shards_resumed']} resumed), {s['workers']} workers ({s['executor']})",
        "",
        "| rule | documents removed | share of documents | MB removed |",
        "|---|---|---|---|",
    ]
    for rule, r in s["removed"].items():
        lines.append(f"| {rule} | {r['documents']} | {r['share']:.2%} | {r['mb']:.3f} |")
    kept_share = s["kept"] / max(s["documents"], 1)
    lines.append(f"| **kept** | {s['kept']} | {kept_share:.2%} | {s['mb_kept']:.3f} |")
    lines += [
        "",
        "seconds per step, summed over workers: " + ", ".join(f"{k} {v:.1f}" for k, v in s["rule_seconds"].items()),
    ]
    if s["pii_masked"]:
        lines += ["", "PII masked: " + ", ".join(f"{k} {v}" for k, v in s["pii_masked"].items())]
    if s["perplexity_thresholds"]:
        lines += [
            "",
            "perplexity thresholds: " + ", ".join(f"{k} {v:.1f}" for k, v in s["perplexity_thresholds"].items()),
        ]
    if s["benchmark_items"]:
        lines += [
            "",
            f"decontaminated against {s['benchmark_items']} benchmark items "
            f"({s['benchmark_items_unchecked']} too short to check)",
        ]
    return "\n".join(lines)
