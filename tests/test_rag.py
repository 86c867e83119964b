"""Knowledge bases: ingestion, path safety, re-ingestion, BM25/dense/fused retrieval, rerank, grounded answers
with citations, the "not found" path, the CLI and the HTTP API. Encoders here are tiny random BERTs built from
configs (their similarities mean nothing, so dense tests use exact text); tests/test_real_model.py repeats the
paraphrase tests with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

from camelid.config import RagConfig, load_config  # noqa: E402
from camelid.rag.retrieve import search  # noqa: E402
from camelid.rag.store import KnowledgeBase, kb_folder, passage, safe_name  # noqa: E402
from camelid.utils import CamelidError  # noqa: E402

WORDS = (
    "the of and to a in is that for it as with on by this be are from at or an was which city river king "
    "law money bank train school music water food health court market price road 北京 上海 经济 发展 人民 "
    "政府 工作 会议 建设 国家 企业 市场 银行 教育 学校 医院 交通 铁路 农业 科技"
).split()


def build_encoder(path: Path, cross: bool = False) -> Path:
    """A 2-layer BERT (WordPiece trained here) saved as a plain HF folder: sentence-transformers wraps it with
    mean pooling; with `cross`, a 1-label sequence classifier, which it loads as a cross-encoder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(
        [" ".join(WORDS)] * 5 + [PLANTED_EN, PLANTED_ZH],
        trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg) if cross else BertModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


PLANTED_EN = (
    "The lighthouse keeper of Harrow Point rows to the mainland every Thursday to buy lamp oil. "
    "In winter storms he stays on the rock for weeks."
)
PLANTED_ZH = "熊猫饲养员每天早上六点给大熊猫准备新鲜竹子。冬天的时候，竹子从四川运来。"


def distractors(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 40)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return build_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture()
def rag(encoder_dir, tmp_path) -> RagConfig:
    return RagConfig(root=str(tmp_path / "kbs"), embedding_model=str(encoder_dir), chunk_tokens=48, chunk_overlap=8)


