"""Tiny real models for fast, offline tests: a byte-level BPE tokenizer trained here on bilingual text,
and randomly initialised Llama/Qwen2-shaped models built from configs and saved as HF folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Machine learning models learn patterns from data; fine-tuning adapts them to a domain.",
    "北京是中国的首都。上海是一个国际化大都市。我们今天学习大语言模型的微调。",
    "你好！请问有什么可以帮你？人工智能正在改变世界。",
    "User asks a question and the assistant answers politely and briefly. 1 2 3 4 5 6 7 8 9 10",
] * 20

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "北京是哪里？"},
        {"role": "assistant", "content": "北京是中国的首都。"},
    ],
    [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "user", "content": "And to five?"},
        {"role": "assistant", "content": "1 2 3 4 5"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome."},
    ],
]


def build_tokenizer(template: str | None = None, words: tuple[str, ...] = ()):
    """A byte-level BPE trained on CORPUS; `words` become whole tokens of their own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    tk.add_tokens(list(words))
    return wrap_tokenizer(tk, template)


def wrap_tokenizer(tk, template: str | None = None):
    """A trained `tokenizers.Tokenizer` as the transformers tokenizer the tests use: SPECIALS registered, chatml's
    end of turn as eos, and a built-in chat template when one is named."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|begin_of_text|>",
        unk_token="<|endoftext|>",
    )
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                s for s in SPECIALS if s not in ("<|im_end|>", "<|endoftext|>", "<|begin_of_text|>")
            ]
        }
    )
    if template:
        from camelid.data.templates import BUILTIN

        tok.chat_template = BUILTIN[template]
    return tok


def build_model_dir(
    path: Path, arch: str = "llama", template: str = "chatml", tie: bool = False, words: tuple[str, ...] = ()
) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = build_tokenizer(template, words)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama-shaped model with a ChatML template (SmolLM2's family)."""
    return build_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-tied"), tie=True)


@pytest.fixture(scope="session")
def chat_file(tmp_path_factory) -> Path:
    """32 short chats in OpenAI messages format (multi-turn, bilingual)."""
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(32):
            f.write(json.dumps({"messages": CHATS[i % len(CHATS)]}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    return path


def tiny_config(model_dir, data, tmp_path, **over):
    """A Config for a few fast steps on the tiny model; `over` takes dotted keys."""
    from camelid.config import load_config

    base = {
        "model.name": str(model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "train.output_dir": str(tmp_path / "run"),
        "train.max_steps": 4,
        "train.batch_size": 4,
        "train.lr": 1e-2,
        "train.warmup_ratio": 0.0,
        "train.tensorboard": False,
        "train.scheduler": "constant",
        "lora.dropout": 0.0,
    }
    base.update(over)
    return load_config(None, [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in base.items()])


@pytest.fixture(scope="session")
def chromium():
    """A function that renders a local HTML file in headless Chromium (Debian's package, installed by
    scripts/setup.sh) and saves a screenshot: what a person would see. Without the browser the test is skipped,
    unless CAMELID_REQUIRE_BROWSER is set (CI), where that is a failure."""
    import os
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout if exe else ""
    if exe is None or not fonts.strip():  # without a CJK font every Chinese character is an empty box
        missing = "chromium" if exe is None else "a Chinese font"
        if os.environ.get("CAMELID_REQUIRE_BROWSER"):
            pytest.fail(f"{missing} is not installed (scripts/setup.sh installs both as root)")
        pytest.skip(f"no {missing} (scripts/setup.sh installs chromium and fonts-wqy-zenhei as root)")

    def shoot(page: Path, png: Path, width: int = 1200, height: int = 1600) -> Path:
        out = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={png}",
             Path(page).resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0 and png.is_file(), out.stderr[-2000:]
        return png

    return shoot
