"""Per-request sampling parameters and the pure function that turns a batch of logits into next tokens.

Conventions (the same as vLLM, so numbers carry over): `repetition_penalty` acts on prompt and output tokens the
way `transformers.generate` does (positive logits divided, negative multiplied); `presence_penalty` and
`frequency_penalty` act on output tokens only, as in OpenAI's API. temperature 0 means greedy.
Returned log-probabilities are those of the model's distribution after penalties, before temperature and top-k/p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def check(self) -> None:
        """ValueError naming the field, for the server to answer 400 with."""
        rules = [
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", 0 <= self.temperature <= 100, "must be in [0, 100]"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "must be in [0, 20]"),
            ("stop", len(self.stop) <= 8 and all(isinstance(s, str) and s for s in self.stop),
             "must be up to 8 non-empty strings"),
        ]
        for name, ok, why in rules:
            if not ok:
                raise ValueError(f"'{name}' {why} (got {getattr(self, name)!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, output_counts: dict[int, int]) -> torch.Tensor:
    """Apply repetition (over `seen`, prompt + output ids) and presence/frequency penalties (over output counts)."""
    if params.repetition_penalty != 1.0 and seen.numel():
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if output_counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(output_counts), dtype=torch.long, device=logits.device)
        counts = torch.tensor(list(output_counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of (already penalized) logits: argmax, or temperature → top-k → top-p → sample."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cum = torch.softmax(ordered, -1).cumsum(-1)
        drop = cum - torch.softmax(ordered, -1) >= params.top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scores, -1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) and the `top` most likely alternatives, from one row of logits."""
    lp = torch.log_softmax(logits.float(), -1)
    alternatives = []
    if top:
        values, ids = torch.topk(lp, top)
        alternatives = [(int(i), float(v)) for i, v in zip(ids, values)]
    return float(lp[token]), alternatives