def make_kb(rag: RagConfig, name: str = "kb") -> KnowledgeBase:
    return KnowledgeBase.open(kb_folder(name, rag), create=rag)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A folder: the planted passages among distractor documents, in several formats."""
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "lighthouse.md").write_text(f"# Coast\n\n## Harrow Point\n\n{PLANTED_EN}\n", encoding="utf-8")
    (d / "sub" / "panda.txt").write_text(PLANTED_ZH + "\n", encoding="utf-8")
    for i, text in enumerate(distractors(12)):
        (d / f"d{i}.txt").write_text(text + "\n\n" + text[::-1] + "\n", encoding="utf-8")
    return d


# ------------------------------------------------------------------ ingestion


def test_each_format_is_ingested_with_source_heading_and_position(rag, tmp_path):
    from fpdf import FPDF

    d = tmp_path / "formats"
    d.mkdir()
    (d / "a.txt").write_text("First paragraph about rivers.\n\nSecond paragraph about kings.\n", encoding="utf-8")
    (d / "b.md").write_text("# Guide\n\n## Install\n\nRun the installer twice.\n", encoding="utf-8")
    (d / "c.html").write_text(
        "<html><head><script>var x=1;</script></head><body><nav>menu</nav><h1>Shop</h1>"
        "<h2>Prices</h2><p>Bread costs 3 &euro;.</p></body></html>",
        encoding="utf-8",
    )
    (d / "e.jsonl").write_text(
        json.dumps({"title": "FAQ", "text": "Returns take ten days."})
        + "\n"
        + json.dumps({"text": "退货需要十天。"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for page in ("The first page talks about harbours.", "The second page talks about lighthouses."):
        pdf.add_page()
        pdf.multi_cell(0, 8, page)
    pdf.output(str(d / "f.pdf"))

    kb = make_kb(rag)
    report = kb.add([str(d)], rag, progress=False)
    assert sorted(report.added) == [f"formats/{n}" for n in ("a.txt", "b.md", "c.html", "e.jsonl", "f.pdf")]
    assert not report.failed
    rows = {(c["source"], c["text"]): c for c in kb.chunks(list(range(1, kb.size() + 1))).values()}
    by_text = {t: c for (_, t), c in rows.items()}
    assert by_text["Run the installer twice."]["heading"] == ["Guide", "Install"]
    assert by_text["Run the installer twice."]["start"] == 5 and by_text["Run the installer twice."]["kind"] == "line"
    bread = next(c for t, c in by_text.items() if t.startswith("Bread"))
    assert bread["text"] == "Bread costs 3 €." and bread["heading"] == ["Shop", "Prices"]
    assert not any("var x" in t or "menu" in t for t in by_text)
    assert by_text["Returns take ten days."]["heading"] == ["FAQ"] and by_text["退货需要十天。"]["start"] == 2
    (pdf_chunk,) = [c for c in by_text.values() if c["source"] == "formats/f.pdf"]  # both pages fit one chunk
    assert pdf_chunk["text"].startswith("The first page") and "The second page talks" in pdf_chunk["text"]
    assert (pdf_chunk["kind"], pdf_chunk["start"], pdf_chunk["end"]) == ("page", 1, 2)
    assert {d["name"]: d["chunks"] for d in kb.documents()}["formats/a.txt"] == 1
    assert (kb.folder / "files" / "formats" / "f.pdf").read_bytes() == (d / "f.pdf").read_bytes()


def test_bad_files_are_reported_by_name_and_the_rest_is_kept(rag, tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.jsonl"
    good.write_text("A fine document.\n", encoding="utf-8")
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n', encoding="utf-8")
    report = make_kb(rag).add([str(good), str(bad)], rag, progress=False)
    assert report.added == ["good.txt"]
    assert "bad.jsonl:2" in report.failed["bad.jsonl"] and "text" in report.failed["bad.jsonl"]


def test_a_file_whose_name_cannot_be_stored_is_reported_and_the_rest_is_kept(rag, tmp_path):
    """A backslash is refused in a stored name (it is a separator on Windows): one such file, inside a folder or
    given on its own, fails alone by name instead of stopping the whole `kb add`."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "good.txt").write_text("A fine document.\n", encoding="utf-8")
    (d / "bad\\name.txt").write_text("A backslash in its name.\n", encoding="utf-8")
    lone, other = tmp_path / "lone\\bad.md", tmp_path / "other.txt"
    lone.write_text("# Lone\n\nAlso a backslash.\n", encoding="utf-8")
    other.write_text("Another fine document.\n", encoding="utf-8")
    kb = make_kb(rag)
    report = kb.add([str(d), str(lone), str(other)], rag, progress=False)
    assert report.added == ["docs/good.txt", "other.txt"]
    assert sorted(report.failed) == ["docs/bad\\name.txt", "lone\\bad.md"]
    assert all("not allowed" in why for why in report.failed.values())
    assert [doc["name"] for doc in kb.documents()] == ["docs/good.txt", "other.txt"]


# ------------------------------------------------------------------ path safety


@pytest.mark.parametrize("name", ["../x.txt", "/etc/passwd", "a/../../b.txt", "~/x", "a\\..\\b", ""])
def test_document_names_that_could_escape_are_refused(name):
    with pytest.raises(CamelidError):
        safe_name(name)


def test_escapes_are_refused_everywhere(rag, corpus, tmp_path):
    for bad in ("..", ".hidden", "a b", "x" * 70, "~root"):
        with pytest.raises(CamelidError, match="not allowed"):
            kb_folder(bad, rag)
    outside = tmp_path / "secret.txt"
    outside.write_text("the secret launch code is 0000\n", encoding="utf-8")
    os.symlink(outside, corpus / "link.txt")  # a link inside the folder leading out of it
    kb = make_kb(rag)
    report = kb.add([str(corpus)], rag, progress=False)
    assert "docs/link.txt" not in report.added and "docs/sub/panda.txt" in report.added
    assert not search(kb, "secret launch code", rag, retriever="bm25")
    with pytest.raises(CamelidError, match="outside"):
        kb.remove(["../../secret.txt"])
    assert outside.exists()
    files = {p.resolve() for p in (kb.folder / "files").rglob("*") if p.is_file()}
    assert all(p.is_relative_to((kb.folder / "files").resolve()) for p in files)


# ------------------------------------------------------------------ re-ingestion


