"""Written files follow the umask like any other file: weights too, though safetensors writes them through a 0600
temp file and checkpoints are built in a 0700 mkdtemp folder before being renamed into place."""

import os
import stat

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import save_file

from camelid.model import merge_adapter
from camelid.train import sft
from camelid.utils import atomic_dir


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(root):
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_run_folder_checkpoints_and_export_follow_the_umask(umask, tiny_model, chat_file, tmp_path):
    umask(0o022)
    sft.main(tiny_config(tiny_model, chat_file, tmp_path, **{"train.max_steps": 3, "train.save_every": 1}))
    merge_adapter(tmp_path / "run", tmp_path / "export")
    got = modes(tmp_path / "run") | modes(tmp_path / "export")
    assert "run/final/adapter_model.safetensors" in got and "export/model.safetensors" in got
    assert "run/checkpoint-2/trainable.safetensors" in got
    wrong = {p: oct(m) for p, m in got.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)}
    assert not wrong


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_dir_gives_what_plain_writes_would(umask, tmp_path, mask):
    umask(mask)
    with atomic_dir(tmp_path / "out") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.json").write_text("{}")
    got = modes(tmp_path / "out")
    assert got == {
        "out": 0o777 & ~mask,
        "out/sub": 0o777 & ~mask,
        "out/w.safetensors": 0o666 & ~mask,
        "out/sub/a.json": 0o666 & ~mask,
    }
