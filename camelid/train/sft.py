"""Supervised fine-tuning on chats, loss on the assistant's tokens only.

Features: single- and multi-turn chats from alpaca / sharegpt / OpenAI / LLaMA-Factory folders;
the model's own chat template renders each chat and its loss mask (every assistant turn, with its
end-of-turn token); padding-free packing (examples share rows but never attend to each other);
any method (full, freeze, lora, qlora, ptuning, embedding); resume; eval loss and perplexity.

    camelid sft configs/sft_lora.yaml train.lr=1e-4 lora.r=16
    accelerate launch -m camelid sft configs/sft_lora.yaml      # many GPUs, same code

Power users call `main(cfg, loss_fn=...)` with their own `batch → loss`.
"""

from __future__ import annotations

import time

from camelid.config import Config, validate
from camelid.data.loader import collate, prepare_sft
from camelid.model import load_model, load_tokenizer
from camelid.train import run
from camelid.train.loop import fit
from camelid.train.losses import lm_loss


def main(cfg: Config, loss_fn=lm_loss) -> dict:
    validate(cfg, "sft")
    started = time.time()
    run_dir, acc = run.start(cfg, "sft")

    tokenizer = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    with acc.main_process_first():
        data = prepare_sft(tokenizer, cfg.data, cfg.train.seed)
    run.record_data(run_dir, data, acc)

    model = load_model(cfg)

    def collate_fn(units):
        return collate(units, tokenizer.pad_token_id)

    model, metrics = fit(model, loss_fn, data.train, data.eval, collate_fn, cfg.train, run_dir, acc)
    run.finish(run_dir, acc, model, tokenizer, cfg, metrics, started)
    return metrics
