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
    chat = [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."}]
    assert render(ours, chat).input_ids == stock.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert render(ours, chat).labels == render(stock, chat).labels


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_short_real_sft_learns_and_exports(smollm2, method, tmp_path):
    from transformers import AutoModelForCausalLM

    from camelid.config import load_config
    from camelid.model import load_for_inference, merge_adapter
    from camelid.serve.chat import answers
    from camelid.serve.engine import Engine
    from camelid.serve.sampling import SamplingParams
    from camelid.train import sft

    run = tmp_path / "run"
    cfg = load_config(None, [
        "model.name=smollm2-135m-instruct", f"method={method}", "data.train=[alpaca_zh_demo]",
        "data.eval=[alpaca_zh_demo]", "data.max_samples=16", "data.max_length=256", "train.batch_size=2",
        "train.max_steps=6", "train.lr=2e-3", "train.scheduler=constant", "train.warmup_ratio=0", f"train.output_dir={run}", "lora.dropout=0",
        "train.tensorboard=false",
    ])
    sft.main(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] - 0.05, evals  # it learned the (seen) examples
    out = merge_adapter(run, tmp_path / "merged")
    model, tok = load_for_inference(out)
    assert isinstance(model, type(AutoModelForCausalLM.from_pretrained(smollm2)))
    [answer] = answers(Engine(model, tok), [[{"role": "user", "content": "What is the capital of France?"}]],
                       SamplingParams(max_tokens=12, temperature=0))
    assert answer


def test_engine_batched_greedy_equals_generate_on_smollm2(smollm2):
    """Continuous batching with chunked prefill and the prefix cache, on the real model in float32, gives
    `generate`'s greedy tokens for concurrent zh/en chats of different lengths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid.config import EngineConfig
    from camelid.data.templates import prompt_ids
    from camelid.serve.engine import Engine
    from camelid.serve.sampling import SamplingParams

    tok = AutoTokenizer.from_pretrained(smollm2)
    chats = [[{"role": "user", "content": q}] for q in
             ("What is the capital of France?", "用一句话介绍长城。", "List three colours.",
              "Explain in two sentences why the sky is blue, and then say which season has the longest days.")]
    prompts = [prompt_ids(tok, c) for c in chats]
    engine = Engine(AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32), tok,
                    EngineConfig(dtype="float32", max_batch_tokens=64))
    outs = engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0))
    ref = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for p, out in zip(prompts, outs):
        with torch.no_grad():
            g = ref.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, eos_token_id=sorted(engine.eos),
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        ends = [i for i, t in enumerate(g) if t in engine.eos]
        assert out.token_ids == g[:ends[0] if ends else len(g)]
    assert engine.counters["prompt_tokens_cached"] > 0  # the template's default system prompt was shared


def test_reward_model_then_ppo_on_smollm2(smollm2, tmp_path):
    """rm (LoRA) on LLaMA-Factory's English preference pairs, then a few PPO updates against it (shared-base LoRA)."""
    from camelid.config import load_config
    from camelid.train import ppo, rm

    common = [f"model.name={smollm2}", "method=lora", "lora.r=8", "train.tensorboard=false", "data.max_length=384",
              "data.truncation=drop"]
    rm_metrics = rm.main(load_config(None, common + [
        "data.train=[dpo_en_demo,dpo_zh_demo]", "data.max_samples=40", "data.eval_split=0.2", "train.batch_size=2",
        "train.max_steps=12", "train.lr=3e-4", f"train.output_dir={tmp_path / 'rm'}"]))
    assert 0 <= rm_metrics["eval_accuracy"] <= 1
    summary = ppo.main(load_config(None, common + [
        "data.train=[alpaca_en_demo]", "data.max_samples=16", f"ppo.reward_model={tmp_path / 'rm'}",
        "ppo.rollout_batch=4", "ppo.mini_batch=2", "ppo.ppo_epochs=1", "ppo.max_new_tokens=24", "train.max_steps=3",
        "train.lr=1e-4", f"train.output_dir={tmp_path / 'ppo'}"]))
    lines = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(abs(m["kl"]) < 5 and 0 < m["response_length"] <= 24 for m in lines)
    assert summary["step"] == 3 and (tmp_path / "ppo" / "final" / "adapter_config.json").exists()
