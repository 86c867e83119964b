"""A run killed with SIGKILL resumes from its last checkpoint and continues exactly where it stopped; a run continued
with a config that changes what trained its checkpoints is refused (or, forced, recorded)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from conftest import tiny_config

from camelid.config import load_config
from camelid.train import sft
from camelid.train.loop import latest_checkpoint
from camelid.utils import CamelidError

OVER = {
    "train.max_steps": 12,
    "train.save_every": 4,
    "train.keep_last": 2,
    "lora.dropout": 0.1,
    "train.scheduler": "cosine",
    "train.warmup_ratio": 0.2,
    "train.grad_accum": 2,
    "train.batch_size": 2,
    "data.packing": False,
}


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


def short(tiny_model, chat_file, tmp_path, **over):
    """4 steps with a checkpoint at step 2 (the last step is saved as final/ only)."""
    return tiny_config(tiny_model, chat_file, tmp_path, **{"train.max_steps": 4, "train.save_every": 2, **over})


def history(run_dir):
    return yaml.safe_load((run_dir / "config_history.yaml").read_text())


def test_resume_refuses_a_config_that_changes_training_and_says_how_out(tiny_model, chat_file, tmp_path):
    sft.main(short(tiny_model, chat_file, tmp_path))
    run = tmp_path / "run"
    saved = {f: (run / f).read_bytes() for f in ("config.yaml", "data.json", "metrics.jsonl")}
    for over, change in (
        ({"train.lr": 1e-3}, "train.lr: 0.01 → 0.001"),
        ({"data.max_length": 48}, "data.max_length: 64 → 48"),
        ({"lora.r": 16}, "lora.r: 8 → 16"),  # which also ended in a tensor size RuntimeError
        ({"train.max_steps": 6, "train.scheduler": "cosine"}, 'train.scheduler: "constant" → "cosine"'),
    ):
        started = time.perf_counter()
        with pytest.raises(CamelidError) as e:
            sft.main(short(tiny_model, chat_file, tmp_path, **over))
        msg = str(e.value)
        assert change in msg and "checkpoint-2" in msg, msg
        assert "train.resume=false" in msg and "train.resume=force" in msg
        assert "max_steps" not in msg  # extending the run is not what is refused
        assert time.perf_counter() - started < 1.0  # before any weights load
    assert {f: (run / f).read_bytes() for f in saved} == saved  # the folder still says what trained it
    assert not (run / "config_history.yaml").exists()


def test_extending_the_run_is_allowed_and_recorded(tiny_model, chat_file, tmp_path):
    sft.main(short(tiny_model, chat_file, tmp_path))
    run = tmp_path / "run"
    sft.main(short(tiny_model, chat_file, tmp_path, **{"train.max_steps": 6, "train.log_every": 2, "eval.limit": 5}))
    assert sorted(step_losses(run)) == [1, 2, 4, 6]  # steps 3, 4 run again from checkpoint-2, logged every 2
    (entry,) = history(run)
    assert entry["resumed_at_step"] == 2 and entry["stage"] == "sft" and entry["resume"] is True
    assert entry["changes"] == {
        "train.max_steps": {"old": 4, "new": 6, "kind": "free"},
        "train.log_every": {"old": 1, "new": 2, "kind": "free"},
        "eval.limit": {"old": 0, "new": 5, "kind": "unrelated"},
    }
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 6


def test_resume_force_accepts_a_change_and_records_it(tiny_model, chat_file, tmp_path):
    sft.main(short(tiny_model, chat_file, tmp_path))
    run = tmp_path / "run"
    sft.main(short(tiny_model, chat_file, tmp_path, **{"train.lr": 1e-3, "train.resume": "force"}))
    (entry,) = history(run)
    assert entry["resume"] == "force" and entry["changes"] == {
        "train.lr": {"old": 0.01, "new": 0.001, "kind": "locked"}
    }
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in rows if "lr" in r] == [(1, 0.01), (2, 0.01), (3, 0.001), (4, 0.001)]
    # A later plain resume compares with what the folder now says (lr 1e-3), and records a second change.
    sft.main(short(tiny_model, chat_file, tmp_path, **{"train.lr": 1e-3, "train.max_steps": 5}))
    assert [e["changes"] for e in history(run)][1] == {"train.max_steps": {"old": 4, "new": 5, "kind": "free"}}


def test_a_forced_resume_with_another_lora_rank_names_the_tensor_and_the_shapes(tiny_model, chat_file, tmp_path):
    sft.main(short(tiny_model, chat_file, tmp_path))
    with pytest.raises(
        CamelidError,
        match=r"checkpoint-2/trainable\.safetensors: tensor \S+lora_A\S+ has shape "
        r"\[8, (\d+)\] but this model.s is \[16, \1\]",
    ):
        sft.main(short(tiny_model, chat_file, tmp_path, **{"lora.r": 16, "train.resume": "force"}))


def test_data_edited_in_place_counts_as_a_change(tiny_model, chat_file, tmp_path):
    data = tmp_path / "chats.jsonl"
    shutil.copyfile(chat_file, data)
    sft.main(short(tiny_model, data, tmp_path))
    data.write_text(data.read_text(encoding="utf-8") + chat_file.read_text(encoding="utf-8").splitlines()[0] + "\n")
    with pytest.raises(
        CamelidError,
        match=f"data file {re.escape(str(data.resolve()))} \\(sha256\\): [0-9a-f]{{12}}… → [0-9a-f]{{12}}…",
    ):
        sft.main(short(tiny_model, data, tmp_path))


def test_resume_false_starts_over_in_a_new_folder_and_keeps_the_earlier_run(tiny_model, chat_file, tmp_path):
    sft.main(short(tiny_model, chat_file, tmp_path))
    run = tmp_path / "run"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cfg = short(tiny_model, chat_file, tmp_path, **{"train.resume": False, "train.lr": 1e-3})
    sft.main(cfg)
    assert cfg.train.output_dir == str(tmp_path / "run-2")  # so later steps (eval after training) find it
    assert sorted(step_losses(tmp_path / "run-2")) == [1, 2, 3, 4]
    assert yaml.safe_load((tmp_path / "run-2" / "config.yaml").read_text())["train"]["output_dir"] == str(
        tmp_path / "run-2"
    )
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_folder_with_nothing_trained_in_it_starts_over_cleanly(tiny_model, chat_file, tmp_path):
    """A run that died before its first checkpoint: the rerun (even with a fixed lr) starts the folder over, and its
    metrics are not appended to the dead run's."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {lr: 1.0}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": float("nan")}) + "\n")
    sft.main(short(tiny_model, chat_file, tmp_path))
    assert sorted(step_losses(run)) == [1, 2, 3, 4] and not (run / "config_history.yaml").exists()


