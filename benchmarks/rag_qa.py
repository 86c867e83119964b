"""Knowledge-base answers, not only retrieval: `camelid kb ask` on the questions of benchmarks/rag_questions.jsonl,
over the knowledge base benchmarks/rag_retrieval.py built and kept (`--work`), with the catalog SmolLM2 and with a
fine-tuned run, each without a reranker and with `rag.reranker=llm` (the answering model judging the fused top
`rag.rerank_top`).

For an answerable question: did the needle's chunk reach the prompt ("in prompt"), did the answer cite a source at
all, and did it cite the one holding the needle ("cites the needle"); citation precision is, over all citations the
answers make, the share that point at a needle-holding source. For an off-topic question: did it answer "not found"
(that decision is retrieval's: no chunk passed the thresholds, and the model is not run). Latency: retrieval (with
the reranker) per question; the answers are generated in one engine batch, timed whole.

    .venv/bin/python benchmarks/rag_retrieval.py --work artifacts/rag-bench          # builds and keeps the knowledge base
    .venv/bin/python benchmarks/rag_qa.py --work artifacts/rag-bench --tuned runs/quickstart/final
"""

from __future__ import annotations

import argparse
import datetime
import functools
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import ROOT, machine, write_results
from rag_retrieval import load_questions, relevant

SECTION = "## Knowledge-base answers (`camelid kb ask`)"
INTRO = __doc__.split("\n\n    .venv")[0].strip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the folder benchmarks/rag_retrieval.py --work kept")
    p.add_argument("--questions", default=str(ROOT / "benchmarks" / "rag_questions.jsonl"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tuned", default="", help="a fine-tuned run or folder to compare (e.g. runs/quickstart/final)")
    p.add_argument("--rerankers", default=",llm", help="comma-separated rag.reranker values ('' = none)")
    p.add_argument("--limit", type=int, default=0, help="questions per language (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = print only")
    return p.parse_args(argv)


def run(engine, kb, questions: list[dict], rag) -> tuple[list[dict], float]:
    """Per question: retrieval (and reranking) one at a time, timed; then every grounded prompt answered in one
    engine batch, as a server would answer them arriving together. Also the batch's seconds."""
    from camelid.data.templates import prompt_ids
    from camelid.rag.answer import answer_params, prepare
    from camelid.rag.rerank import LlmJudge

    render = functools.partial(prompt_ids, engine.tokenizer)
    judge = LlmJudge(engine, render) if rag.reranker == "llm" else None
    params = answer_params(rag)
    grounded = []
    for q in questions:
        t0 = time.perf_counter()
        grounded.append((q, prepare(kb, rag, q["question"], render, engine.max_model_len, params.max_tokens, judge)))
        grounded[-1] += (time.perf_counter() - t0,)
    t0 = time.perf_counter()
    found = [g for _, g, _ in grounded if g.found]
    texts = iter(c.text for c in engine.generate([g.ids for g in found], params)) if found else iter(())
    batch_s = time.perf_counter() - t0
    rows = []
    for q, g, seconds in grounded:
        out = g.reply(next(texts) if g.found else None)
        holds = [bool(q["needle"]) and relevant(h, q) for h in g.used]
        cited = [c["index"] for c in out["citations"] if c.get("cited")]
        rows.append(
            {
                "q": q,
                "found": out["found"],
                "in_prompt": any(holds),
                "cited": len(cited),
                "cited_right": sum(holds[i - 1] for i in cited),
                "retrieve_s": seconds,
                "answer": out["answer"],
            }
        )
        print(f"  [{q['lang']}] found={out['found']} in_prompt={any(holds)} cited={cited} {out['answer'][:60]!r}")
    return rows, batch_s


def summary(rows: list[dict], lang: str | None) -> dict:
    sel = [r for r in rows if lang is None or r["q"]["lang"] == lang]
    ans = [r for r in sel if r["q"]["needle"]]
    off = [r for r in sel if not r["q"]["needle"]]
    cites = sum(r["cited"] for r in ans)

    def share(xs) -> str:
        return f"{sum(xs) / len(xs):.0%}" if xs else "–"

    return {
        "answerable": len(ans),
        "found": share([r["found"] for r in ans]),
        "in prompt": share([r["in_prompt"] for r in ans]),
        "cites any": share([r["cited"] > 0 for r in ans]),
        "cites the needle": share([r["cited_right"] > 0 for r in ans]),
        "citation precision": f"{sum(r['cited_right'] for r in ans) / cites:.0%} of {cites}"
        if cites
        else "no citations",
        "off-topic": len(off),
        "not-found accuracy": share([not r["found"] for r in off]),
        "retrieval p50 ms": f"{statistics.median(r['retrieve_s'] for r in sel) * 1000:.0f}",
    }


def main(argv=None) -> None:
    a = parse_args(argv)
    from camelid.config import EngineConfig, RagConfig
    from camelid.engine import Engine
    from camelid.rag.embed import encoder
    from camelid.rag.store import KnowledgeBase
    from camelid.utils import setup_logging

    setup_logging()
    kb = KnowledgeBase.open(Path(a.work) / "kb")
    questions = load_questions(Path(a.questions))
    if a.limit:
        questions = [q for lang in ("zh", "en") for q in [x for x in questions if x["lang"] == lang][: a.limit]]
    base = RagConfig(embedding_model=kb.meta["embedding_model"], max_new_tokens=a.max_new_tokens)
    enc = encoder(base.embedding_model)
    models = [("catalog", a.model)] + ([("fine-tuned", a.tuned)] if a.tuned else [])
    table = []
    for label, name in models:
        engine = Engine.load(name, EngineConfig(kv_cache_tokens=16384))
        for reranker in a.rerankers.split(","):
            rag = replace(base, reranker=reranker)
            print(f"--- {label} {name}, reranker {reranker or 'none'}", flush=True)
            rows, batch_s = run(engine, kb, questions, rag)
            for lang in ("zh", "en", None):
                table.append(
                    {"model": f"{label}: {name}", "reranker": reranker or "none", "lang": lang or "all"}
                    | summary(rows, lang)
                    | {"answers (one batch) s": f"{batch_s:.0f}" if lang is None else ""}
                )
        del engine
    kb.close()
    cols = list(table[0])
    text = "\n".join(
        [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}",
            f"- command: `python benchmarks/rag_qa.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
            f"- knowledge base: {kb.meta['embedding_model']}, thresholds min_similarity auto (zh "
            f"{enc.min_similarity_cjk}, en {enc.min_similarity}), "
            f"min_term_share {base.min_term_share}; rerank_top {base.rerank_top}; answers greedy, at most "
            f"{a.max_new_tokens} new tokens",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
            *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table),
        ]
    )
    print(text)
    if a.out:
        write_results(Path(a.out), SECTION, INTRO, f"cpu, {kb.meta['embedding_model']}", text)


if __name__ == "__main__":
    main()
