"""Perplexity with a sliding window equals a direct computation; reward accuracy counts wins."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CORPUS
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from camelid.eval.ppl import perplexity, reward_accuracy


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        tiny_model
    )


def direct_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Token by token: token t is scored with the context the sliding window gives it."""
    total, n, done = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids[begin:end]])).logits[0].float(), -1)
        for t in range(max(done, begin + 1), end):
            total -= float(logp[t - begin - 1, ids[t]])
            n += 1
        done = max(done, end)
        if end == len(ids):
            break
    return total, n


@pytest.mark.parametrize("window, stride", [(512, 512), (32, 32), (32, 8)])
def test_perplexity_matches_direct_computation(model_tok, tmp_path, window, stride):
    model, tok = model_tok
    path = tmp_path / "text.txt"
    path.write_text("\n".join(CORPUS[:6]), encoding="utf-8")
    ids = tok(path.read_text(), add_special_tokens=False)["input_ids"]
    got = perplexity(model, tok, path, window=window, stride=stride, progress=False)
    total, n = direct_nll(model, ids, window, stride)
    assert got["tokens"] == n
    if stride < window or window >= len(ids):
        assert n == len(ids) - 1  # every token but the first
    assert got["ppl"] == pytest.approx(math.exp(total / n), rel=1e-4)
    # per character: the same total loss over the file's characters, comparable across tokenizers
    chars = len(path.read_text(encoding="utf-8"))
    assert got["chars"] == chars
    assert got["bits_per_char"] == pytest.approx(total / chars / math.log(2), rel=1e-4)


def test_sliding_windows_score_every_token_disjoint_chunks_do_not(model_tok, tmp_path):
    model, tok = model_tok
    path = tmp_path / "text.txt"
    path.write_text(" ".join(CORPUS[:10]), encoding="utf-8")
    chunks = perplexity(model, tok, path, window=16, stride=16, progress=False)
    sliding = perplexity(model, tok, path, window=16, stride=4, progress=False)
    ids = tok(path.read_text(), add_special_tokens=False)["input_ids"]
    assert sliding["tokens"] == len(ids) - 1 > chunks["tokens"]  # chunks cannot score their first tokens
    assert chunks["ppl"] != sliding["ppl"]


def test_reward_accuracy_counts_pairs_the_model_ranks_right(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32).eval()
    rm.config.pad_token_id = tok.pad_token_id
    prompt = [{"role": "user", "content": "Say something."}]
    answers = ["Paris.", "北京是中国的首都。", "1 2 3", "You are welcome."]
    pairs = [{"prompt": prompt, "chosen": a, "rejected": b} for a in answers for b in answers if a != b]
    got = reward_accuracy(rm, tok, pairs, progress=False)
    assert got["n"] == 12 and got["accuracy"] == pytest.approx(0.5)  # each pair and its mirror: exactly one wins
    assert got["mean_margin"] == pytest.approx(0.0, abs=1e-5)


def test_max_chars_scores_the_first_whole_lines_only(model_tok, tmp_path):
    model, tok = model_tok
    whole, head = tmp_path / "whole.txt", tmp_path / "head.txt"
    whole.write_text("\n".join(CORPUS[:6]), encoding="utf-8")
    head.write_text("\n".join(CORPUS[:2]) + "\n", encoding="utf-8")
    cut = len(CORPUS[0]) + len(CORPUS[1]) + 2 + len(CORPUS[2]) // 2  # inside line 3: back to the end of line 2
    got = perplexity(model, tok, whole, window=32, stride=8, progress=False, max_chars=cut)
    assert got == perplexity(model, tok, head, window=32, stride=8, progress=False)