def test_readding_a_changed_file_replaces_its_chunks(rag, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("The old password is tangerine.\n", encoding="utf-8")
    kb = make_kb(rag)
    kb.add([str(f)], rag, progress=False)
    assert search(kb, "tangerine password", rag, retriever="bm25")
    assert kb.add([str(f)], rag, progress=False).unchanged == ["notes.txt"]

    f.write_text("The new password is pomegranate.\n\nIt changed in May.\n", encoding="utf-8")
    report = kb.add([str(f)], rag, progress=False)
    assert report.replaced == ["notes.txt"]
    assert not search(kb, "tangerine", rag, retriever="bm25")
    assert search(kb, "pomegranate", rag, retriever="bm25")[0].chunk["source"] == "notes.txt"
    assert kb.size() == kb.index().ntotal == report.chunks
    reopened = KnowledgeBase.open(kb.folder)  # another process sees the same
    assert reopened.index().ntotal == kb.size() and [d["name"] for d in reopened.documents()] == ["notes.txt"]
    assert (kb.folder / "files" / "notes.txt").read_text(encoding="utf-8").startswith("The new password")

    assert kb.remove(["notes.txt"]) == ["notes.txt"]
    assert kb.size() == 0 and kb.index().ntotal == 0 and not (kb.folder / "files" / "notes.txt").exists()
    with pytest.raises(CamelidError, match="no document"):
        kb.remove(["notes.txt"])


def test_the_vector_index_is_rebuilt_when_its_file_is_lost(rag, corpus):
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    q = PLANTED_EN
    before = [h.id for h in search(kb, q, rag, retriever="dense")]
    for f in kb.folder.glob("vectors-*.faiss"):
        f.unlink()
    again = KnowledgeBase.open(kb.folder)
    assert again.index().ntotal == kb.size()
    assert [h.id for h in search(again, q, rag, retriever="dense")] == before


def test_stored_files_follow_the_umask(rag, corpus):
    """Copies and the vector index go through mkstemp (0600): they must end as readable as any other file, so a
    server running as another account can read the knowledge base."""
    old = os.umask(0o022)
    try:
        kb = make_kb(rag)
        kb.add([str(corpus)], rag, progress=False)
        kb.index()
    finally:
        os.umask(old)
    files = [*kb.folder.glob("vectors-*.faiss"), *(kb.folder / "files").rglob("*.*")]
    assert files and {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o644"}


# ------------------------------------------------------------------ retrieval


def test_bm25_finds_planted_passages_for_paraphrased_questions(rag, corpus):
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    en = search(kb, "How often does the Harrow Point keeper go ashore for oil?", rag, retriever="bm25")
    assert en[0].chunk["source"] == "docs/lighthouse.md" and en[0].chunk["heading"] == ["Coast", "Harrow Point"]
    zh = search(kb, "大熊猫吃的竹子是几点准备的？", rag, retriever="bm25")
    assert zh[0].chunk["source"] == "docs/sub/panda.txt"


def test_dense_and_fused_retrieval(rag, corpus):
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    # a random encoder: a chunk's own text is its nearest neighbour at cosine 1
    exact = "\n".join(["Coast > Harrow Point", PLANTED_EN])
    dense = search(kb, exact, rag, retriever="dense")
    assert dense[0].chunk["source"] == "docs/lighthouse.md" and dense[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert dense[0].bm25 is None and dense[0].ranks == {"dense": 1}
    fused = search(kb, "When does the Harrow Point keeper buy lamp oil?", rag, retriever="hybrid")
    assert fused[0].chunk["source"] == "docs/lighthouse.md" and set(fused[0].ranks) <= {"bm25", "dense"}
    assert fused[0].score == pytest.approx(sum(1 / (rag.rrf_k + r) for r in fused[0].ranks.values()))
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    # a question the encoder cannot read (every token [UNK]): the dense side sits out, unless allowed in
    loose = RagConfig(**{**rag.__dict__, "min_similarity": -1.0})
    assert kb.encoder().unknown_share("Смотритель маяка") == 1.0
    assert search(kb, "Смотритель маяка", loose, retriever="dense") == []
    allowed = search(
        kb, "Смотритель маяка", RagConfig(**{**loose.__dict__, "max_unknown_share": 1.0}), retriever="dense"
    )
    assert len(allowed) == rag.top_k and all(h.ranks == {"dense": i} for i, h in enumerate(allowed, 1))


def test_irrelevant_questions_and_empty_kbs_find_nothing(rag, corpus):
    empty = make_kb(rag, "empty")
    assert search(empty, "Who keeps the lighthouse?", rag) == []
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    # The tiny random encoder puts every text near one direction: different texts reach cosines of 0.96-0.99, and
    # where in that range varies between processes (its WordPiece vocabulary, trained here, comes out in another id
    # order in each). So "strict" sits above that band; the real encoder's thresholds: tests/test_real_model.py.
    strict = RagConfig(**{**rag.__dict__, "min_similarity": 0.9999})
    assert search(kb, "quantum chromodynamics lattice gauge", strict) == []
    assert search(kb, "量子色动力学的格点规范", strict) == []


UNREADABLE_ZH = "鲸鱼在深夜唱歌，声音传得很远。海豚跟着它们游向南方。"  # characters the tiny encoder never saw: [UNK]


def test_chunks_the_encoder_cannot_read_get_no_dense_vote(rag, tmp_path):
    """A random encoder finds all texts alike, as all-MiniLM-L6-v2 finds Chinese: a chunk mostly [UNK] to it
    neither passes rag.min_similarity nor ranks in the dense list, however close its vector."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "whales.txt").write_text(UNREADABLE_ZH + "\n", encoding="utf-8")
    kb_zh = make_kb(rag, "zh")
    kb_zh.add([str(d)], rag, progress=False)
    question = "Which school teaches music?"  # nothing in either knowledge base answers it
    enc = kb_zh.encoder()
    assert enc.unknown_share(question) <= rag.max_unknown_share < enc.unknown_share(UNREADABLE_ZH)
    assert search(kb_zh, question, rag) == []  # so the answer is "not found", not one made up from whales
    (d / "court.txt").write_text("The court sets the price of bread at the market.\n", encoding="utf-8")
    kb = make_kb(rag)
    kb.add([str(d)], rag, progress=False)
    for cfg in (rag, RagConfig(**{**rag.__dict__, "min_similarity": -1.0})):
        hits = search(kb, question, cfg)
        assert [(h.chunk["source"], h.ranks) for h in hits] == [("docs/court.txt", {"dense": 1})]
    # BM25 still finds the chunk for a question in its own language
    zh = search(kb, "鲸鱼为什么唱歌？", rag)
    assert [(h.chunk["source"], h.ranks) for h in zh] == [("docs/whales.txt", {"bm25": 1})]


def test_unknown_shares_are_recorded_at_add_and_filled_in_for_an_older_base(rag, tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "whales.txt").write_text(UNREADABLE_ZH + "\n", encoding="utf-8")
    (d / "court.txt").write_text("The court sets the price of bread at the market.\n", encoding="utf-8")
    kb = make_kb(rag)
    kb.add([str(d)], rag, progress=False)
    enc = kb.encoder()
    ids = [r[0] for r in kb.db.execute("SELECT id FROM chunks ORDER BY id")]
    chunks = kb.chunks(ids)
    measured = dict(zip(ids, enc.unknown_shares([passage(chunks[i]["heading"], chunks[i]["text"]) for i in ids])))
    stored = dict(kb.db.execute("SELECT id, unknown FROM chunks"))
    assert stored == measured and min(measured.values()) == 0.0 < rag.max_unknown_share < max(measured.values())
    question = "Which school teaches music?"
    before = [(h.id, h.ranks) for h in search(kb, question, rag)]
    # a base made before the column existed: queries measure the shares, the next add records them
    with kb.db:
        kb.db.execute("ALTER TABLE chunks DROP COLUMN unknown")
    kb.close()
    old = KnowledgeBase.open(kb.folder)
    assert not old._recorded_unknown and old.unknown_shares(ids, enc) == measured
    assert [(h.id, h.ranks) for h in search(old, question, rag)] == before
    stale = KnowledgeBase.open(kb.folder)  # opened before the column came back, as a server would be
    report = old.add([str(d)], rag, progress=False)
    assert len(report.unchanged) == 2 and dict(old.db.execute("SELECT id, unknown FROM chunks")) == measured
    assert not stale._recorded_unknown and len(stale.add([str(d)], rag, progress=False).unchanged) == 2
    assert stale.unknown_shares(ids, enc) == measured


def test_bm25s_first_hit_matching_every_question_term_stays_in_the_fused_top_k(rag, tmp_path, monkeypatch):
    """Reciprocal rank fusion puts chunks both retrievers rank above one only BM25 ranks: when the dense side
    prefers chunks that match part of the question, BM25's first hit, which matches all of it, must stay."""
    from camelid.rag import retrieve

    d = tmp_path / "docs"
    d.mkdir()
    (d / "serve.md").write_text(
        "# Serving\n\nIn streaming mode the server sends each token as soon as it is made.\n", encoding="utf-8"
    )
    for i in range(6):
        (d / f"mode{i}.txt").write_text(f"The mode of school {i} is set by the court.\n", encoding="utf-8")
    kb = make_kb(rag)
    kb.add([str(d)], rag, progress=False)
    others = sorted(
        c["id"] for c in kb.chunks(list(range(1, kb.size() + 1))).values() if c["source"] != "docs/serve.md"
    )
    monkeypatch.setattr(retrieve, "dense_search", lambda kb, enc, question, n: [(i, 0.9) for i in others[:n]])
    hits = search(kb, "What is streaming mode?", rag)
    assert len(hits) == rag.top_k and all("dense" in h.ranks for h in hits if h.chunk["source"] != "docs/serve.md")
    (full,) = [h for h in hits if h.chunk["source"] == "docs/serve.md"]
    assert full.ranks == {"bm25": 1} and full.term_share == pytest.approx(1.0)


def test_cross_encoder_reranks_and_thresholds(rag, corpus, tmp_path):
    from camelid.rag.rerank import cross_encoder
    from camelid.rag.store import passage

    cross = build_encoder(tmp_path / "cross", cross=True)
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    cfg = RagConfig(**{**rag.__dict__, "reranker": str(cross), "min_similarity": -1.0, "top_k": 6})
    hits = search(kb, "lighthouse keeper lamp oil", cfg)
    texts = [passage(h.chunk["heading"], h.chunk["text"]) for h in hits]
    scores = cross_encoder(str(cross)).scores("lighthouse keeper lamp oil", texts)
    assert [h.rerank for h in hits] == pytest.approx(scores) and scores == sorted(scores, reverse=True)
    cut = RagConfig(**{**cfg.__dict__, "min_rerank_score": float(np.median(scores))})
    assert all(h.rerank >= cut.min_rerank_score for h in search(kb, "lighthouse keeper lamp oil", cut))


def test_a_large_knowledge_base_switches_to_an_ivf_index_and_back(rag, corpus):
    """Above ann_above chunks the vectors go into an IVF index (saved, reloaded, kept current by add and remove);
    reading all its lists it finds what exact search finds; well below the threshold it is exact again."""
    import faiss

    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    q = "How often does the Harrow Point keeper go ashore for oil?"
    exact = [(h.id, h.similarity) for h in search(kb, q, rag, retriever="dense", top_k=8)]
    n = kb.size()
    kb.meta.update(ann_above=n - 5, ann_probe=1000)  # every list read: the same answers as exact search
    kb.remove(["docs/sub"])  # a change saves the index, which now crosses the threshold
    assert isinstance(kb.index(), faiss.IndexIVF) and kb.index().ntotal == kb.size() < n
    kb.add([str(corpus)], rag, progress=False)  # the removed file comes back
    assert isinstance(kb.index(), faiss.IndexIVF) and kb.index().ntotal == n
    reopened = KnowledgeBase.open(kb.folder)
    reopened.meta.update(kb.meta)
    assert isinstance(reopened.index(), faiss.IndexIVF)  # from its file
    got = [(h.id, h.similarity) for h in search(reopened, q, rag, retriever="dense", top_k=8)]
    assert [i for i, _ in got] == [i for i, _ in exact] and np.allclose([s for _, s in got], [s for _, s in exact])
    kb.meta.update(ann_above=2 * n + 2)  # far above: exact again at the next change
    kb.remove(["docs/sub"])
    assert not isinstance(kb.index(), faiss.IndexIVF)


def test_llm_judge_log_odds_sum_spellings_and_bound_a_missing_side():
    from camelid.rag.rerank import LlmJudge

    judge = LlmJudge.__new__(LlmJudge)  # the rule alone, without a model
    judge.yes, judge.no = {1, 2}, {3}
    top = [(1, math.log(0.5)), (2, math.log(0.1)), (3, math.log(0.2)), (9, math.log(0.05))]
    assert judge.log_odds([{"top": top}]) == pytest.approx(math.log(0.6 / 0.2))
    # "no" not among the alternatives: at most as likely as the least listed one
    assert judge.log_odds([{"top": top[:2] + top[3:]}]) == pytest.approx(math.log(0.6 / 0.05))
    assert judge.log_odds([]) == 0.0


def test_llm_reranker_orders_the_fused_best_by_the_models_yes(rag, corpus, tmp_path):
    """rag.reranker=llm: the answering model's log-odds of "yes" (the engine's own logprobs, equal to a plain
    forward pass over the same prompt) reorder the fused top rag.rerank_top; without a model it is refused."""
    import functools

    import torch
    from conftest import build_model_dir

    from camelid.config import EngineConfig
    from camelid.data.templates import prompt_ids
    from camelid.engine import Engine
    from camelid.rag.rerank import JUDGE_PROMPT, LlmJudge
    from camelid.rag.store import passage

    folder = build_model_dir(tmp_path / "judge", words=("yes", "no"))
    engine = Engine.load(str(folder), EngineConfig(block_size=4, kv_cache_tokens=8192, dtype="float32"))
    render = functools.partial(prompt_ids, engine.tokenizer)
    judge = LlmJudge(engine, render)
    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    q = "lighthouse keeper lamp oil"
    cfg = RagConfig(**{**rag.__dict__, "reranker": "llm", "rerank_top": 5, "min_similarity": -1.0, "top_k": 5})
    with pytest.raises(CamelidError, match="rag.reranker=llm reranks with the answering model"):
        search(kb, q, cfg)
    fused = search(kb, q, RagConfig(**{**cfg.__dict__, "reranker": ""}))
    hits = search(kb, q, cfg, judge=judge)
    assert {h.id for h in hits} == {h.id for h in fused}  # the same five, reordered
    assert [h.rerank for h in hits] == sorted((h.rerank for h in hits), reverse=True)
    for h in hits[:2]:
        text = JUDGE_PROMPT.format(question=q, passage=passage(h.chunk["heading"], h.chunk["text"]))
        ids = render([{"role": "user", "content": text}])
        with torch.no_grad():
            lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0, -1].float(), -1)
        values, top = torch.topk(lp, 20)
        listed = dict(zip(top.tolist(), values.tolist()))
        mass = [
            math.log(sum(math.exp(listed[i]) for i in side if i in listed)) if side & listed.keys() else min(values)
            for side in (judge.yes, judge.no)
        ]
        assert h.rerank == pytest.approx(float(mass[0] - mass[1]), abs=1e-3)


# ------------------------------------------------------------------ answering


@pytest.fixture(scope="module")
def engine(tiny_model):
    from camelid.config import EngineConfig
    from camelid.engine import Engine

    return Engine.load(str(tiny_model), EngineConfig(block_size=4, kv_cache_tokens=4096))


def test_answer_prompt_holds_the_chunks_and_the_reply_cites_them(rag, corpus, engine):
    from camelid.engine import SamplingParams
    from camelid.rag.answer import ask

    kb = make_kb(rag)
    kb.add([str(corpus)], rag, progress=False)
    params = SamplingParams(max_tokens=8, temperature=0)
    rag = RagConfig(**{**rag.__dict__, "min_similarity": -1.0})  # top_k sources
    out = ask(engine, kb, "When does the Harrow Point keeper buy lamp oil?", rag, params)
    assert len(out["citations"]) >= 2  # as many of top_k as the tiny model's 512-token context holds
    assert out["found"] and out["citations"][0]["source"] == "docs/lighthouse.md"
    assert PLANTED_EN in out["prompt"] and "[1] docs/lighthouse.md › Coast › Harrow Point, line 5" in out["prompt"]
    for c in out["citations"]:
        assert c["text"] in out["prompt"] and f"[{c['index']}] {c['label']}" in out["prompt"]
        assert c["cited"] == (f"[{c['index']}]" in out["answer"])
    # a smaller budget holds fewer sources, never a cut one; one too small for any source is an error
    from camelid.data.templates import prompt_ids
    from camelid.rag.prompt import user_turn

    def size(chunks):
        return len(prompt_ids(engine.tokenizer, [{"role": "user", "content": user_turn(q, chunks)}]))

    q = "When does the Harrow Point keeper buy lamp oil?"
    first = out["citations"][0]
    small = RagConfig(**{**rag.__dict__, "max_prompt_tokens": size([first])})
    fewer = ask(engine, kb, q, small, params)
    assert fewer["citations"][0]["text"] == first["text"] and len(fewer["citations"]) < len(out["citations"])
    assert fewer["prompt"] == user_turn(q, [first]) or len(fewer["citations"]) > 1
    with pytest.raises(CamelidError, match="prompt budget"):
        ask(engine, kb, q, RagConfig(**{**rag.__dict__, "max_prompt_tokens": size([]) + 2}), params)


def test_nothing_relevant_answers_not_found_without_generating(rag, engine):
    from camelid.engine import SamplingParams
    from camelid.rag.answer import ask

    kb = make_kb(rag, "empty")
    before = engine.stats().get("generated_tokens", 0)
    en = ask(engine, kb, "Who keeps the lighthouse?", rag, SamplingParams(max_tokens=8))
    zh = ask(engine, kb, "谁在看守灯塔？", rag, SamplingParams(max_tokens=8))
    assert not en["found"] and en["citations"] == [] and "could not find" in en["answer"]
    assert not zh["found"] and "没有找到" in zh["answer"]
    assert engine.stats().get("generated_tokens", 0) == before


# ------------------------------------------------------------------ CLI and config


def test_cli_add_ls_search_rm(rag, corpus, capsys):
    from camelid.cli import main

    o = [
        f"rag.root={rag.root}",
        f"rag.embedding_model={rag.embedding_model}",
        "rag.chunk_tokens=48",
        "rag.chunk_overlap=8",
    ]
    main(["kb", "add", "handbook", str(corpus), *o])
    assert "added 14" in capsys.readouterr().out
    main(["kb", "ls", *o])
    listed = capsys.readouterr().out
    assert listed.split()[:3] == ["handbook", "14", "documents"] and listed.split()[4] == "chunks"
    assert listed.strip().endswith(f"encoder {rag.embedding_model}")  # a folder: no catalog license to show
    main(["kb", "ls", "handbook", *o])
    assert capsys.readouterr().out.splitlines()[0] == f"encoder {rag.embedding_model}"
    main(["kb", "search", "handbook", "Harrow Point keeper lamp oil", "rag.retriever=bm25", *o])
    assert "docs/lighthouse.md › Coast › Harrow Point, line 5" in capsys.readouterr().out
    main(["kb", "rm", "handbook", "docs/sub", *o])
    assert capsys.readouterr().out.strip() == "removed docs/sub/panda.txt"
    with pytest.raises(SystemExit) as e:
        main(["kb", "rm", "handbook", "../../etc/passwd", *o])
    assert e.value.code == 1 and "outside" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kb", "add", "handbook", str(corpus), *o, "rag.chunk_overlap=30"])
    assert "rag.chunk_overlap" in capsys.readouterr().err


def test_an_existing_kb_keeps_its_encoder(rag, corpus, tmp_path):
    kb = make_kb(rag)
    assert json.loads((kb.folder / "kb.json").read_text())["embedding_model"] == rag.embedding_model
    with pytest.raises(CamelidError, match="built with encoder"):
        KnowledgeBase.open(kb.folder, create=RagConfig(**{**rag.__dict__, "embedding_model": str(tmp_path)}))
    # made before the default encoder changed: it opens with today's defaults and says which encoder it keeps
    old = KnowledgeBase.open(kb.folder, create=RagConfig(root=rag.root))
    assert RagConfig.embedding_model != rag.embedding_model and old.encoder_line() == f"encoder {rag.embedding_model}"
    assert not old.add([str(corpus)], RagConfig(root=rag.root), progress=False).failed  # in its own encoder's space
    assert search(old, "Harrow Point lamp", rag, retriever="dense")
    assert load_config(None, ["rag.top_k=3"]).rag.top_k == 3
    with sqlite3.connect(kb.folder / "kb.sqlite") as db:
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} >= {"docs", "chunks", "fts"}


