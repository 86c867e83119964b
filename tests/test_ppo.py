"""PPO end to end on the tiny model: the toy reward rises while the KL penalty holds the policy near the reference;
the shared layout trains both adapters and the value head and never the base; resume continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from camelid.train import ppo


def cjk_share(prompts, answers):
    """Toy reward: the share of an answer's characters that are Chinese (about a sixth, for the untrained model)."""
    return [sum("\u4e00" <= c <= "\u9fff" for c in a) / max(1, len(a)) for a in answers]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ppo") / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(32):
            f.write(json.dumps({"instruction": f"Say something about the number {i}.", "output": "ignored"}) + "\n")
    return path


def ppo_config(model, prompts, out: Path, **over):
    base = {
        "method": "lora",
        "lora.target": ["q_proj", "v_proj", "lm_head"],
        "train.lr": 1e-2,
        "train.max_steps": 4,
        "ppo.rollout_batch": 16,
        "ppo.mini_batch": 8,
        "ppo.ppo_epochs": 2,
        "ppo.max_new_tokens": 16,
        "ppo.kl_coef": 0.05,
        "data.max_length": 64,
        "train.output_dir": str(out),
    }
    return tiny_config(model, prompts, out, **(base | over))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_toy_reward_rises_and_the_kl_penalty_bounds_the_drift(tiny_model, prompt_file, tmp_path):
    runs = {}
    for kl_coef in (0.02, 0.5):
        out = tmp_path / f"kl{kl_coef}"
        ppo.main(
            ppo_config(tiny_model, prompt_file, out, **{"train.max_steps": 20, "ppo.kl_coef": kl_coef}),
            reward_fn=cjk_share,
        )
        runs[kl_coef] = metrics(out)
    loose = runs[0.02]
    first, last = [sum(m["score"] for m in ms) / len(ms) for ms in (loose[:3], loose[-5:])]
    assert last > first + 0.2, (first, last)
    # A 25x stronger penalty keeps the policy much closer to the reference, and the reward lower.
    kl = {c: sum(m["kl"] for m in ms[-5:]) / 5 for c, ms in runs.items()}
    assert kl[0.5] < kl[0.02] / 2, kl
    assert kl[0.5] < 5, kl
    for m in loose:
        assert {"score", "kl", "kl_coef", "entropy", "clipfrac", "vf_loss", "response_length", "approx_kl"} <= set(m)
    # final/ is the actor alone: a LoRA folder without the critic, loadable like any sft run
    final = tmp_path / "kl0.02" / "final"
    assert (final / "adapter_config.json").exists() and not (final / "critic").exists()
    from camelid.model import load_for_inference

    model, _ = load_for_inference(final)
    assert model is not None


