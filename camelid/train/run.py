"""The run folder every training stage writes: resolved config, data provenance, metrics, weights.

    runs/<name>/
      config.yaml        the fully resolved config
      data.json          sources with file paths, sha256 and record counts
      metrics.jsonl      one line per logged step (+ eval lines)
      tensorboard/       the same metrics for TensorBoard
      checkpoint-<n>/    resumable state (see loop.py)
      final/             HF-native weights or peft adapter, tokenizer and chat template
      summary.json       what the run ended with
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from camelid.config import save_config
from camelid.train.loop import _SHARDED, make_accelerator
from camelid.utils import setup_logging, write_json


def start(cfg, stage: str):
    """Create the run folder and the accelerator; only the main process writes files."""
    setup_logging()
    acc = make_accelerator(cfg.train)
    run_dir = Path(cfg.train.output_dir)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    return run_dir, acc


def record_data(run_dir: Path, prepared, acc) -> None:
    if acc.is_main_process:
        write_json(run_dir / "data.json", {
            "kind": prepared.kind, "sources": prepared.sources, "dropped_after_tokenizing": prepared.dropped,
            "train_units": len(prepared.train), "eval_units": len(prepared.eval),
        })


def finish(run_dir: Path, acc, model, tokenizer, cfg, metrics: dict, started: float) -> Path:
    from camelid.model import save_trained

    acc.wait_for_everyone()
    final = run_dir / "final"
    unwrapped = acc.unwrap_model(model)
    # Under ZeRO-3 / FSDP each rank holds a shard: gathering is collective, so every rank calls it.
    state_dict = acc.get_state_dict(model) if acc.distributed_type in _SHARDED else None
    if acc.is_main_process:
        save_trained(unwrapped, tokenizer, final, cfg, state_dict)
        write_json(run_dir / "summary.json", metrics | {"seconds": round(time.time() - started, 1), "final": str(final)})
    acc.wait_for_everyone()
    # Tear the process group down before the interpreter does: left to exit, gloo's threads were seen to abort a
    # rank ("terminate called without an active exception") after a run had finished and saved.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return final
