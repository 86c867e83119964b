"""Perplexity of a text file with a sliding window, and reward-model accuracy on preference pairs.

Sliding window: the file is one token stream; windows of `window` tokens start every `stride` tokens, and each
window scores only the tokens the previous one did not, so with stride < window every token after the first is
scored once, with at least `window - stride` tokens of context. stride = window gives disjoint chunks (fastest;
each chunk's first token goes unscored and the rest see less context). Besides per-token perplexity it reports bits
per character and per-character perplexity (the file's total loss over its characters), which compare across
tokenizers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm


@torch.inference_mode()
def perplexity(
    model, tok, path: str | Path, window: int = 1024, stride: int = 512, progress: bool = True, max_chars: int = 0
) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    if 0 < max_chars < len(text):
        # cut in characters, not tokens, so two tokenizers score the same text; at a line end when there is one
        cut = text.rfind("\n", 0, max_chars) + 1 or max_chars
        text = text[:cut]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"{path}: fewer than 2 tokens, nothing to score")
    device = next(model.parameters()).device
    nll, scored, done = 0.0, 0, 1  # the first token has no context and is never scored
    starts = range(0, max(1, len(ids) - 1), stride)
    for begin in tqdm(starts, desc=f"perplexity {Path(path).name}", unit="window", disable=not progress):
        end = min(begin + window, len(ids))
        if end <= done:
            continue
        first = max(done, begin + 1)  # a window's own first token has no context in it
        chunk = torch.tensor([ids[begin:end]], device=device)
        logits = model(input_ids=chunk, use_cache=False).logits[0, first - begin - 1 : end - begin - 1].float()
        nll -= float(torch.log_softmax(logits, -1).gather(1, chunk[0, first - begin :, None]).sum())
        scored += end - first
        done = end
        if end == len(ids):
            break
    # Per token, two models with different tokenizers (before and after a vocabulary extension) are not comparable:
    # one that cuts text into fewer, longer tokens pays more per token. Per character they are.
    chars = len(text)
    return {
        "ppl": math.exp(nll / scored),
        "nll": nll / scored,
        "tokens": scored,
        "chars": chars,
        "bits_per_char": nll / chars / math.log(2),
        "ppl_char": math.exp(nll / chars),
    }


@torch.inference_mode()
def reward_accuracy(model, tok, pairs: list[dict], progress: bool = True) -> dict:
    """Share of preference pairs whose chosen answer a sequence-classification reward model scores higher.
    `pairs`: {"prompt": messages, "chosen": text, "rejected": text}, rendered with the tokenizer's chat template."""
    from camelid.data.templates import render

    device = next(model.parameters()).device
    wins, margins = 0, []
    for p in tqdm(pairs, desc="reward accuracy", unit="pair", disable=not progress):
        scores = []
        for answer in (p["chosen"], p["rejected"]):
            ids = render(tok, p["prompt"] + [{"role": "assistant", "content": answer}]).input_ids
            scores.append(float(model(input_ids=torch.tensor([ids], device=device)).logits[0, 0]))
        wins += scores[0] > scores[1]
        margins.append(scores[0] - scores[1])
    return {"accuracy": wins / max(1, len(pairs)), "mean_margin": sum(margins) / max(1, len(margins)), "n": len(pairs)}
