"""`camelid run RECIPE`: stages in order, skipped when their inputs are unchanged, re-run with everything downstream
when one changes, resumed after kill -9, and every mistake in the file reported before the first stage runs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from camelid.recipe import load_recipe, plan
from camelid.utils import CamelidError

SHIPPED = Path(__file__).resolve().parent.parent / "camelid" / "recipes"
COMMON = {
    "data.max_length": 64,
    "train.batch_size": 4,
    "train.lr": 1e-2,
    "train.warmup_ratio": 0,
    "train.scheduler": "constant",
    "train.tensorboard": False,
    "lora.dropout": 0,
}


def five_stages(model, chats, corpus, held_out) -> dict:
    return {
        "folder": "out",
        "set": COMMON | {"model.name": str(model)},
        "stages": {
            "clean": {"verb": "clean", "args": [str(corpus)]},
            "pt": {"verb": "pt", "set": {"data.train": [f"${{clean}}/{corpus.name}"], "train.max_steps": 2}},
            "sft": {"verb": "sft", "set": {"model.name": "${pt}", "data.train": [str(chats)], "train.max_steps": 3}},
            "export": {"verb": "export", "args": ["${sft}"]},
            "eval": {"verb": "eval", "args": ["${export}"], "set": {"eval.perplexity": [str(held_out)]}},
        },
    }


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def camelid_run(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "camelid", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def actions(stdout: str) -> dict[str, str]:
    """stage → run / skip / resume, from the plan `camelid run` prints before the stages' own output."""
    plan_lines = stdout.split("\n== [", 1)[0].splitlines()
    found = [re.match(r"\s*\d+\. (\S+)\s+(.+?)\s+(run|skip|resume|missing)\s", line) for line in plan_lines]
    return {m.group(1): m.group(3) for m in found if m}


