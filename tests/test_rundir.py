"""What a run folder says about its run (camelid/rundir.py): the state a training stage writes as it starts, ends or
fails, read back as the web UI and reports read it; and which folders under a root are runs or recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from camelid.rundir import find_runs, run_state, write_status


def test_a_finished_run_and_a_failing_run_say_so(tiny_model, chat_file, tmp_path, monkeypatch):
    from camelid.cli import main

    over = [f"model.name={tiny_model}", f"data.train=[{chat_file}]", "data.max_length=64", "train.max_steps=2",
            "train.batch_size=4", "train.tensorboard=false"]  # fmt: skip
    main(["sft", *over, f"train.output_dir={tmp_path / 'ok'}"])
    status = json.loads((tmp_path / "ok" / "status.json").read_text())
    assert status["state"] == "finished" and status["stage"] == "sft"
    assert run_state(tmp_path / "ok") == {"state": "finished"}

    import camelid.train.sft as sft

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(sft, "fit", broken)
    with pytest.raises(RuntimeError):
        main(["sft", *over, f"train.output_dir={tmp_path / 'bad'}"])
    assert run_state(tmp_path / "bad") == {"state": "failed", "error": "RuntimeError: out of memory, say"}


def test_a_run_whose_process_is_gone_reads_as_stopped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_status(tmp_path, "running", stage="pt")
    assert run_state(tmp_path) == {"state": "running"}  # this process: alive
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps(status | {"pid": int(dead.stdout)}))
    assert run_state(tmp_path)["state"] == "stopped"
    # another host's pid means nothing here: taken at its word
    (tmp_path / "status.json").write_text(json.dumps(status | {"pid": int(dead.stdout), "host": "elsewhere"}))
    assert run_state(tmp_path)["state"] == "running"
    (tmp_path / "status.json").unlink()
    assert run_state(tmp_path)["state"] == "stopped"  # written before status.json existed, and unfinished
    (tmp_path / "summary.json").write_text("{}")
    assert run_state(tmp_path)["state"] == "finished"


def test_find_runs_lists_runs_and_recipes_not_their_stages_nor_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text("")
    (tmp_path / "group" / "b").mkdir(parents=True)
    (tmp_path / "group" / "b" / "config.yaml").write_text("method: lora\nmodel:\n  name: m\n")
    (tmp_path / "rec" / "sft").mkdir(parents=True)
    (tmp_path / "rec" / "lineage.json").write_text(json.dumps({"stages": {}}))
    (tmp_path / "rec" / "sft" / "metrics.jsonl").write_text("")
    (tmp_path / "notes").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    runs = {r["path"]: r for r in find_runs(tmp_path)}
    assert set(runs) == {"a", "group/b", "rec"}
    assert runs["rec"]["kind"] == "recipe" and runs["group/b"]["method"] == "lora" and runs["group/b"]["model"] == "m"