def test_every_key_that_shapes_training_is_placed():
    """A new config key must be put in RESUME_LOCKED or RESUME_FREE on purpose (unplaced keys count as locked)."""
    import dataclasses

    from camelid.config import Config
    from camelid.train.resume_rules import RESUME_FREE, RESUME_LOCKED, UNRELATED

    for f in dataclasses.fields(Config):
        if not dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(Config(), f.name)):
            assert f.name in RESUME_LOCKED[""], f.name
            continue
        if f.name in UNRELATED:
            continue
        keys = [k.name for k in dataclasses.fields(getattr(Config(), f.name))]
        placed = list(RESUME_LOCKED.get(f.name, ())) + list(RESUME_FREE.get(f.name, ()))
        assert sorted(placed) == sorted(keys), f.name


def test_which_changes_matter_depends_on_method_and_stage():
    from camelid.config import load_config
    from camelid.train.resume_rules import classify

    lora = load_config(None, ["method=lora"])
    full = load_config(None, ["method=full"])
    assert classify("lora.r", lora, "sft") == "locked" and classify("lora.r", full, "sft") == "unrelated"
    assert classify("quant.bits", lora, "sft") == "unrelated"
    assert classify("dpo.beta", lora, "dpo") == "locked" and classify("dpo.beta", lora, "sft") == "unrelated"
    assert classify("dpo.precompute_ref", lora, "dpo") == "free"
    assert classify("ppo.kl_coef", lora, "ppo") == "locked"
    assert classify("train.save_every", lora, "sft") == "free" and classify("train.seed", lora, "sft") == "locked"
    assert classify("model.gradient_checkpointing", lora, "sft") == "free"
    assert classify("engine.block_size", lora, "ppo") == "unrelated"
    assert classify("train.some_future_key", lora, "sft") == "locked"  # unplaced: assumed to matter


def test_config_yaml_holds_the_stage_sections_and_an_older_full_one_still_resumes(tiny_model, chat_file, tmp_path):
    from camelid.config import SECTIONS, to_dict

    sft.main(short(tiny_model, chat_file, tmp_path))
    run = tmp_path / "run"
    assert list(yaml.safe_load((run / "config.yaml").read_text())) == list(SECTIONS["sft"])  # no serve, rag, clean
    # Sections sft does not read change nothing in the comparison, whether the saved config lacks them ...
    sft.main(short(tiny_model, chat_file, tmp_path, **{"serve.port": 9000, "rag.top_k": 9}))
    assert not (run / "config_history.yaml").exists()
    # ... or holds them, as an older camelid wrote every section.
    old = to_dict(short(tiny_model, chat_file, tmp_path, **{"serve.port": 1234, "clean.min_units": 3}))
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    sft.main(short(tiny_model, chat_file, tmp_path, **{"train.max_steps": 6}))
    (entry,) = history(run)
    assert list(entry["changes"]) == ["train.max_steps"]
    assert list(yaml.safe_load((run / "config.yaml").read_text())) == list(SECTIONS["sft"])


def test_a_section_the_saved_config_lacks_compares_as_its_defaults():
    from camelid.config import to_dict
    from camelid.train.resume_rules import config_changes

    cfg = load_config(None, ["dpo.beta=0.3", "serve.port=9000"])
    old = {k: v for k, v in to_dict(cfg, "dpo").items() if k != "dpo"}  # saved without its dpo section
    assert config_changes(old, cfg, "dpo") == {"dpo.beta": {"old": 0.1, "new": 0.3, "kind": "locked"}}
    assert config_changes(to_dict(cfg, "dpo"), cfg, "dpo") == {}


def test_trimming_metrics_on_resume_never_shows_a_reader_a_cut_file(tmp_path):
    # Two ZeRO ranks once trimmed metrics.jsonl at the same time; one read the file while the other had just
    # truncated it for rewriting, and the run lost its first lines. Now only the main rank trims, and atomically.
    import threading

    from camelid.train.loop import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 5)))
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(path.read_text().count("\n"))

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        truncate_metrics(path, 2)
    stop.set()
    reader.join()
    assert seen and min(seen) == 2  # never empty, never half written
