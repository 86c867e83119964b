"""Log-probabilities of chosen tokens through the output head, without ever holding every position's logits.

The vocabulary-sized logits are the largest tensors of a LoRA step: SmolLM2's 49,152 entries over a packed
4×512 batch are 400 MB in float32, and autograd keeps them, their log-softmax and both gradients alive at once.
Qwen2's 151,936 entries make that three times worse. `head_logps` runs the head over a few hundred positions at
a time and keeps only what the backward pass needs:

- a frozen `nn.Linear` head (LoRA, QLoRA, freeze): d logp/d hidden = ((onehot − softmax) / T) · W is
  computed in the forward chunk by chunk and kept ([N, d], the size of the hidden states); the backward scales it
  by the incoming gradient. No recomputation, and the same matmuls autograd would run.
- any other head (trained weights, LoRA on the head itself, tied embeddings being trained): each chunk's head and
  log-softmax are recomputed in the backward (activation checkpointing over the chunk), so the forward keeps
  only the chunk's hidden states.

On the same chunk the values are bit for bit those of `-cross_entropy(head(hidden).float() * (1 / T), targets)`.
Under autocast the head's matmuls run in the autocast dtype, as they would without chunking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# float32 logits per chunk: 2^24 entries = 64 MB (~340 positions of a 49k vocabulary, ~110 of a 152k one)
CHUNK_ENTRIES = 1 << 24


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ENTRIES // vocab)


def _chunk_logits(head: torch.nn.Module, hidden: torch.Tensor, scale: float) -> torch.Tensor:
    logits = head(hidden).float()
    return logits * scale if scale != 1.0 else logits


def _frozen_linear(head: torch.nn.Module) -> bool:
    return (
        type(head) is torch.nn.Linear
        and not head.weight.requires_grad
        and (head.bias is None or not head.bias.requires_grad)
    )


class _FrozenHeadLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, head, targets, scale: float, rows: int):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden.shape[0], rows):
            t = targets[s : s + rows]
            logp = F.log_softmax(_chunk_logits(head, hidden[s : s + rows], scale), -1)
            out[s : s + rows] = logp.gather(1, t[:, None])[:, 0]
            if grad is not None:
                # d logp_t / d logits = onehot(t) − softmax; through the 1/T scale and the head's matmul
                probs = logp.exp_().mul_(-scale)
                probs.scatter_add_(1, t[:, None], torch.full_like(t[:, None], scale, dtype=probs.dtype))
                grad[s : s + rows] = probs.to(head.weight.dtype) @ head.weight
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g[:, None].to(grad.dtype), None, None, None, None


def _checkpointed_logps(head, hidden, targets, scale):
    return -F.cross_entropy(_chunk_logits(head, hidden, scale), targets, reduction="none")


def head_logps(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[target] per position, float32. hidden [..., d], targets [...]."""
    shape, d = targets.shape, hidden.shape[-1]
    hidden, targets = hidden.reshape(-1, d), targets.reshape(-1)
    scale = 1.0 / temperature
    rows = chunk_rows(head.out_features)
    if _frozen_linear(head):  # the head's weights need no gradient: not inputs of the autograd function
        return _FrozenHeadLogps.apply(hidden, head, targets, scale, rows).view(shape)
    trained = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for s in range(0, hidden.shape[0], rows):
        h, t = hidden[s : s + rows], targets[s : s + rows]
        if trained:
            parts.append(checkpoint(_checkpointed_logps, head, h, t, scale, use_reentrant=False))
        else:
            parts.append(_checkpointed_logps(head, h, t, scale))
    return (torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)).view(shape)


def chunked_logits(hidden: torch.Tensor, head: torch.nn.Module, temperature: float = 1.0):
    """(first position, head(hidden) / temperature in float32 [rows, vocab]) a chunk of positions at a time, over
    hidden [..., d] flattened: for what needs the whole distribution (entropy) and no gradient."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    rows = chunk_rows(head.out_features)
    for s in range(0, hidden.shape[0], rows):
        yield s, _chunk_logits(head, hidden[s : s + rows], 1.0 / temperature)
