"""Hybrid retrieval: BM25 over jieba terms (SQLite FTS5) and dense inner product (faiss), fused by reciprocal
rank (Cormack, Clarke & Buettcher 2009), optionally reordered by a reranker (camelid/rag/rerank.py).

A fused score says nothing about whether a chunk is relevant, so relevance is each retriever's own word: a
chunk is kept when its cosine similarity reaches `rag.min_similarity`, or when it matches at least
`rag.min_term_share` of the question's BM25 weight (Σ idf of the question terms it contains / Σ idf of all of
them: a question about something the knowledge base never mentions matches little of its rare words).

An encoder that cannot read a language finds all its texts alike (all-MiniLM-L6-v2 gives any two Chinese texts
a cosine of ~0.7, related or not, and an English question reaches rag.min_similarity with Chinese chunks it
cannot read): its ranking is noise and its similarity vouches for nothing. So its vote counts only on text it
reads: when more than `rag.max_unknown_share` of the question's tokens are [UNK] to the encoder, the dense side
sits out and hybrid retrieval is BM25 alone (benchmarks/RESULTS.md measures both); a dense candidate whose chunk
is over that share is dropped from the dense list, so it neither ranks there nor passes on its similarity. The
chunks' shares are recorded when they are added (a base built before is measured at query time until its next
`kb add` records them).

Reciprocal rank fusion ranks a chunk both retrievers list above one that only BM25 lists, however good a match:
BM25's first hit, when it matches every question term, keeps a place in the top k whatever the dense side prefers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from camelid.config import RagConfig
from camelid.rag.embed import Encoder
from camelid.rag.rerank import LlmJudge, cross_encoder
from camelid.rag.store import KnowledgeBase, passage
from camelid.rag.terms import has_cjk, query_terms
from camelid.utils import CamelidError


@dataclass
class Hit:
    id: int
    score: float = 0.0  # the fused (or reranked) score that ordered the hits
    similarity: float | None = None  # cosine to the question, when the dense retriever saw it
    bm25: float | None = None  # FTS5's BM25 (higher is better here)
    term_share: float = 0.0
    rerank: float | None = None
    ranks: dict = field(default_factory=dict)  # retriever → 1-based rank
    chunk: dict = field(default_factory=dict)  # source, chunk, text, heading, kind, start, end


def _fts_query(words: list[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def bm25_search(kb: KnowledgeBase, words: list[str], n: int) -> list[tuple[int, float]]:
    """(chunk id, BM25) best first. FTS5's bm25() is lower-is-better; it is negated here."""
    if not words:
        return []
    with kb.lock:
        rows = kb.db.execute(
            "SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT ?", (_fts_query(words), n)
        ).fetchall()
    return [(r[0], -r[1]) for r in rows]


def term_shares(kb: KnowledgeBase, words: list[str], ids: list[int]) -> dict[int, float]:
    """For each chunk id: the share of the question's idf mass its terms cover (BM25's own idf)."""
    if not words or not ids:
        return {i: 0.0 for i in ids}
    wanted = set(ids)
    with kb.lock:
        total = kb.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        postings = [
            {r[0] for r in kb.db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (_fts_query([w]),))} for w in words
        ]
    idf = [math.log(1 + (total - len(p) + 0.5) / (len(p) + 0.5)) for p in postings]
    mass = sum(idf) or 1.0
    return {i: sum(w for w, p in zip(idf, postings) if i in p) / mass for i in wanted}


def dense_search(kb: KnowledgeBase, enc: Encoder, question: str, n: int) -> list[tuple[int, float]]:
    index = kb.index()
    if index.ntotal == 0:
        return []
    q = enc.encode([question], role="query")
    sims, ids = index.search(q, min(n, index.ntotal))
    return [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0]


def readable(
    kb: KnowledgeBase, enc: Encoder, ranked: list[tuple[int, float]], max_unknown: float
) -> list[tuple[int, float]]:
    """The dense hits whose passage (as embedded) is at most `max_unknown` [UNK] to the encoder, in order."""
    shares = kb.unknown_shares([cid for cid, _ in ranked], enc)
    # a chunk removed since the index was read has no share, and goes
    return [(cid, sim) for cid, sim in ranked if cid in shares and shares[cid] <= max_unknown]


