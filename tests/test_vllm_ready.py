"""`camelid vllm`: which output folders vLLM can load as they are, and the command that serves them."""

from __future__ import annotations

import json
import shlex

import pytest

from camelid.serve.vllm import vllm_command
from camelid.utils import CamelidError


def adapter(tmp_path, **cfg):
    folder = tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    base = {"peft_type": "LORA", "r": 16, "base_model_name_or_path": "/models/base", "modules_to_save": None}
    (folder / "adapter_config.json").write_text(json.dumps({**base, **cfg}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return tmp_path / "run"


def test_lora_run_is_served_on_its_base_with_its_own_template(tmp_path):
    args = shlex.split(vllm_command(adapter(tmp_path, r=24, rank_pattern={"q_proj": 40})))
    assert args[:3] == ["vllm", "serve", "/models/base"] and "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1].startswith("run=") and args[args.index("--max-lora-rank") + 1] == "64"
    assert args[args.index("--chat-template") + 1].endswith("final/chat_template.jinja")
    assert args[args.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    "cfg, why",
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["embed_tokens"]}, "camelid export"),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
        ({"r": 1024}, "maximum"),
    ],
)
def test_what_vllm_cannot_load_is_refused_with_what_to_do(tmp_path, cfg, why):
    with pytest.raises(CamelidError, match=why):
        vllm_command(adapter(tmp_path, **cfg))


def test_plain_model_folder(tiny_model):
    args = shlex.split(vllm_command(tiny_model, name="tiny", port=9000))
    assert args[:3] == ["vllm", "serve", str(tiny_model.resolve())]
    assert args[args.index("--served-model-name") + 1] == "tiny" and args[-1] == "9000"


def test_not_a_model(tmp_path):
    with pytest.raises(CamelidError, match="neither a model"):
        vllm_command(tmp_path)


def test_a_catalog_model_name_is_resolved_as_the_other_verbs_do(tmp_path, monkeypatch, capsys):
    """A made-up catalog model already pulled into $CAMELID_HOME: nothing is downloaded."""
    from camelid import hub
    from camelid.cli import main as cli

    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(hub.CATALOG, "tiny-chat", {**hub.CATALOG["smollm2-135m-instruct"], "about": "test model"})
    folder = tmp_path / "home" / "models" / "tiny-chat"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "camelid_source.json").write_text("{}")
    monkeypatch.setattr(hub, "_fetch", lambda entry: pytest.fail("already pulled: no download"))
    cli(["vllm", "tiny-chat"])
    args = shlex.split(capsys.readouterr().out)
    assert args[:3] == ["vllm", "serve", str(folder.resolve())]
    assert args[args.index("--served-model-name") + 1] == "tiny-chat"
    assert args[args.index("--chat-template") + 1] == str((folder / "chat_template.jinja").resolve())
    with pytest.raises(CamelidError, match="'tiny-caht' not found.*closest: tiny-chat"):
        vllm_command("tiny-caht")
