"""Per-request sampling parameters and the pure function that turns a batch of logits into next tokens.

Conventions (the same as vLLM, so numbers carry over): `repetition_penalty` acts on prompt and output tokens the
way `transformers.generate` does (positive logits divided, negative multiplied); `presence_penalty` and
`frequency_penalty` act on output tokens only, as in OpenAI's API. temperature 0 means greedy.
Returned log-probabilities are those of the model's distribution after penalties, before temperature and top-k/p.

Ranges are what float32 logits can be computed with: a temperature below MIN_TEMPERATURE samples as greedy (its
limit; dividing by it would overflow to inf), and repetition_penalty is kept to [0.01, 100]. A row that still turns
out non-finite (the model's own logits overflowing, params built without `check`) raises SamplingError, which
fails that request alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (as in vLLM): logits / 1e-300 are inf in float32
SEED_RANGE = (-(1 << 63), 1 << 64)  # what torch.Generator.manual_seed accepts


class SamplingError(ValueError):
    """One request's logits cannot be sampled from (NaN or inf): that request fails, not its batch."""


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
            ("repetition_penalty", 0.01 <= self.repetition_penalty <= 100, "must be in [0.01, 100]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "must be in [0, 20]"),
            ("seed", self.seed is None or SEED_RANGE[0] <= self.seed < SEED_RANGE[1], "must be in [-2**63, 2**64)"),
            (
                "stop",
                len(self.stop) <= 8 and all(isinstance(s, str) and s for s in self.stop),
                "must be up to 8 non-empty strings",
            ),
        ]
        for name, ok, why in rules:
            if not ok:
                raise ValueError(f"'{name}' {why} (got {getattr(self, name)!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


class IdCounts:
    """How often each token id occurred, as two tensors (`ids`, `counts`) that grow by one entry per new id, so a
    step's penalty reads them as they are. Rebuilding them from a dict or set every step cost O(distinct ids), which
    grows with the output (benchmarks/RESULTS.md, long generations). counting=False keeps the ids alone (a repetition
    penalty needs no counts; `counts` is then None)."""

    def __init__(self, tokens=(), device: torch.device | str = "cpu", counting: bool = True):
        self.where: dict[int, int] = {}  # id -> its entry
        ids, counts = [], []
        for t in tokens:
            if t in self.where:
                counts[self.where[t]] += 1
            else:
                self.where[t] = len(ids)
                ids.append(t)
                counts.append(1)
        self.ids = torch.tensor(ids, dtype=torch.long, device=device)
        self.counts = torch.tensor(counts, dtype=torch.float32, device=device) if counting else None

    def __len__(self) -> int:
        return len(self.where)

    def add(self, token: int) -> None:
        entry = self.where.get(token)
        if entry is None:
            self.where[token] = len(self.where)
            self.ids = torch.cat([self.ids, self.ids.new_tensor([token])])
            if self.counts is not None:
                self.counts = torch.cat([self.counts, self.counts.new_tensor([1.0])])
        elif self.counts is not None:
            self.counts[entry] += 1


def penalize(
    logits: torch.Tensor, params: SamplingParams, seen: IdCounts | None, output: IdCounts | None
) -> torch.Tensor:
    """Apply repetition (over `seen`, prompt + output ids) and presence/frequency penalties (over output counts)."""
    if params.repetition_penalty != 1.0 and seen:
        picked = logits[seen.ids]
        logits[seen.ids] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    if output and (params.presence_penalty or params.frequency_penalty):
        penalty = params.presence_penalty + params.frequency_penalty * output.counts
        logits[output.ids] -= penalty.to(logits.dtype)
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of (already penalized) logits: argmax, or temperature → top-k → top-p → sample.
    SamplingError when the row holds NaN or +inf, or nothing finite: argmax would pick a NaN, multinomial raise."""
    if params.greedy:
        best, token = torch.max(logits, -1)
        _check_finite(best)
        return int(token)
    scores = logits / params.temperature
    _check_finite(scores.max())
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


def _check_finite(best: torch.Tensor) -> None:
    # `best` is the row's max, which is NaN if any entry is: one reduction checks for NaN, +inf and an all -inf row
    # (-inf entries alone are fine: masked tokens)
    if not math.isfinite(float(best)):
        raise SamplingError(f"the logits are not finite after penalties and temperature (max {float(best)})")


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) and the `top` most likely alternatives, from one row of logits."""
    lp = torch.log_softmax(logits.float(), -1)
    alternatives = []
    if top:
        values, ids = torch.topk(lp, top)
        alternatives = [(int(i), float(v)) for i, v in zip(ids, values)]
    return float(lp[token]), alternatives
