"""Where knowledge-base ingestion time goes, and what bf16 buys: the catalog encoders on real chunks.

Chunks: a sample of those benchmarks/rag_retrieval.py stored (`--work`), half Chinese and half English, embedded as
`kb add` embeds them (heading path + text, the "passage" prompt where the encoder has one). Each encoder runs in
float32 and in bfloat16 (autocast), alternating, `--rounds` times (a static encoder, a table of token vectors, once
per round); texts/s and encoder tokens/s are the medians over rounds, and "cosine" is the least cosine between an
encoder's float32 and bfloat16 vectors of the same text. Then one `kb add` of `--profile-docs` People's Daily articles
into a fresh knowledge base per `--profile-encoders` encoder, timed by stage.

    .venv/bin/python benchmarks/rag_encode.py --work artifacts/rag-bench
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine, write_results

SECTION = "## Knowledge-base encoding speed (`kb add`)"
INTRO = __doc__.split("\n\n    .venv")[0].split("\n\n", 1)[1].strip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the folder benchmarks/rag_retrieval.py --work kept")
    p.add_argument("--encoders", default="multilingual-e5-small,multilingual-e5-small-static,all-minilm-l6-v2")
    p.add_argument("--texts", type=int, default=128, help="chunks per round (half zh, half en)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile-docs", type=int, default=150)
    p.add_argument(
        "--profile-encoders",
        default="multilingual-e5-small,multilingual-e5-small-static",
        help="the encoders whose `kb add` is timed by stage",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    return p.parse_args(argv)


def sample_chunks(work: Path, n: int) -> list[str]:
    from camelid.rag.store import passage

    with sqlite3.connect(work / "kb" / "kb.sqlite") as db:
        rows = db.execute("SELECT d.name, c.heading, c.text FROM chunks c JOIN docs d ON d.id = c.doc_id").fetchall()
    rng = np.random.default_rng(0)
    out = []
    for lang in ("zh/", "en/"):
        mine = [r for r in rows if r[0].startswith(lang)]
        out += [passage(json.loads(mine[i][1]), mine[i][2]) for i in rng.permutation(len(mine))[: n // 2]]
    return out


def profile(work: Path, docs: int, encoder: str) -> tuple[dict, float, float]:
    """Seconds per stage of one `kb add` of `docs` articles with `encoder` (otherwise the default config); total
    seconds; MB."""
    from camelid.config import RagConfig
    from camelid.rag import embed, store

    spent: collections.Counter = collections.Counter()

    def timed(owner, name, key):
        f = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        setattr(owner, name, wrapper)
        return owner, name, f

    files = sorted((work / "docs" / "zh").iterdir())[:docs]
    mb = sum(f.stat().st_size for f in files) / 1e6
    patched = [
        timed(store, "read_blocks", "read"),
        timed(store, "chunk_blocks", "chunk (sentence split, token counts)"),
        timed(store, "terms", "BM25 terms (jieba)"),
        timed(embed.Encoder, "encode_passages", "encode + [UNK] shares (bf16 where native)"),
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RagConfig(root=tmp, embedding_model=encoder)
            kb = store.KnowledgeBase.open(Path(tmp) / "p", create=cfg)
            kb.encoder(cfg.embedding_batch).encode(["warm-up"])
            spent.clear()
            t = time.perf_counter()
            kb.add([str(f) for f in files], cfg, progress=False)
            total = time.perf_counter() - t
            kb.close()
    finally:
        for owner, name, f in patched:
            setattr(owner, name, f)
    return dict(spent), total, mb


def main(argv=None) -> None:
    a = parse_args(argv)
    import torch

    from camelid.rag.embed import Encoder

    torch.set_num_threads(2)
    work = Path(a.work)
    texts = sample_chunks(work, a.texts)
    rows = []
    for name in a.encoders.split(","):
        # a static encoder (a table of token vectors) has no matmuls for bf16 to speed up: one row
        encs = {"float32": Encoder(name, dtype="float32")}
        static = encs["float32"].table is not None
        if not static:
            encs["bfloat16"] = Encoder(name, dtype="bfloat16")
        tokens = sum(encs["float32"].count_tokens(texts))
        rates: dict[str, list[float]] = {dt: [] for dt in encs}
        vecs = {}
        for dt, enc in encs.items():
            enc.encode(texts[:8])  # warm
        for _ in range(a.rounds):
            for dt, enc in encs.items():
                t = time.perf_counter()
                vecs[dt] = enc.encode(texts)
                rates[dt].append(len(texts) / (time.perf_counter() - t))
        f32 = statistics.median(rates["float32"])
        rows.append(
            f"| {name} | {'static' if static else 'float32'} | {f32:,.1f} | {f32 * tokens / len(texts):,.0f} | "
        )
        rows[-1] += "– | – |" if static else "1.00× | – |"
        if not static:
            cos = float((vecs["float32"] * vecs["bfloat16"]).sum(1).min())
            b16 = statistics.median(rates["bfloat16"])
            rows.append(
                f"| {name} | bfloat16 | {b16:.1f} | {b16 * tokens / len(texts):,.0f} | {b16 / f32:.2f}× | {cos:.5f} |"
            )
        print(*rows[-1 if static else -2 :], sep="\n", flush=True)
    profiles = []
    for name in a.profile_encoders.split(","):
        spent, total, mb = profile(work, a.profile_docs, name)
        stages = "\n".join(
            f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
        )
        profiles += [
            "",
            f"`kb add` of {a.profile_docs} People's Daily articles ({mb:.2f} MB) with {name}: {total:.1f} s, "
            f"{mb / total:.3f} MB/s",
            "",
            "| stage | seconds | share |",
            "|---|---|---|",
            stages,
        ]
    text = "\n".join(
        [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}",
            f"- command: `python benchmarks/rag_encode.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
            f"- {len(texts)} chunks per round, {a.rounds} rounds",
            "",
            "| encoder | dtype | texts/s | tokens/s | bf16 speed-up | least cosine fp32 vs bf16 |",
            "|---|---|---|---|---|---|",
            *rows,
            *profiles,
        ]
    )
    print(text)
    if a.out:
        write_results(Path(a.out), SECTION, INTRO, "cpu, 2 threads", text)


if __name__ == "__main__":
    main()
