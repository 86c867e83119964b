"""Strict config: unknown keys, wrong types and impossible combinations fail before any weights load."""

import pytest

from camelid.config import ConfigError, load_config, save_config, validate

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "lora.r=16", "data.packing=false", "data.train=a.jsonl", "lora.target=[q_proj,v_proj]"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.lora.r == 16 and cfg.data.packing is False
    assert cfg.data.train == ["a.jsonl"] and cfg.lora.target == ["q_proj", "v_proj"]


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat'.*did you mean"):
        load_config(None, ["train.learning_rat=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'lora.rank'"):
        load_config(None, ["lora.rank=8"])


def test_wrong_types_and_choices():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int"):
        load_config(None, ["train.batch_size=four"])
    with pytest.raises(ConfigError, match=r"method: 'qlora4' is not one of"):
        load_config(None, ["method=qlora4"])
    with pytest.raises(ConfigError, match=r"data.packing: expected bool"):
        load_config(None, ["data.packing=3"])


def test_impossible_combinations_fail_before_loading():
    cfg = load_config(None, ["model.name=x", "data.train=a", "method=ptuning", "data.packing=true"])
    with pytest.raises(ConfigError, match="ptuning.*packing"):
        validate(cfg, "sft")
    cfg = load_config(None, ["model.name=x", "data.train=a", "method=full", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="rounding"):
        validate(cfg, "sft")
    with pytest.raises(ConfigError, match="data.train"):
        validate(load_config(None, ["model.name=x"]), "sft")


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "freeze.modules=[mlp]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("path", sorted(REPO_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    stage = path.name.split("_")[0]
    stage = stage if stage in ("pt", "rm", "dpo", "ppo", "kb") else "sft"
    validate(cfg, stage)


def test_shipped_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after a wheel install
    assert load_config("configs/sft_lora.yaml") == load_config(REPO_CONFIGS / "sft_lora.yaml")
    assert load_config("sft_lora") == load_config(REPO_CONFIGS / "sft_lora.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: sft_lroa.*close name: sft_lora"):
        load_config("sft_lroa")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("elsewhere/sft_lora.yaml")  # a path into another folder is never swapped for a shipped file