def snapshot(folder: Path) -> dict[str, int]:
    """mtime of every file a stage wrote (the runner's own lineage.json and .lock are rewritten on every run)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("lineage.json", ".lock")
    }


def records(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/stage.json")}


def test_a_recipe_runs_skips_and_reruns_exactly_what_changed(tiny_model, chat_file, text_file, tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(text_file.read_text(encoding="utf-8")[:2000], encoding="utf-8")
    write(tmp_path / "r.yaml", five_stages(tiny_model, chat_file, text_file, held_out))
    out = tmp_path / "out"

    first = camelid_run(tmp_path, "r.yaml")
    assert actions(first) == dict.fromkeys(["clean", "pt", "sft", "export", "eval"], "run")
    made = records(out)
    assert {r["state"] for r in made.values()} == {"done"}
    assert made["sft"]["metrics"]["loss"] > 0 and "model:ppl.held_out.txt" in made["eval"]["metrics"]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stages"]["eval"]["reads"] == ["export"] and lineage["stages"]["pt"]["reads"] == ["clean"]
    assert lineage["stages"]["sft"]["inputs"]["upstream"] == {"pt": made["pt"]["run_id"]}

    files = snapshot(out)
    again = camelid_run(tmp_path, "r.yaml")
    assert set(actions(again).values()) == {"skip"}
    assert snapshot(out) == files  # nothing retrained or rewritten

    # One sft key changes: sft and everything reading it re-run; the stages above it are untouched.
    changed = camelid_run(tmp_path, "r.yaml", "sft.train.lr=2e-2", "--dry-run")
    assert "train.lr 0.01 → 0.02" in changed
    assert records(out) == made  # a dry run changes nothing
    changed = camelid_run(tmp_path, "r.yaml", "sft.train.lr=2e-2")
    assert actions(changed) == {"clean": "skip", "pt": "skip", "sft": "run", "export": "run", "eval": "run"}
    after = records(out)
    upstream = {k: v for k, v in files.items() if k.startswith(("clean/", "pt/"))}
    assert {k: v for k, v in snapshot(out).items() if k.startswith(("clean/", "pt/"))} == upstream
    assert all(after[n]["run_id"] != made[n]["run_id"] for n in ("sft", "export", "eval"))

    # A data file's content changes: only the stage reading it re-runs (nothing reads `eval`).
    held_out.write_text(held_out.read_text(encoding="utf-8") + "\n新的一行。", encoding="utf-8")
    data = camelid_run(tmp_path, "r.yaml", "sft.train.lr=2e-2")
    assert actions(data) == {"clean": "skip", "pt": "skip", "sft": "skip", "export": "skip", "eval": "run"}
    assert f"{held_out} changed" in data
    status = camelid_run(tmp_path, "r.yaml", "--status")
    assert "stale: train.lr 0.02 → 0.01" in status  # without the override, sft is stale again


def test_a_stage_killed_mid_training_resumes_and_ends_as_an_uninterrupted_run(
    tiny_model, chat_file, tmp_path, monkeypatch
):
    from camelid.train import sft

    keys = {"data.train": [str(chat_file)], "train.max_steps": 40, "train.save_every": 2}
    recipe = {
        "folder": "cut",
        "set": COMMON | {"model.name": str(tiny_model)},
        "stages": {"sft": {"verb": "sft", "set": keys}},
    }
    write(tmp_path / "cut.yaml", recipe)
    monkeypatch.chdir(tmp_path)
    whole = load_recipe("cut.yaml").stages["sft"].cfg  # the config the stage runs, run here without interruption
    whole.train.output_dir = str(tmp_path / "whole" / "sft")
    sft.main(whole)

    proc = subprocess.Popen(
        [sys.executable, "-m", "camelid", "run", "cut.yaml"],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (tmp_path / "cut" / "sft" / "checkpoint-4").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before a checkpoint could be cut"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert records(tmp_path / "cut")["sft"]["state"] == "running"
    assert not (tmp_path / "cut" / "sft" / "final").exists()

    resumed = camelid_run(tmp_path, "cut.yaml")
    assert actions(resumed) == {"sft": "resume"}
    rows = {}
    for name in ("whole", "cut"):
        lines = [json.loads(x) for x in (tmp_path / name / "sft" / "metrics.jsonl").read_text().splitlines()]
        rows[name] = {r["step"]: r["loss"] for r in lines if "loss" in r}
    assert max(rows["cut"]) == 40
    assert rows["cut"][40] == pytest.approx(rows["whole"][40], rel=1e-5)
    assert records(tmp_path / "cut")["sft"]["state"] == "done"


def test_a_failing_stage_stops_the_recipe_and_keeps_what_completed(text_file, tmp_path):
    broken = tmp_path / "docs.jsonl"
    broken.write_text('{"text": "一篇文章。"}\n{"text": broken\n', encoding="utf-8")
    stages = {"news": {"verb": "clean", "args": [str(text_file)]}, "docs": {"verb": "clean", "args": [str(broken)]}}
    write(tmp_path / "r.yaml", {"folder": "out", "stages": stages})
    failed = subprocess.run(
        [sys.executable, "-m", "camelid", "run", "r.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "docs.jsonl:2: bad JSON" in failed.stderr  # the stage's own error, then the recipe's
    assert "stage 'docs' (clean) failed with exit code 1" in failed.stderr
    stages = json.loads((tmp_path / "out" / "lineage.json").read_text())["stages"]
    assert stages["news"]["state"] == "done" and stages["docs"]["state"] == "failed"
    broken.write_text('{"text": "一篇文章。"}\n', encoding="utf-8")
    fixed = camelid_run(tmp_path, "r.yaml")
    assert actions(fixed) == {"news": "skip", "docs": "run"}
    assert records(tmp_path / "out")["docs"]["state"] == "done"


def mistake(tmp_path: Path, stages: dict, *overrides: str) -> str:
    path = write(tmp_path / "bad.yaml", {"folder": str(tmp_path / "out"), "stages": stages})
    with pytest.raises(CamelidError) as e:
        plan(load_recipe(str(path), list(overrides)))
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was created
    return str(e.value)


def test_mistakes_anywhere_in_a_recipe_fail_before_the_first_stage(tiny_model, chat_file, tmp_path):
    sft = {"verb": "sft", "set": {"model.name": str(tiny_model), "data.train": [str(chat_file)]}}
    assert "verb 'stf' is not one a recipe runs (closest: sft" in mistake(tmp_path, {"a": {"verb": "stf"}})
    assert "'${sfx}' names no stage (closest: sft)" in mistake(
        tmp_path, {"sft": sft, "ev": {"verb": "eval", "args": ["${sfx}"]}}
    )
    msg = mistake(tmp_path, {"ev": {"verb": "eval", "args": ["${sft}"]}, "sft": sft})
    assert "stage 'ev'" in msg and "refers to a later stage" in msg
    assert "refers to the stage itself" in mistake(tmp_path, {"sft": sft | {"args": ["${sft}"]}})
    five = {f"s{i}": sft for i in range(4)} | {"s4": sft | {"set": sft["set"] | {"train.lr": "fast"}}}
    msg = mistake(tmp_path, five)
    assert "stage 's4'" in msg and "train.lr" in msg
    msg = mistake(tmp_path, {"sft": sft, "ex": {"verb": "export", "args": ["${sft}"], "set": {"train.lr": 1}}})
    assert "stage 'ex'" in msg and "camelid export does not read train.*" in msg
    msg = mistake(tmp_path, {"sft": sft, "ev": {"verb": "eval", "args": ["${sft}"]}}, "ev.eval.limt=3")
    assert "stage 'ev'" in msg and "limt" in msg
    missing = sft | {"set": sft["set"] | {"data.train": [str(tmp_path / "chatz.jsonl")]}}
    msg = mistake(tmp_path, {"sft": sft, "b": missing})
    assert "stage 'b'" in msg and "chatz.jsonl" in msg and "not found" in msg
    assert "serve runs until stopped" in mistake(
        tmp_path, {"up": {"verb": "serve", "args": [str(tiny_model)]}, "sft": sft}
    )
    assert "unknown key(s) ['sets']" in mistake(tmp_path, {"sft": {"verb": "sft", "sets": {}}})
    assert "closest: sft" in str(
        pytest.raises(
            CamelidError, plan, load_recipe(str(write(tmp_path / "ok.yaml", {"stages": {"sft": sft}}))), ["stf"]
        ).value
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in SHIPPED.glob("*.yaml")))
def test_shipped_recipes_load_and_plan(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(name)
    steps = plan(recipe)
    assert [s.action for s in steps] == ["run"] * len(steps)
    header = (SHIPPED / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("# ") and "min" in header  # says what it makes and how long it takes


@pytest.mark.slow
def test_zh_domain_recipe_on_smollm2_and_people_s_daily(tmp_path):
    from camelid import hub
    from camelid.eval.report import main as report

    hub.pull("smollm2-135m-instruct")
    tiny = [f"{s}.train.max_steps=2" for s in ("pt_embed", "pt_lora", "sft", "dpo")]
    tiny += [f"{s}.data.max_samples=64" for s in ("pt_embed", "pt_lora", "sft", "dpo")]
    tiny += ["eval.limit=4", "eval.ppl_max_chars=1500", "eval.max_new_tokens=8", "tok.tok.max_lines=3000"]
    first = camelid_run(tmp_path, "zh_domain", *tiny)
    folder = tmp_path / "runs" / "zh_domain"
    done = records(folder)
    assert set(done) == set(actions(first)) and {r["state"] for r in done.values()} == {"done"}
    before, after = done["tok"]["metrics"]["tokens_per_char.peoples_daily_1998_heldout"].split(" → ")
    assert float(after) < float(before)  # the extended vocabulary cuts the held-out news into fewer tokens
    for stage in ("base", "after_dpo"):
        assert {"model:news_cloze.acc", "model:bits_per_char.peoples_daily_1998_heldout"} <= set(done[stage]["metrics"])
    assert (folder / "export" / "config.json").is_file() and (folder / "kb" / "kb.json").is_file()
    page = report([str(folder)]).read_text(encoding="utf-8")
    assert "<h2>Recipe zh_domain.yaml</h2>" in page and "tokens per character" in page.lower()
    again = camelid_run(tmp_path, "zh_domain", "--dry-run", *tiny)
    assert set(actions(again).values()) == {"skip"}


@pytest.mark.slow
def test_chat_lora_recipe_on_smollm2(tmp_path):
    from camelid import hub

    hub.pull("smollm2-135m-instruct")
    args = ["sft.train.max_steps=2", "sft.data.max_samples=16", "sft.train.eval_every=2", "eval.limit=4"]
    first = camelid_run(tmp_path, "chat_lora", *args)
    assert actions(first) == {"base": "run", "sft": "run", "eval": "run", "export": "run"}
    done = records(tmp_path / "runs" / "chat_lora")
    assert {r["state"] for r in done.values()} == {"done"}
    assert "model:mmlu.acc" in done["base"]["metrics"] and "after:mmlu.acc" in done["eval"]["metrics"]
    assert (tmp_path / "runs" / "chat_lora" / "export" / "config.json").is_file()
    assert set(actions(camelid_run(tmp_path, "chat_lora", *args)).values()) == {"skip"}


def test_a_second_runner_on_the_same_folder_is_refused(tiny_model, chat_file, tmp_path, monkeypatch):
    from camelid.recipe.runner import _only_runner

    monkeypatch.chdir(tmp_path)

    sft = {"verb": "sft", "set": {"model.name": str(tiny_model), "data.train": [str(chat_file)]}}
    write(tmp_path / "r.yaml", {"folder": "out", "stages": {"sft": sft}})
    with _only_runner(load_recipe("r.yaml")):
        second = subprocess.run(
            [sys.executable, "-m", "camelid", "run", "r.yaml"], cwd=tmp_path, capture_output=True, text=True
        )
    assert second.returncode == 1 and f"another `camelid run` (pid {os.getpid()}) is using out" in second.stderr
    assert not (tmp_path / "out" / "sft").exists()


def test_recipe_dir_names_files_shipped_beside_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "prompts.txt").write_text("你好\n", encoding="utf-8")
    stage = {"verb": "eval", "args": ["smollm2-135m-instruct"], "set": {"eval.samples": "${recipe_dir}/prompts.txt"}}
    (shipped / "r.yaml").write_text(yaml.safe_dump({"stages": {"ask": stage}}), encoding="utf-8")
    recipe = load_recipe(str(shipped / "r.yaml"))
    assert recipe.stages["ask"].keys["eval.samples"] == str(shipped / "prompts.txt")
    (shipped / "bad.yaml").write_text(yaml.safe_dump({"stages": {"recipe_dir": stage}}), encoding="utf-8")
    with pytest.raises(CamelidError, match="recipe file's folder"):
        load_recipe(str(shipped / "bad.yaml"))
