"""Exact vs IVF vector search for knowledge bases: where `camelid.rag.store.ANN_ABOVE` comes from.

Vectors: the stored embeddings of the knowledge base benchmarks/rag_retrieval.py built and kept (`--work`), and the
same set grown `--grow` times by copies with Gaussian noise (renormalized), for the latency of a larger base (its
recall is on synthetic neighbours, so it is reported apart). Queries: the questions of benchmarks/rag_questions.jsonl
and rag_questions_heldout.jsonl, encoded as the knowledge base encodes them. Recall@10: the share of exact search's
10 nearest that IVF also returns in its 10, at each `nprobe`. Latency: one query at a time, the `candidates` (40)
nearest, 2 threads.

    .venv/bin/python benchmarks/rag_ann.py --work artifacts/rag-bench
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine, write_results
from rag_retrieval import load_questions

SECTION = "## Knowledge-base vector index: exact vs IVF"
INTRO = __doc__.split("\n\n    .venv")[0].split("\n\n", 1)[1].strip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the folder benchmarks/rag_retrieval.py --work kept")
    p.add_argument("--grow", type=int, default=10, help="the larger base: this many noisy copies of each vector")
    p.add_argument("--noise", type=float, default=0.01, help="noise per dimension of a copy (norm ~0.2 in 384-d)")
    p.add_argument("--probes", default="8,16,32,64")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    return p.parse_args(argv)


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    index.search(queries[:1], k)  # warm
    ids, times = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(index.search(q[None], k)[1][0])
        times.append(time.perf_counter() - t)
    return np.stack(ids), statistics.median(times) * 1000


def recall(exact: np.ndarray, approx: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(e[:k]) & set(a[:k])) / k for e, a in zip(exact, approx)]))


def main(argv=None) -> None:
    a = parse_args(argv)
    import faiss

    from camelid.rag.embed import encoder
    from camelid.rag.store import ANN_PROBE, KnowledgeBase

    faiss.omp_set_num_threads(2)
    kb = KnowledgeBase.open(Path(a.work) / "kb")
    with sqlite3.connect(Path(a.work) / "kb" / "kb.sqlite") as db:
        vecs = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in db.execute("SELECT vec FROM chunks")])
    questions = [
        q["question"]
        for f in ("rag_questions.jsonl", "rag_questions_heldout.jsonl")
        for q in load_questions(ROOT / "benchmarks" / f)
    ]
    queries = encoder(kb.meta["embedding_model"]).encode(questions, role="query")
    rng = np.random.default_rng(0)
    grown = np.concatenate(
        [vecs] + [vecs + rng.normal(0, a.noise, vecs.shape).astype(np.float32) for _ in range(a.grow - 1)]
    )
    grown /= np.linalg.norm(grown, axis=1, keepdims=True)
    rows = []
    for label, base in ((f"stored ({len(vecs):,})", vecs), (f"grown ×{a.grow} ({len(grown):,}, synthetic)", grown)):
        n, dim = base.shape
        flat = faiss.IndexFlatIP(dim)
        flat.add(base)
        exact, flat_ms = timed_search(flat, queries, 40)
        rows.append([label, "exact", "–", "–", f"{flat_ms:.2f}", "100%"])
        lists = int(4 * np.sqrt(n))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        ivf.train(base[rng.permutation(n)[: 64 * lists]])
        ivf.add(base)
        built = time.perf_counter() - t
        for probe in [int(p) for p in a.probes.split(",")]:
            ivf.nprobe = probe
            got, ms = timed_search(ivf, queries, 40)
            mark = " (default)" if probe == ANN_PROBE else ""
            rows.append(
                [
                    label,
                    f"IVF-Flat, {lists} lists",
                    f"{probe}{mark}",
                    f"{built:.1f}",
                    f"{ms:.2f}",
                    f"{recall(exact, got):.1%}",
                ]
            )
        print(rows[-1], flush=True)
    kb.close()
    text = "\n".join(
        [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}",
            f"- command: `python benchmarks/rag_ann.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
            f"- encoder {kb.meta['embedding_model']} ({vecs.shape[1]}-d), {len(queries)} queries; k = 40",
            "",
            "| vectors | index | nprobe | build s | search p50 ms | recall@10 vs exact |",
            "|---|---|---|---|---|---|",
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    )
    print(text)
    if a.out:
        write_results(Path(a.out), SECTION, INTRO, "cpu, 2 threads", text)


if __name__ == "__main__":
    main()
