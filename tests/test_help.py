"""`camelid VERB --help` for every verb: its usage and every config key it reads (type, default and the description
written where the key is declared), without running anything; `camelid config VERB` as a YAML file load_config reads
back; one argument convention for all verbs (camelid.cli.parse)."""

import dataclasses
import logging
import re
import subprocess
import sys
import typing

import pytest
import yaml

from camelid.cli import VERBS, main, parse
from camelid.config import SECTIONS, Config, field_docs, load_config, type_name
from camelid.utils import CamelidError


def test_sft_help_from_the_command_line():
    # Was: "config file not found: --help" (the first argument of a training verb was taken as its config file).
    proc = subprocess.run(
        [sys.executable, "-m", "camelid", "sft", "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: camelid sft [CONFIG]")
    assert "train.lr=0.0002 float: peak learning rate (AdamW)" in _squeezed(proc.stdout)


def _squeezed(text):
    """Help and YAML pad their columns; the tests read them with single spaces."""
    return re.sub(r" +", " ", text)


def _sections_of(verb):
    return [s for s in SECTIONS.get(verb, ()) if s != "method"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_prints_its_help_and_runs_nothing(verb, monkeypatch, capsys):
    def boom(args):
        raise AssertionError(f"{verb} ran")

    monkeypatch.setitem(VERBS, verb, dataclasses.replace(VERBS[verb], run=boom))
    flag = "-h" if len(verb) % 2 else "--help"  # both spellings, across the verbs
    main([verb, "some-arg", flag, "x.y=1"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: camelid {verb}")
    for section in _sections_of(verb):  # every key of every section the verb reads, with its type
        hints = typing.get_type_hints(type(getattr(Config(), section)))
        for f in dataclasses.fields(getattr(Config(), section)):
            assert f"\n  {section}.{f.name}=" in out, (verb, section, f.name)
        assert any(
            f"{section}.{f.name}=" in line and f" {type_name(hints[f.name])}: " in line
            for f in dataclasses.fields(getattr(Config(), section))
            for line in out.splitlines()
        )
    others = {f.name for f in dataclasses.fields(Config)} - set(SECTIONS.get(verb, ())) - {"method"}
    assert not any(f"\n  {s}." in out for s in others)  # only what the verb reads
    if verb in SECTIONS and not SECTIONS[verb]:
        assert f"camelid {verb} reads no config keys" in out


@pytest.mark.parametrize(
    "argv, keys",
    [
        (["chat", "-h"], ["chat.temperature=0.7 float: sampling temperature; 0 = greedy", "engine.block_size=16"]),
        (["eval", "--before", "--help"], ["eval.tasks=[]", "eval.limit=0", "--before", "--out DIR"]),
        (
            ["serve", "runs/x", "serve.port=9000", "--help"],
            [
                "serve.port=8000",
                "serve.host=127.0.0.1",
                "serve.max_prompts_per_request=64",
                "engine.max_running=64",
                "generations in flight per API key",
            ],
        ),
        (
            ["sft", "--help"],
            [
                "method=lora full|freeze|lora|qlora|ptuning|embedding: what trains",
                "train.resume=true bool|force: ",
                "model.name='' str: ",
                "lora.target=[all-linear]",
            ],
        ),
        (["kb", "ask", "-h"], ["usage: camelid kb add KB PATH...", "rag.min_rerank_score=-.inf float: "]),
    ],
)
def test_help_shows_type_default_and_description(argv, keys, capsys):
    main(argv)
    out = _squeezed(capsys.readouterr().out)
    assert all(k in out for k in keys), [k for k in keys if k not in out]


def test_every_config_key_has_a_one_line_description():
    sections = [type(getattr(Config(), f.name)) for f in dataclasses.fields(Config) if f.name != "method"]
    for cls in sections + [Config]:
        docs = field_docs(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if cls is Config:
            names = ["method"]  # the others are the sections themselves
        assert [n for n in names if not docs.get(n)] == [], cls.__name__


def test_every_verb_reads_known_sections():
    known = {f.name for f in dataclasses.fields(Config)}
    assert set(VERBS) - {"config", "run"} == set(SECTIONS)  # config and run pass keys on to other verbs
    assert all(set(s) <= known for s in SECTIONS.values())


@pytest.mark.parametrize("verb", sorted(SECTIONS))
def test_config_verb_writes_yaml_that_loads_back(verb, tmp_path, capsys):
    main(["config", verb])
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == Config()
    assert list(yaml.safe_load(text) or {}) == list(SECTIONS[verb])  # exactly the sections the verb reads
    if verb == "sft":
        assert "\n lr: 0.0002 # float; peak learning rate (AdamW)\n" in _squeezed(text)


def test_config_verb_takes_a_file_and_overrides(tmp_path, capsys):
    main(["config", "sft", "configs/sft_lora.yaml", "lora.r=32", "data.train=[a.jsonl,b.jsonl]"])
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    want = load_config("configs/sft_lora.yaml", ["lora.r=32", "data.train=[a.jsonl,b.jsonl]"])
    assert load_config(tmp_path / "c.yaml") == want
    with pytest.raises(SystemExit):
        main(["config", "fly"])
    assert "VERB: one of pt, sft" in capsys.readouterr().err


# ------------------------------------------------------------------ one argument convention


def test_parse_splits_plain_arguments_flags_config_and_overrides():
    a = parse("eval", ["runs/x", "--out=ev", "--before", "eval.limit=3", "my.yaml", "method=full"])
    assert (a.plain, a.flags, a.config, a.overrides) == (
        ["runs/x"],
        {"--out": "ev", "--before": True},
        "my.yaml",
        ["eval.limit=3", "method=full"],
    )
    a = parse("eval", ["--out", "ev", "runs/x"])
    assert a.plain == ["runs/x"] and a.flags == {"--out": "ev"}
    a = parse("sft", ["sft_lora", "train.lr=1e-4"])  # a training verb's first plain argument is its config
    assert a.config == "sft_lora" and a.plain == [] and a.overrides == ["train.lr=1e-4"]
    # A question with '=' in it is not an override; after `--` nothing is an option, override or config.
    a = parse("kb", ["ask", "hb", "is a=b true?", "model.name=m"])
    assert a.plain == ["ask", "hb", "is a=b true?"] and a.overrides == ["model.name=m"]
    a = parse("kb", ["ask", "hb", "model.name=m", "--", "-x=1 or x.y=2?", "notes.yaml"])
    assert a.plain == ["ask", "hb", "-x=1 or x.y=2?", "notes.yaml"] and a.config is None


@pytest.mark.parametrize(
    "verb, argv, message",
    [
        ("serve", ["--port", "9000"], "unknown option '--port'"),
        ("eval", ["runs/x", "--out"], "--out needs a value"),
        ("eval", ["runs/x", "--before=yes"], "--before takes no value"),
        ("sft", ["a.yaml", "b.yaml"], "one CONFIG at most"),
        ("clean", ["a.yaml", "b.yml", "corpus.txt"], "one CONFIG.yaml at most"),
        ("export", ["run", "out", "dtype=bfloat16"], "camelid export reads no config keys"),
    ],
)
def test_parse_errors_name_the_argument_and_show_the_usage(verb, argv, message):
    with pytest.raises(CamelidError, match="usage: camelid " + verb) as e:
        parse(verb, argv)
    assert message in str(e.value)


def test_an_override_of_a_section_the_verb_does_not_read_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="camelid"):
        parse("data", ["configs/sft_lora.yaml", "lora.r=16", "data.max_length=64"])
    assert "camelid data does not read lora.*: 'lora.r=16' changes nothing" in caplog.text
    assert "data.max_length" not in caplog.text


@pytest.mark.parametrize(
    "argv", [["serve", "--port", "9000"], ["report"], ["export", "only-one"], ["chat"], ["quickstart", "extra"]]
)
def test_a_usage_error_exits_1_with_the_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1 and f"usage: camelid {argv[0]}" in capsys.readouterr().err
