"""A request's state inside the engine, and what it hands back: `Output` (a streamed delta, or the last one) and
`Completion` (the whole result).

A `Request` holds its prompt plus the tokens generated so far, how many of them have KV in the cache, its block
table and prefix-cache position, its sampler state (penalty counts, seeded generator) and its text so far. The
engine changes these fields as it schedules and steps; the request itself only delivers: to its `on_output`
callback, or to a queue read by iterating it, and `result()` waits for the end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from camelid.engine.detok import Detokenizer
from camelid.engine.sampling import IdCounts, SamplingParams


@dataclass
class Output:
    """What a request produced since its last Output (streaming) or in all (the final one, see `Request.result`)."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort | error
    logprobs: list[dict] = field(default_factory=list)  # {token, logprob, top: [(token, logprob)]}
    error: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    logprobs: list[dict]
    error: str | None = None
    stop_token: int | None = None  # the end-of-sequence token that ended it (not in token_ids): PPO trains on it

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Request:
    def __init__(
        self,
        rid: str,
        prompt: list[int],
        params: SamplingParams,
        on_output: Callable | None,
        detok: Detokenizer,
        owner: str = "",
    ):
        self.id, self.prompt, self.params, self.owner = rid, list(prompt), params, owner
        self.tokens = list(prompt)  # prompt + generated; KV exists for tokens[:computed]
        self.generated: list[int] = []
        self.computed = 0
        self.blocks: list[int] = []
        self.hashed, self.last_hash = 0, b""  # blocks registered in the prefix cache, and the chain's head
        self.cached_tokens = 0
        self.seen: IdCounts | None = None  # prompt + output ids, kept once a repetition penalty needs them
        self.counts: IdCounts | None = None  # output ids, kept once a presence or frequency penalty needs them
        self.logprobs: list[dict] = []
        self.text, self.sent, self.detok = "", 0, detok  # text only grows (whole characters); sent: chars delivered
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.generator = None
        self.stop_token: int | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.arrived = time.perf_counter()
        self.first_token_at: float | None = None
        self._done = threading.Event()
        self._events: queue.Queue | None = None if on_output else queue.Queue()
        self._on_output = on_output or self._events.put

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} still running after {timeout}s")
        return Completion(
            self.text,
            list(self.generated),
            self.finish_reason,
            len(self.prompt),
            self.cached_tokens,
            self.logprobs,
            self.error,
            self.stop_token,
        )

    def __iter__(self) -> Iterator[Output]:
        """Outputs as they come (only for requests submitted without `on_output`)."""
        assert self._events is not None, "this request delivers to its on_output callback"
        while True:
            out = self._events.get()
            yield out
            if out.finished:
                return
