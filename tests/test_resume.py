"""A run killed with SIGKILL resumes from its last checkpoint and continues exactly where it stopped."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from camelid.train import sft
from camelid.train.loop import latest_checkpoint
from conftest import tiny_config

OVER = {"train.max_steps": 12, "train.save_every": 4, "train.keep_last": 2, "lora.dropout": 0.1,
        "train.scheduler": "cosine", "train.warmup_ratio": 0.2, "train.grad_accum": 2, "train.batch_size": 2,
        "data.packing": False}


def step_losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["lr"]) for r in rows if "loss" in r}


def test_kill9_then_resume_matches_uninterrupted_run(tiny_model, chat_file, tmp_path):
    whole = tiny_config(tiny_model, chat_file, tmp_path / "a", **OVER)
    sft.main(whole)
    expected = step_losses(tmp_path / "a" / "run")
    assert sorted(expected) == list(range(1, 13))

    # The same run in a child process that SIGKILLs itself in the middle of step 10 (after checkpoint-8).
    killed_dir = tmp_path / "b"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from conftest import tiny_config
        from camelid.train import sft
        from camelid.train.losses import lm_loss
        calls = 0
        def dying_loss(model, batch):
            global calls
            calls += 1
            if calls == 2 * 9 + 2:  # second micro-batch of step 10 (grad_accum=2)
                os.kill(os.getpid(), signal.SIGKILL)
            return lm_loss(model, batch)
        cfg = tiny_config({str(tiny_model)!r}, {str(chat_file)!r}, __import__('pathlib').Path({str(killed_dir)!r}), **{OVER!r})
        sft.main(cfg, loss_fn=dying_loss)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = killed_dir / "run"
    assert not (run_dir / "final").exists()
    assert latest_checkpoint(run_dir).name == "checkpoint-8"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]

    resumed = tiny_config(tiny_model, chat_file, killed_dir, **OVER)
    sft.main(resumed)
    got = step_losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == expected[step], (step, got[step], expected[step])


def test_resume_false_starts_over(tiny_model, chat_file, tmp_path):
    cfg = tiny_config(tiny_model, chat_file, tmp_path, **{"train.max_steps": 4, "train.save_every": 2})
    sft.main(cfg)
    cfg2 = tiny_config(tiny_model, chat_file, tmp_path, **{"train.max_steps": 4, "train.resume": False})
    (tmp_path / "run" / "metrics.jsonl").unlink()
    sft.main(cfg2)
    assert sorted(step_losses(tmp_path / "run")) == [1, 2, 3, 4]