def test_shared_layout_trains_adapters_and_value_head_but_not_the_base(tiny_model, prompt_file, tmp_path):
    import dataclasses

    from transformers import AutoModelForCausalLM

    from camelid.engine import Engine
    from camelid.model import load_tokenizer

    cfg = ppo_config(tiny_model, prompt_file, tmp_path / "run", **{"lora.target": ["all-linear"]})
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    ac = ppo.ActorCritic(cfg, "cpu")
    before = {n: p.detach().clone() for n, p in ac.trainable().named_parameters()}
    engine = Engine(ac.policy, tok, dataclasses.replace(cfg.engine, prefix_cache=False, kv_cache_tokens=4096))
    prompts = ppo.load_prompts(tok, cfg)[:16]
    batch, _ = ppo.rollout(ac, engine, cjk_share, prompts, cfg, 0, 0.05, "cpu")
    opt = torch.optim.AdamW(ac.actor_params + ac.critic_params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ppo.ppo_update(ac, batch, cfg, opt, sched, None, 0)

    changed = {n for n, p in ac.trainable().named_parameters() if not torch.equal(p, before[n])}
    base = {n for n in before if "lora_" not in n and not n.startswith("value_head")}
    assert not changed & base, sorted(changed & base)[:5]
    assert any(".default." in n for n in changed) and any(".critic." in n for n in changed)
    assert {"value_head.weight", "value_head.bias"} <= changed

    # The reference is the untouched base: its log-probs equal a fresh copy's.
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        ref = ac.logps(batch, reference=True)
        ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
        want = fresh(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, batch["prompt_width"] - 1 : -1]
        want = torch.log_softmax(want.float() / batch["temperature"], -1).gather(-1, batch["answer_ids"][..., None])
        actor = ac.logps(batch)
    torch.testing.assert_close(ref, want[..., 0], atol=1e-5, rtol=1e-5)
    assert (actor - ref).abs().max() > 1e-3  # ... while the actor has moved


def test_separate_layout_with_full_tuning_keeps_the_reference_frozen(tiny_model, prompt_file, tmp_path):
    out = tmp_path / "full"
    cfg = ppo_config(
        tiny_model,
        prompt_file,
        out,
        **{"method": "full", "ppo.layout": "separate", "train.lr": 3e-4, "train.max_steps": 2},
    )
    ppo.main(cfg, reward_fn=cjk_share)
    assert len(metrics(out)) == 2
    saved = load_file(str(out / "final" / "model.safetensors"))
    base = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert any(not torch.equal(saved[k], base[k]) for k in base)  # the actor was trained and saved whole


def test_resume_continues_exactly_where_the_run_stopped(tiny_model, prompt_file, tmp_path):
    whole = tmp_path / "whole"
    ppo.main(
        ppo_config(tiny_model, prompt_file, whole, **{"ppo.adaptive_kl": True, "ppo.kl_horizon": 100}),
        reward_fn=cjk_share,
    )

    calls = {"n": 0}

    def dies_in_step_3(prompts, answers):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during step 3's rollout
        return cjk_share(prompts, answers)

    parts = tmp_path / "parts"
    cfg = ppo_config(
        tiny_model, prompt_file, parts, **{"ppo.adaptive_kl": True, "ppo.kl_horizon": 100, "train.save_every": 2}
    )
    with pytest.raises(KeyboardInterrupt):
        ppo.main(cfg, reward_fn=dies_in_step_3)
    assert (parts / "checkpoint-2").is_dir()
    ppo.main(cfg, reward_fn=cjk_share)
    a, b = metrics(whole), metrics(parts)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in ("score", "kl", "kl_coef", "pg_loss", "vf_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)


def test_ptx_mixes_a_language_model_loss_on_other_text(tiny_model, prompt_file, text_file, tmp_path):
    out = tmp_path / "ptx"
    cfg = ppo_config(
        tiny_model,
        prompt_file,
        out,
        **{"train.max_steps": 2, "ppo.ptx_coef": 0.5, "ppo.ptx_data": [str(text_file)], "ppo.ptx_batch": 2},
    )
    ppo.main(cfg, reward_fn=cjk_share)
    ms = metrics(out)
    assert all(0 < m["ptx_loss"] < 20 for m in ms)


def test_ppo_against_a_trained_reward_model_run(tiny_model, prompt_file, tmp_path):
    from camelid.train import rm

    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as f:
        for i in range(16):
            f.write(
                json.dumps(
                    {"prompt": f"Question {i}?", "chosen": "北京是中国的首都。", "rejected": "Paris."},
                    ensure_ascii=False,
                )
                + "\n"
            )
    rm.main(
        tiny_config(
            tiny_model,
            pairs,
            tmp_path,
            **{"train.output_dir": str(tmp_path / "rm"), "train.max_steps": 6, "train.lr": 3e-3},
        )
    )
    out = tmp_path / "ppo"
    ppo.main(
        ppo_config(tiny_model, prompt_file, out, **{"ppo.reward_model": str(tmp_path / "rm"), "train.max_steps": 2})
    )
    ms = metrics(out)
    assert len(ms) == 2 and all(abs(m["score"]) < 100 for m in ms)


def test_adaptive_kl_coefficient_follows_the_target():
    from camelid.config import PpoConfig

    cfg = PpoConfig(adaptive_kl=True, target_kl=6.0, kl_horizon=100, rollout_batch=10)
    assert ppo.adapt_kl(0.1, 12.0, cfg) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    assert ppo.adapt_kl(0.1, 5.4, cfg) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    assert ppo.adapt_kl(0.1, 12.0, PpoConfig(adaptive_kl=False)) == 0.1


def test_ppo_config_errors_come_before_any_weights_load(tiny_model, prompt_file, tmp_path):
    from camelid.config import ConfigError

    with pytest.raises(ConfigError, match="layout=shared needs method lora"):
        ppo.main(ppo_config(tiny_model, prompt_file, tmp_path, **{"method": "full"}), reward_fn=cjk_share)
    with pytest.raises(ConfigError, match="multiple of ppo.mini_batch"):
        ppo.main(ppo_config(tiny_model, prompt_file, tmp_path, **{"ppo.mini_batch": 5}), reward_fn=cjk_share)
    with pytest.raises(Exception, match="ppo.reward_model is required"):
        ppo.main(ppo_config(tiny_model, prompt_file, tmp_path))
