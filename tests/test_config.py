"""Strict config: unknown keys, wrong types and impossible combinations fail before any weights load."""

import dataclasses

import pytest
import yaml

from camelid.config import (
    SECTIONS,
    Config,
    ConfigError,
    RagConfig,
    ServeConfig,
    TrainConfig,
    load_config,
    save_config,
    to_dict,
    validate,
)

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


def test_overrides_are_typed():
    cfg = load_config(
        None, ["train.lr=1e-4", "lora.r=16", "data.packing=false", "data.train=a.jsonl", "lora.target=[q_proj,v_proj]"]
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.lora.r == 16 and cfg.data.packing is False
    assert cfg.data.train == ["a.jsonl"] and cfg.lora.target == ["q_proj", "v_proj"]


def test_a_bare_no_is_the_word_where_the_choices_are_words(tmp_path):
    # YAML 1.1 reads `no` as False: `train.mixed_precision=no` must still mean "no", from a file or the command line
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(path), []).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(None, ["train.resume=false"]).train.resume is False  # a choice that holds booleans keeps them
    with pytest.raises(ConfigError, match=r"train.mixed_precision: True is not one of"):
        load_config(None, ["train.mixed_precision=yes"])


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


# ------------------------------------------------------------------ config per stage


def test_a_stage_judges_only_the_sections_it_reads():
    # serve's own rule, broken in a YAML file that an sft run shares with `camelid serve`
    cfg = load_config(None, ["model.name=x", "data.train=a", "serve.default_max_tokens=0", "rag.chunk_tokens=4"])
    validate(cfg, "sft")  # sft reads neither serve nor rag
    with pytest.raises(ConfigError, match=r"serve.default_max_tokens must be >= 1.*rag.chunk_tokens must be >= 16"):
        validate(cfg, "serve")  # every problem of the stage's sections at once
    # a default above serve.max_tokens is capped to it, not refused: lowering serve.max_tokens alone must work
    validate(load_config(None, ["serve.max_tokens=256"]), "serve")
    with pytest.raises(ConfigError, match="unknown stage 'sfft'.*did you mean 'sft'"):
        validate(cfg, "sfft")


def test_each_section_checks_its_own_fields():
    assert RagConfig(chunk_tokens=8, chunk_overlap=0).check() == ["rag.chunk_tokens must be >= 16"]
    assert TrainConfig().check() == [] and TrainConfig(lr=0, keep_last=0).check() == [
        "train.lr must be > 0",
        "train.keep_last must be >= 1",
    ]
    # Was a ZeroDivisionError from `rollout_batch % mini_batch` before any message.
    cfg = load_config(None, ["model.name=x", "data.train=a", "ppo.mini_batch=0"])
    with pytest.raises(ConfigError, match="ppo.rollout_batch and ppo.mini_batch must be >= 1"):
        validate(cfg, "ppo")


def test_a_run_folder_saves_only_its_stage_sections_and_loads_back(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "dpo.beta=0.3", "serve.port=9000", "eval.limit=5"])
    save_config(cfg, tmp_path / "c.yaml", "dpo")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert list(saved) == list(SECTIONS["dpo"]) and "serve" not in saved and "clean" not in saved
    back = load_config(tmp_path / "c.yaml")
    assert (back.train, back.dpo, back.eval) == (cfg.train, cfg.dpo, cfg.eval)
    assert back.serve == ServeConfig()  # a section the file lacks holds the defaults
    assert list(to_dict(cfg)) == [f.name for f in dataclasses.fields(Config)]  # without a stage: every section
