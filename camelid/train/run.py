"""The run folder every training stage writes: resolved config, data provenance, metrics, weights.

    runs/<name>/
      config.yaml          the fully resolved config: the sections the stage reads (config.SECTIONS)
      config_history.yaml  what changed each time the run was continued with a different config (if ever)
      data.json            sources with file paths, sha256 and record counts
      metrics.jsonl        one line per logged step (+ eval lines)
      tensorboard/         the same metrics for TensorBoard
      checkpoint-<n>/      resumable state (see loop.py)
      final/               HF-native weights or peft adapter, tokenizer and chat template
      summary.json         what the run ended with
      status.json          running (pid) / finished / failed (error) / stopped: read by the web UI (rundir.py)

Inputs are checked before anything is created: every data source and model named in the config must exist (or be
a catalog name, or a reachable / cached Hugging Face id), so a typo fails in a moment and leaves no folder behind.

Continuing a run (`train.resume`, default true) compares the config with the folder's config.yaml. Keys that
change what the checkpoints were trained on (RESUME_LOCKED: learning rate, schedule, batch, data, method and its
options, ...) refuse to resume and list old → new; keys that only extend or watch the run (RESUME_FREE: max_steps,
eval/save cadence, logging, ...) are accepted. `train.resume=force` accepts any change; `train.resume=false` starts
over in a new folder beside this one. Every accepted change is appended to config_history.yaml, so the folder keeps
saying what trained its checkpoints. A data file whose content changed since data.json recorded it counts as a
change to the data.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from camelid import hub
from camelid.config import Config, save_config
from camelid.data.loader import Prepared
from camelid.rundir import read_status, write_status
from camelid.train.loop import _SHARDED, latest_checkpoint, make_accelerator
from camelid.train.resume_rules import config_changes
from camelid.utils import CamelidError, log, setup_logging, sha256_file, write_json

HISTORY = "config_history.yaml"


def check_inputs(cfg: Config, stage: str) -> None:
    """Every data source and model the stage will read exists (or can be fetched), checked in well under a second
    before any folder is created or weights load; the error names the missing one and the closest valid names."""
    for spec in cfg.data.train + cfg.data.eval + (cfg.ppo.ptx_data if stage == "ppo" and cfg.ppo.ptx_coef else []):
        hub.check_data_source(spec)
    hub.resolve_model(cfg.model.name, pull_catalog=False)
    if stage == "ppo" and cfg.ppo.reward_model:
        hub.resolve_model(cfg.ppo.reward_model, pull_catalog=False)


def failed(cfg: Config, error: BaseException) -> None:
    """Mark the run failed (or stopped, on Ctrl-C) in status.json, if this process is the one that started it."""
    run_dir = Path(cfg.train.output_dir)
    status = read_status(run_dir)
    if status.get("state") != "running" or status.get("pid") != os.getpid():
        return
    if isinstance(error, KeyboardInterrupt):
        write_status(run_dir, "stopped", error="interrupted")
    else:
        write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}"[:2000])


def start(cfg: Config, stage: str) -> tuple[Path, Accelerator]:
    """Check the inputs, decide how the run continues (see the module docstring), then create the run folder and the
    accelerator; only the main process writes files."""
    setup_logging()
    check_inputs(cfg, stage)
    acc = make_accelerator(cfg.train)
    run_dir = Path(cfg.train.output_dir)
    # Every rank decides from the folder as it is now; only then does the main process change it.
    history = plan_resume(cfg, stage, run_dir)
    run_dir = Path(cfg.train.output_dir)  # resume=false may have moved the run to a new folder
    acc.wait_for_everyone()
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if latest_checkpoint(run_dir) is None:
            # Starting at step 0 in a folder a run already wrote to: its metrics would be read as this run's.
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        if history is not None:
            old = yaml.safe_load((run_dir / HISTORY).read_text()) if (run_dir / HISTORY).is_file() else []
            (run_dir / HISTORY).write_text(yaml.safe_dump((old or []) + [history], sort_keys=False, allow_unicode=True))
        save_config(cfg, run_dir / "config.yaml", stage)  # only the sections this stage reads
        write_status(run_dir, "running", stage=stage)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.train.seed)
    return run_dir, acc


def data_changes(run_dir: Path) -> dict[str, dict]:
    """Data files whose content differs from what the folder's data.json recorded: {path: {old, new}} (sha256)."""
    f = run_dir / "data.json"
    if not f.is_file():
        return {}
    out = {}
    for source in json.loads(f.read_text()).get("sources", []):
        for rec in source.get("files", []):
            path = Path(rec["path"])
            now = sha256_file(path) if path.is_file() else "missing"
            if now != rec.get("sha256"):
                out[f"data file {path} (sha256)"] = {"old": rec.get("sha256"), "new": now, "kind": "locked"}
    return out


