"""Continued pretraining on raw text: the domain corpus, optionally embeddings-only first.

Features: text from .txt / .jsonl / LLaMA-Factory folders / catalog corpora, tokenized once and
cached, joined with EOS and cut into blocks of `data.max_length`; any method (`embedding` trains
only embeddings and head, the usual first phase after extending the vocabulary with `camelid tok extend`;
`embedding.new_rows_only` only the added rows); resume; eval loss and perplexity on held-out blocks.

    camelid pt configs/pt_lora.yaml data.train=[c4_demo] train.max_steps=100
"""

from __future__ import annotations

import time

from camelid.config import Config, validate
from camelid.data.loader import collate, prepare_pt
from camelid.hub import camelid_home
from camelid.model import load_model, load_tokenizer
from camelid.train import run
from camelid.train.loop import fit
from camelid.train.losses import lm_loss


def main(cfg: Config, loss_fn=lm_loss) -> dict:
    validate(cfg, "pt")
    started = time.time()
    run_dir, acc = run.start(cfg, "pt")

    tokenizer = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    with acc.main_process_first():
        data = prepare_pt(tokenizer, cfg.data, cfg.train.seed, camelid_home() / "tokenized")
    run.record_data(run_dir, data, acc)

    model = load_model(cfg)

    def collate_fn(units):
        return collate(units, tokenizer.pad_token_id)

    model, metrics = fit(model, loss_fn, data.train, data.eval, collate_fn, cfg.train, run_dir, acc)
    run.finish(run_dir, acc, model, tokenizer, cfg, metrics, started)
    return metrics