# ------------------------------------------------------------------ HTTP API


def test_api_answers_from_a_knowledge_base(tiny_model, rag, corpus, tmp_path, capsys):
    from test_serve import KEYS, client, http, server

    make_kb(rag, "handbook").add([str(corpus)], rag, progress=False)
    # a random encoder finds every text alike (cosines near 1): only BM25's word evidence may vouch here
    o = [f"rag.root={rag.root}", "serve.kb=[handbook]", "rag.min_similarity=0.9999"]
    with server(tiny_model, tmp_path / "s.sqlite", *o) as (url, _):
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["tiny", "kb:handbook"]
        q = [{"role": "user", "content": "When does the Harrow Point keeper buy lamp oil?"}]
        r = c.chat.completions.create(model="kb:handbook", messages=q, max_tokens=8, temperature=0)
        cites = r.model_extra["citations"]
        assert cites[0]["source"] == "docs/lighthouse.md" and cites[0]["label"].endswith("line 5")
        assert r.model == "kb:handbook" and r.usage.prompt_tokens > 100  # the sources went into the prompt
        same = c.chat.completions.create(
            model="tiny", messages=q, max_tokens=8, temperature=0, extra_body={"kb": "handbook"}
        )
        assert same.choices[0].message.content == r.choices[0].message.content
        chunks = list(
            c.chat.completions.create(model="kb:handbook", messages=q, max_tokens=8, temperature=0, stream=True)
        )
        assert chunks[0].model_extra["citations"] == [{k: v for k, v in x.items() if k != "cited"} for x in cites]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == r.choices[0].message.content

        nothing = c.chat.completions.create(
            model="kb:handbook", messages=[{"role": "user", "content": "zzzz qqqq xxxx"}], max_tokens=8
        )
        assert nothing.model_extra["citations"] == [] and "could not find" in nothing.choices[0].message.content
        # streamed, the "not found" answer too carries its (empty) citations on the first chunk alone
        chunks = list(
            c.chat.completions.create(
                model="kb:handbook",
                messages=[{"role": "user", "content": "zzzz qqqq xxxx"}],
                max_tokens=8,
                n=2,
                stream=True,
            )
        )
        assert [ch.model_extra.get("citations") for ch in chunks] == [[], None]
        assert [ch.choices[0].delta.content for ch in chunks] == [nothing.choices[0].message.content] * 2

        status, body = http(url, "/v1/kb/handbook/ask", {"question": q[0]["content"], "max_tokens": 8})
        assert status == 200 and body["found"] and body["answer"] == r.choices[0].message.content.strip()
        assert body["citations"] == cites and body["usage"]["prompt_tokens"] == r.usage.prompt_tokens
        # `camelid kb ask` gives the same answer: the CLI and the endpoint answer through one function and sample
        # alike (neither with chat.repetition_penalty, which would also penalize the words of the sources)
        from camelid.cli import main

        main(
            [
                "kb",
                "ask",
                "handbook",
                q[0]["content"],
                f"model.name={tiny_model}",
                f"rag.root={rag.root}",
                "rag.min_similarity=0.9999",
                "rag.max_new_tokens=8",
                "engine.block_size=4",
                "engine.kv_cache_tokens=4096",
            ]
        )
        printed = capsys.readouterr().out
        assert printed.startswith(body["answer"] + "\n")
        assert [line.split("] ", 1)[1].lstrip("* ") for line in printed.splitlines()[-len(cites) :]] == [
            c["label"] for c in cites
        ]
        status, body = http(url, "/v1/kb/handbook/ask", {"question": "zzzz qqqq xxxx"})
        assert status == 200 and not body["found"] and body["citations"] == [] and "could not find" in body["answer"]
        status, body = http(url, "/v1/kb/handbook/ask", {"question": "x", "max_tokens": 100000})
        assert status == 400 and body["error"]["param"] == "max_tokens"
        status, body = http(url, "/v1/kb/handbook/search", {"query": "大熊猫 竹子", "retriever": "bm25"})
        assert status == 200 and body["data"][0]["source"] == "docs/sub/panda.txt"
        status, body = http(url, "/v1/kb", key=KEYS[1])
        assert body["data"][0]["documents"] == 14
        for path, code in [("/v1/kb/other/search", 404), ("/v1/kb/..%2F..%2Fetc/search", 404)]:
            status, body = http(url, path, {"query": "x"})
            assert status == code and "error" in body
        status, body = http(url, "/v1/chat/completions", {"model": "kb:other", "messages": q})
        assert status == 404 and body["error"]["param"] == "model"
        status, body = http(
            url,
            "/v1/chat/completions",
            {"model": "kb:handbook", "messages": q + [{"role": "assistant", "content": "hm"}]},
        )
        assert status == 400 and body["error"]["param"] == "messages"

        # a session keeps what the user said, not the sources the server added to the prompt
        sid = http(url, "/v1/sessions", {})[1]["id"]
        c.chat.completions.create(
            model="kb:handbook", messages=q, max_tokens=4, temperature=0, extra_body={"session_id": sid}
        )
        stored = http(url, f"/v1/sessions/{sid}")[1]["messages"]
        assert stored[0] == q[0] and stored[1]["role"] == "assistant"
