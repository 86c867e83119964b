"""Reward model: the base's decoder with a scalar head, trained to rank the chosen answer above the rejected one.

Features: preference pairs (prompt or multi-turn context, chosen, rejected) from LLaMA-Factory's dpo_* sets,
`{prompt, chosen, rejected}` JSONL, OpenAI-messages or ShareGPT pairs; each side rendered with the model's chat
template; the reward is read at the last non-pad token; pairwise ranking loss (InstructGPT eq. 1, optional Llama 2
margin); any of full / freeze / lora / qlora; pairwise accuracy and margin on held-out pairs at every eval; resume.

The result is a standard transformers `...ForSequenceClassification` (one label) — a LoRA run is a peft adapter over
it, which `camelid export` merges into one. `camelid eval RUN eval.preference=[...]` scores it, and `camelid ppo`
takes it as `ppo.reward_model`.

    camelid rm configs/rm_lora.yaml
"""

from __future__ import annotations

import time

from camelid.config import Config, validate
from camelid.data.loader import collate_pairs, prepare_preference
from camelid.model import load_model, load_tokenizer
from camelid.train import run
from camelid.train.loop import fit
from camelid.train.losses import pairwise_reward_loss


def reward_loss(margin: float = 0.0):
    """`batch → loss` over a batch of [chosen rows; rejected rows] (see `collate_pairs`)."""

    def loss_fn(model, batch: dict):
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        chosen, rejected = rewards.chunk(2)
        loss = pairwise_reward_loss(chosen, rejected, margin)
        return loss, {
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean().detach(),
            "reward_chosen": chosen.mean().detach(),
            "reward_rejected": rejected.mean().detach(),
            "n_pairs": len(chosen),
        }

    return loss_fn


def main(cfg: Config, loss_fn=None) -> dict:
    validate(cfg, "rm")
    started = time.time()
    run_dir, acc = run.start(cfg, "rm")

    tokenizer = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    with acc.main_process_first():
        data = prepare_preference(tokenizer, cfg.data, cfg.train.seed)
    run.record_data(run_dir, data, acc)

    model = load_model(cfg, reward=True, pad_token_id=tokenizer.pad_token_id)

    def collate_fn(pairs):
        return collate_pairs(pairs, tokenizer.pad_token_id)

    model, metrics = fit(
        model, loss_fn or reward_loss(cfg.rm.margin), data.train, data.eval, collate_fn, cfg.train, run_dir, acc
    )
    run.finish(run_dir, acc, model, tokenizer, cfg, metrics, started)
    return metrics
