"""Losses as pure functions of tensors. Stages wrap them into `batch → loss` in a line or two."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """`batch → loss` for pt and sft: the model's logits into `causal_lm_loss`."""
    # use_cache=False matters: with a cache object present transformers ignores restarting position
    # ids, and packed examples would attend to each other.
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    loss, n = causal_lm_loss(logits, batch["labels"])
    return loss, {"n_tokens": n}