def min_similarity(cfg: RagConfig, enc: Encoder, question: str) -> float:
    """The least cosine that makes a chunk relevant to `question`: rag.min_similarity, or with `auto` the encoder's
    measured value for the question's script."""
    if cfg.min_similarity != "auto":
        return cfg.min_similarity
    return enc.min_similarity_cjk if has_cjk(question) else enc.min_similarity


def rrf(rankings: dict[str, list[int]], k: int) -> dict[int, float]:
    """Reciprocal rank fusion: Σ over retrievers of 1 / (k + rank)."""
    fused: dict[int, float] = {}
    for ranked in rankings.values():
        for rank, cid in enumerate(ranked, 1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (k + rank)
    return fused


def search(
    kb: KnowledgeBase,
    question: str,
    cfg: RagConfig,
    retriever: str | None = None,
    top_k: int | None = None,
    judge: LlmJudge | None = None,
) -> list[Hit]:
    """The relevant chunks for `question`, best first, at most top_k; [] when nothing passes the thresholds.
    `judge`: the answering model, for rag.reranker=llm."""
    mode = retriever or cfg.retriever
    words = query_terms(question)
    found: dict[str, list[tuple[int, float]]] = {}
    if mode in ("hybrid", "bm25"):
        found["bm25"] = bm25_search(kb, words, cfg.candidates)
    # the same (batch, dtype) as `kb add` and the server's warm-up, so one loaded copy serves all three
    enc = kb.encoder(cfg.embedding_batch, cfg.embedding_dtype) if mode != "bm25" else None
    if enc and enc.unknown_share(question) <= cfg.max_unknown_share:
        found["dense"] = readable(kb, enc, dense_search(kb, enc, question, cfg.candidates), cfg.max_unknown_share)
    hits: dict[int, Hit] = {}
    for name, ranked in found.items():
        for rank, (cid, score) in enumerate(ranked, 1):
            h = hits.setdefault(cid, Hit(cid))
            h.ranks[name] = rank
            setattr(h, "bm25" if name == "bm25" else "similarity", score)
    for cid, share in term_shares(kb, words, list(hits)).items():
        hits[cid].term_share = share
    for cid, score in rrf({name: [cid for cid, _ in ranked] for name, ranked in found.items()}, cfg.rrf_k).items():
        hits[cid].score = score

    least = min_similarity(cfg, enc, question) if enc else 1.0

    def vouched(h: Hit) -> bool:
        return h.term_share >= cfg.min_term_share or (h.similarity is not None and h.similarity >= least)

    kept = [h for h in hits.values() if vouched(h)]
    kept.sort(key=lambda h: -h.score)
    chunks = kb.chunks([h.id for h in kept])
    for h in kept:
        h.chunk = chunks[h.id]
    if cfg.reranker and kept:
        if cfg.reranker == "llm" and judge is None:
            raise CamelidError(
                "rag.reranker=llm reranks with the answering model: `kb ask` and the server have one, "
                "`kb search` has none (give it rag.reranker= or a cross-encoder)"
            )
        rerank = judge if cfg.reranker == "llm" else cross_encoder(cfg.reranker)
        kept = kept[: cfg.rerank_top]  # the reranker reads the fused best; its cost grows with each candidate
        scores = rerank.scores(question, [passage(h.chunk["heading"], h.chunk["text"]) for h in kept])
        for h, s in zip(kept, scores):
            h.rerank = h.score = s
        kept = sorted((h for h in kept if h.rerank >= cfg.min_rerank_score), key=lambda h: -h.score)
        return kept[: top_k or cfg.top_k]
    return _top(kept, top_k or cfg.top_k)


def _top(kept: list[Hit], k: int) -> list[Hit]:
    """The first k of the fused hits, where BM25's first hit matching every question term takes the last place
    if fusion ranked it below: a chunk only BM25 lists scores 1/(rrf_k + 1) at best, under any chunk both list."""
    full = next((h for h in kept[k:] if h.ranks.get("bm25") == 1 and math.isclose(h.term_share, 1.0)), None)
    return kept[: k - 1] + [full] if full else kept[:k]
