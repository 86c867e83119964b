"""Inputs are checked before anything is created: a missing data file, a mistyped model or a missing reward model
fails in well under a second, names the closest valid names, and leaves no run folder behind."""

import json
import time

import pytest
from conftest import tiny_config

from camelid.cli import main as cli
from camelid.train import dpo, ppo, pt, rm, sft
from camelid.utils import CamelidError

STAGES = {"sft": sft, "pt": pt, "rm": rm, "dpo": dpo}


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    return d


def fails_fast(fn, match):
    started = time.perf_counter()
    with pytest.raises(CamelidError, match=match):
        fn()
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_missing_data_file_fails_at_once_and_creates_no_run_folder(stage, tiny_model, data_dir, tmp_path):
    cfg = tiny_config(tiny_model, data_dir / "trian.jsonl", tmp_path)
    fails_fast(
        lambda: STAGES[stage].main(cfg), f"'{data_dir / 'trian.jsonl'}' not found.*closest: {data_dir / 'train.jsonl'}"
    )
    assert not (tmp_path / "run").exists()
    cfg = tiny_config(tiny_model, data_dir / "train.jsonl", tmp_path, **{"data.eval": ["alpaca_zh_dmo"]})
    fails_fast(lambda: STAGES[stage].main(cfg), "'alpaca_zh_dmo' not found.*closest: alpaca_zh_demo")
    assert not (tmp_path / "run").exists()


def test_a_mistyped_model_fails_at_once_and_creates_no_run_folder(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    cfg = tiny_config("smollm2-135m-instrcut", data_dir / "train.jsonl", tmp_path)
    fails_fast(lambda: sft.main(cfg), "'smollm2-135m-instrcut' not found.*closest: smollm2-135m-instruct")
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()  # nothing pulled either


def test_a_missing_reward_model_fails_at_once(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "rm-lora").mkdir(parents=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi"}) + "\n")
    cfg = tiny_config(
        tiny_model,
        prompts,
        tmp_path,
        **{"ppo.reward_model": "runs/rm-lroa", "ppo.rollout_batch": 4, "ppo.mini_batch": 2},
    )
    fails_fast(lambda: ppo.main(cfg), "'runs/rm-lroa' not found.*closest: runs/rm-lora")
    assert not (tmp_path / "run").exists()


def test_the_data_verb_checks_its_sources_before_loading_the_tokenizer(data_dir, capsys):
    started = time.perf_counter()
    with pytest.raises(SystemExit):
        cli(["data", "model.name=no/such-model", f"data.train=[{data_dir / 'trian.jsonl'}]"])
    assert time.perf_counter() - started < 1.0
    assert f"closest: {data_dir / 'train.jsonl'}" in capsys.readouterr().err
