"""Losses as pure functions of tensors. Stages wrap them into `batch → loss` in a line or two."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from camelid.model import decoder_and_head

IGNORE = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy, mean over supervised positions: -1/N Σ_t log p(x_{t+1} | x_≤t).

    Labels are aligned with inputs (labels[t] is token t); the shift happens here. Positions whose
    target is IGNORE (prompts, padding, packed-row boundaries) carry no loss.
    Returns (mean loss, number of supervised tokens).
    """
    # Shift the labels, not the logits: slicing the (batch × length × vocab) logits would copy them,
    # and again in backward — the largest tensor of the step.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    n = (targets != IGNORE).sum()
    total = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total / n.clamp(min=1), n


def lm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """`batch → loss` for pt and sft: the model's logits into `causal_lm_loss`.

    When the model is a plain (unwrapped) transformers or peft-LoRA model, the output head runs only
    at positions whose next token is trained: prompts and padding never reach the vocabulary-sized
    matmul and log-softmax (measured −7% step time and −0.9 GB on SmolLM2, more with larger vocabularies).
    Wrapped models (DDP, FSDP, DeepSpeed) and models that post-process logits take the full path, because
    their forward must run through the wrapper / the model's own code.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    split = decoder_and_head(model)
    if split is None:
        # use_cache=False matters: with a cache object present transformers ignores restarting position
        # ids, and packed examples would attend to each other.
        logits = model(**inputs, use_cache=False).logits
        loss, n = causal_lm_loss(logits, batch["labels"])
        return loss, {"n_tokens": n}
    decoder, head = split
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
    keep = targets != IGNORE
    logits = head(hidden[keep])
    n = keep.sum()
    total = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return total / n.clamp(min=1), {"n_tokens": n}
