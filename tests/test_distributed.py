"""The same sft stage under `accelerate launch` with DeepSpeed ZeRO-3 on two CPU processes, as a recipe stage."""

import json
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("deepspeed")
# One launch is ~50 s on 2 idle cores; a busy shared host can take several times that. scripts/setup.sh compiles
# DeepSpeed's CPU op beforehand, so no compiler runs inside this window.
TIMEOUT = 600


def test_zero3_two_processes_train_save_and_resume(tiny_model, chat_file, tmp_path):
    # Launched as a recipe stage (`launch: zero3`), which is how `camelid run` starts a stage on many devices; the
    # command it runs is `accelerate launch --config_file configs/accelerate/zero3.yaml -m camelid sft ...`.
    run = tmp_path / "out" / "sft"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_BUILD_OPS": "0"}
    keys = {
        "model.name": str(tiny_model),
        "data.train": [str(chat_file)],
        "train.batch_size": 2,
        "data.max_length": 64,
        "method": "lora",
        "train.lr": 1e-2,
        "train.tensorboard": False,
        "train.save_every": 2,
        "train.warmup_ratio": 0,
        "train.max_steps": 4,
    }
    recipe = {"folder": "out", "stages": {"sft": {"verb": "sft", "launch": "zero3", "set": keys}}}
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    args = [sys.executable, "-m", "camelid", "run", "zero3.yaml"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "accelerate.commands.launch --config_file" in first.stdout and "zero3.yaml -m camelid sft" in first.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (run / "checkpoint-2" / "accelerate").is_dir()

    # The gathered adapter is complete: LoRA B matrices start at zero and must have moved.
    from safetensors.torch import load_file

    adapter = load_file(str(run / "final" / "adapter_model.safetensors"))
    b = [t for k, t in adapter.items() if "lora_B" in k]
    assert b and all(t.numel() > 0 for t in b) and any(t.abs().sum() > 0 for t in b)

    # A longer schedule only extends the run: the stage resumes from the sharded checkpoint-2 and runs steps 3..6.
    second = subprocess.run(
        args + ["sft.train.max_steps=6", "sft.train.keep_last=5"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sft          sft        resume" in second.stdout and "resumed from" in second.stderr
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert steps == [1, 2, 3, 4, 5, 6]