def _holds_run(run_dir: Path) -> bool:
    """Whether a run trained anything in `run_dir` (a checkpoint or final weights), so that it can be continued or
    would be overwritten."""
    return latest_checkpoint(run_dir) is not None or (run_dir / "final").is_dir()


def _fmt(v) -> str:
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12] + "…"  # a sha256: enough to tell them apart
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict, str)) else str(v)


def plan_resume(cfg: Config, stage: str, run_dir: Path) -> dict | None:
    """Refuse, move or accept; returns the config_history.yaml entry to append (None when nothing changed)."""
    if not _holds_run(run_dir):
        return None  # nothing trained here yet: this run starts the folder over
    if cfg.train.resume is False:
        n = 2
        while Path(f"{run_dir}-{n}").exists():
            n += 1
        cfg.train.output_dir = f"{run_dir}-{n}"
        log.warning(
            f"train.resume=false: {run_dir} holds an earlier run, left as it is; "
            f"this run starts over in {cfg.train.output_dir}"
        )
        return None
    if not (run_dir / "config.yaml").is_file():
        log.warning(f"{run_dir} has no config.yaml to compare this config with; continuing as asked")
        return None
    old = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    changes = config_changes(old, cfg, stage) | data_changes(run_dir)
    locked = {k: c for k, c in changes.items() if c["kind"] == "locked"}
    ckpt = latest_checkpoint(run_dir)
    where = ckpt.name if ckpt is not None else "final/"
    if locked and cfg.train.resume != "force":
        lines = "\n".join(f"  {k}: {_fmt(c['old'])} → {_fmt(c['new'])}" for k, c in locked.items())
        raise CamelidError(
            f"{run_dir} holds a run ({where}) trained with a different config; continuing it would mix two trainings:\n"
            f"{lines}\nEither start over: train.resume=false (a new folder beside this one; this one is kept), or "
            f"accept the change: train.resume=force (recorded in {run_dir / HISTORY})"
        )
    if ckpt is None:
        log.warning(
            f"{run_dir} holds a finished run and no checkpoint to continue from: training again from step 0 "
            "(final/ is replaced)"
        )
    if not changes:
        return None
    for k, c in changes.items():
        log.info(
            f"config change on resume: {k}: {_fmt(c['old'])} → {_fmt(c['new'])}"
            + (" (forced)" if c["kind"] == "locked" else "")
        )
    step = json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else 0
    return {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "stage": stage,
        "resumed_at_step": step,
        "resume": cfg.train.resume,
        "changes": {k: {"old": c["old"], "new": c["new"], "kind": c["kind"]} for k, c in changes.items()},
    }


def record_data(run_dir: Path, prepared: Prepared, acc: Accelerator) -> None:
    if acc.is_main_process:
        write_json(
            run_dir / "data.json",
            {
                "kind": prepared.kind,
                "sources": prepared.sources,
                "dropped_after_tokenizing": prepared.dropped,
                "train_units": len(prepared.train),
                "eval_units": len(prepared.eval),
            },
        )


def finish(
    run_dir: Path,
    acc: Accelerator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Config,
    metrics: dict,
    started: float,
) -> Path:
    from camelid.model import save_trained

    acc.wait_for_everyone()
    final = run_dir / "final"
    unwrapped = acc.unwrap_model(model)
    # Under ZeRO-3 / FSDP each rank holds a shard: gathering is collective, so every rank calls it.
    state_dict = acc.get_state_dict(model) if acc.distributed_type in _SHARDED else None
    if acc.is_main_process:
        save_trained(unwrapped, tokenizer, final, cfg, state_dict)
        write_json(
            run_dir / "summary.json", metrics | {"seconds": round(time.time() - started, 1), "final": str(final)}
        )
        write_status(run_dir, "finished")
    acc.wait_for_everyone()
    # Tear the process group down before the interpreter does: left to exit, gloo's threads were seen to abort a
    # rank ("terminate called without an active exception") after a run had finished and saved.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return final
