"""The generation engine behind `chat`, `serve`, evaluation and PPO rollouts: continuous batching over a paged KV cache.

Requests join and leave the running batch at every step. Each step packs every running request's new tokens into
one forward: one token for requests that are decoding, a chunk of prompt for those being admitted (chunked prefill
within `max_batch_tokens`). KV memory comes in blocks from `kv.BlockPool` as a request grows; full blocks are
shared through the prefix cache, so a system prompt or a session's earlier turns are computed once while they stay
cached. When memory runs out, the newest request is preempted: its blocks are released and it is recomputed later
from its prompt plus what it has generated so far, keeping its sampler state, so its output is what it would have
been without the interruption. Waiting requests are admitted fairly between owners (API keys): one from each in
turn, so one owner's backlog cannot starve another's. A request whose sampling fails (non-finite logits) finishes
alone with an error; the others in its step go on. Text comes out in whole characters (`detok`).

This file holds the step loop and the scheduler (`_schedule`, `_reserve`, `_preempt`: admission, block reservation,
preemption), which work on the running list, the waiting queue (`waiting`) and the block pool together. A request's
state is `request.Request`; attention over the cache is `paged`; next-token choice is `sampling`.

    engine = Engine.load("runs/quickstart")
    [out] = engine.generate([tokenizer_ids], SamplingParams(max_tokens=64, temperature=0))
    for delta in engine.stream(ids, params): print(delta.text, end="")
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch

from camelid.config import EngineConfig
from camelid.engine import paged
from camelid.engine.detok import Detokenizer, TokenBytes
from camelid.engine.kv import BlockPool, KVCache, chain_hash
from camelid.engine.request import Completion, Output, Request
from camelid.engine.sampling import IdCounts, SamplingParams, choose, penalize, token_logprobs
from camelid.engine.waiting import WaitQueue
from camelid.utils import CamelidError, fast_bf16

log = logging.getLogger("camelid")

CPU_KV_BYTES = 2 << 30


class Engine:
    def __init__(self, model, tokenizer, cfg: EngineConfig | None = None):
        self.cfg = cfg = cfg or EngineConfig()
        set_threads(cfg)
        kind = next(iter(model.peft_config.values())).peft_type.value if hasattr(model, "peft_config") else None
        if kind not in (None, "LORA", "PREFIX_TUNING"):
            raise CamelidError(f"the engine cannot serve a {kind} adapter; train with lora, ptuning or full")
        mc = model.config.get_text_config()
        if getattr(mc, "attn_logit_softcapping", None):
            raise CamelidError(f"{mc.model_type}: soft-capped attention logits are not supported by the paged engine")
        types = getattr(mc, "layer_types", None)
        uses_window = "sliding_attention" in types if types else getattr(mc, "use_sliding_window", True)
        # paged attention sees the whole context: exact for sliding-window layers while the context fits the window
        window = getattr(mc, "sliding_window", None) if uses_window else None
        model.config._attn_implementation = paged.NAME
        mc._attn_implementation = paged.NAME
        self.model, self.tokenizer = model.eval(), tokenizer
        # P-Tuning v2 (peft prefix tuning) is a learned KV prefix of P virtual tokens at positions 0..P-1: it is
        # written once into pinned blocks every request's context starts with, and the base model runs the steps.
        self.step_model = model.get_base_model() if kind == "PREFIX_TUNING" else model
        self.device = next(self.step_model.parameters()).device
        layers = mc.num_hidden_layers
        kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        dtype = next(self.step_model.parameters()).dtype
        per_token = KVCache.bytes_per_token(layers, kv_heads, head_dim, dtype)
        tokens = cfg.kv_cache_tokens
        if not tokens:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                tokens = int(free * 0.85) // per_token
            else:
                tokens = CPU_KV_BYTES // per_token
        bs = cfg.block_size
        num_blocks = max(1, tokens // bs)
        self.pool = BlockPool(num_blocks, bs)
        self.cache = KVCache(layers, num_blocks, bs, kv_heads, head_dim, dtype, self.device)
        no_prefix = torch.empty(0, dtype=torch.long)
        self.prefix_slots = self._write_prefix(model) if kind == "PREFIX_TUNING" else no_prefix
        n_prefix = len(self.prefix_slots)
        limits = [
            (num_blocks - self.pool.used) * bs,
            (getattr(mc, "max_position_embeddings", None) or 1 << 30) - n_prefix,
        ]
        limits += [window - n_prefix] if window else []
        self.max_model_len = min(limits + ([cfg.max_model_len] if cfg.max_model_len else []))
        self.eos = self._eos_ids(model, tokenizer)
        self.vocab = self.step_model.get_input_embeddings().num_embeddings
        self.token_bytes = TokenBytes(tokenizer)  # token id → its raw bytes: for the text and for logprobs
        self.waiting = WaitQueue()
        self.running: list[Request] = []
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled: set[str] = set()
        self._wake = threading.Condition()
        self._ids = itertools.count()
        self._step_lock = threading.Lock()  # one thread steps at a time: a loop, or a caller driving its own requests
        self._looping = False
        self._accepting, self._stop = True, False
        self.counters = collections.Counter()
        self._recent: collections.deque = collections.deque()  # (time, generated tokens) for tokens/s
        log.info(
            "engine: %d KV blocks of %d tokens (%.2f GiB), max_model_len %d, %d CPU threads%s",
            num_blocks,
            bs,
            num_blocks * bs * per_token / 2**30,
            self.max_model_len,
            torch.get_num_threads(),
            "" if cfg.threads else " (torch's default; engine.threads sets it)",
        )

    @torch.inference_mode()
    def _write_prefix(self, model) -> torch.Tensor:
        prompt = model.get_prompt(batch_size=1)
        layers = [(layer.keys, layer.values) for layer in prompt.layers] if hasattr(prompt, "layers") else list(prompt)
        n = layers[0][0].shape[2]
        blocks = [self.pool.allocate() for _ in range(math.ceil(n / self.pool.block_size))]  # never released
        slots = self._slots(blocks, n)
        index = slots.to(self.device)
        for i, (k, v) in enumerate(layers):
            self.cache.k[i].index_copy_(0, index, k[0].transpose(0, 1).to(self.cache.k[i].dtype))
            self.cache.v[i].index_copy_(0, index, v[0].transpose(0, 1).to(self.cache.v[i].dtype))
        return slots

    @classmethod
    def load(cls, target: str, cfg: EngineConfig | None = None, trust_remote_code: bool = False) -> Engine:
        from camelid.model import load_for_inference

        cfg = cfg or EngineConfig()
        set_threads(cfg)  # before loading: dequantizing a GGUF or casting runs on them too
        dtype = (
            cfg.dtype
            if cfg.dtype != "auto"
            else "bfloat16"
            if fast_bf16("cuda" if torch.cuda.is_available() else "cpu")
            else "float32"
        )
        model, tok = load_for_inference(target, dtype=dtype, trust_remote_code=trust_remote_code)
        if torch.cuda.is_available():
            model = model.cuda()
        return cls(model, tok, cfg)

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids = set()
        for src in (getattr(model, "generation_config", None), tokenizer):
            eos = getattr(src, "eos_token_id", None)
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        return ids

    # ------------------------------------------------------------------ public API (any thread)

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams | None = None,
        on_output: Callable[[Output], None] | None = None,
        request_id: str | None = None,
        owner: str = "",
    ) -> Request:
        """Queue a request. ValueError (the reason, for a 400) when it cannot run; RuntimeError when shutting down.
        `owner` (the API key's owner id): waiting requests are admitted in turn between owners."""
        params = params or SamplingParams()
        self.check(prompt, params)
        req = Request(
            request_id or f"req-{next(self._ids)}", prompt, params, on_output, Detokenizer(self.token_bytes), owner
        )
        self._incoming.put(req)
        with self._wake:
            self._wake.notify()
        return req

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        params.check()
        if not self._accepting:
            raise RuntimeError("the engine is shutting down")
        if not prompt:
            raise ValueError("the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= self.vocab:
            raise ValueError(f"the prompt holds token ids outside [0, {self.vocab})")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context of {self.max_model_len} tokens"
            )

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[Completion]:
        """Blocking: one Completion per prompt, all run together (stepped by this thread unless a loop runs)."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        for p, sp in zip(prompts, plist):  # all or nothing: no half-submitted batch runs unseen
            self.check(p, sp)
        reqs = [self.submit(p, sp, on_output=lambda o: None) for p, sp in zip(prompts, plist)]
        for r in reqs:
            self._drive(r)
        return [r.result() for r in reqs]

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[Output]:
        """Outputs of one request as they come (stepped by this thread unless a loop runs)."""
        req = self.submit(prompt, params)
        try:
            while True:
                while req._events.empty() and not req.finished and not self._looping:
                    self._step_once()
                out = req._events.get()
                yield out
                if out.finished:
                    return
        finally:
            if not req.finished:
                self.cancel(req.id)
                if not self._looping:
                    with self._step_lock:
                        self._reap_cancelled()

    def _drive(self, req: Request) -> None:
        while not req.finished:
            if self._looping:
                req.wait(0.1)
            else:
                self._step_once()

    def _step_once(self) -> None:
        with self._step_lock:
            self.step()

    def cancel(self, request_id: str) -> None:
        """Stop a request at the next step; its KV blocks go back to the pool and it finishes with 'abort'."""
        self._cancelled.add(request_id)
        with self._wake:
            self._wake.notify()

    def stats(self) -> dict:
        now = time.perf_counter()
        while self._recent and now - self._recent[0][0] > 10:
            self._recent.popleft()
        span = now - self._recent[0][0] if len(self._recent) > 1 else 0
        return {
            "waiting": len(self.waiting) + self._incoming.qsize(),
            "running": len(self.running),
            "kv_blocks_used": self.pool.used - math.ceil(len(self.prefix_slots) / self.pool.block_size),
            "kv_blocks_cached": len(self.pool.idle),
            "kv_blocks_total": self.pool.num_blocks,
            "tokens_per_second": sum(n for _, n in self._recent) / span if span else 0.0,
            **self.counters,
        }

    def run(self) -> None:
        """Step until `shutdown`, in the calling thread: the server's main thread. On CPU, torch's OpenMP pool is
        fastest in the thread that first used it (a second thread measured ~1.8x slower per matmul), which is why
        the loop runs in the main thread and HTTP in another rather than the other way round."""
        self._looping = True
        try:
            while not self._stop:
                with self._wake:
                    if not self._busy() and not self._cancelled and not self._stop:
                        self._wake.wait(timeout=0.5)
                if self._stop:
                    break
                try:
                    self._step_once()
                except Exception as e:  # a failing step fails its requests, never the server
                    log.exception("engine step failed")
                    for req in list(self.running):
                        self._finish(req, "error", f"{type(e).__name__}: {e}")
        finally:
            self._looping = False
            for req in self._drain_all():
                self._finish(req, "abort")

    def shutdown(self, grace: float = 0.0) -> None:
        """Stop taking requests, let in-flight ones finish for up to `grace` seconds, then make `run` abort the rest
        and return. Called from another thread than the one in `run`."""
        self._accepting = False
        deadline = time.monotonic() + grace
        while self._busy() and self._looping and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop = True
        with self._wake:
            self._wake.notify()

    def _busy(self) -> bool:
        return bool(self.waiting or self.running or not self._incoming.empty())

    def _drain_all(self) -> list[Request]:
        while not self._incoming.empty():
            self.waiting.push(self._incoming.get())
        reqs = list(self.running) + list(self.waiting)
        self.running, self.waiting = [], WaitQueue()
        return reqs

    @torch.inference_mode()
    def step(self) -> None:
        """One forward over every running request; admits, preempts, samples, finishes."""
        self._reap_cancelled()
        plan = self._schedule()
        if not plan:
            return
        ids, pos, rows, keep, sampling = [], [], [], [], []
        offset = len(self.prefix_slots)  # P-Tuning's virtual tokens come first in every context
        for req, n in plan:
            start = req.computed
            ids.extend(req.tokens[start : start + n])
            pos.extend(range(offset + start, offset + start + n))
            rows.append((n, torch.cat([self.prefix_slots, self._slots(req.blocks, start + n)])))
            if start + n == len(req.tokens):
                keep.append(len(ids) - 1)
                sampling.append(req)
        batch = paged.build_batch(self.cache, rows, self.device)
        logits = (
            self.step_model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=torch.tensor([pos], device=self.device),
                attention_mask=paged.NO_MASK.to(self.device),
                use_cache=False,
                paged=batch,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device),
            )
            .logits[0]
            .float()
        )
        self.counters["prompt_tokens_computed"] += sum(n for r, n in plan if r.computed < len(r.prompt))
        for req, n in plan:
            req.computed += n
            self._register_full_blocks(req)
        for row, req in zip(logits, sampling):
            try:
                self._sample(req, row)
            except Exception as e:  # one request's sampling (its params, its logits) fails that request alone
                log.warning("request %s failed in sampling: %s: %s", req.id, type(e).__name__, e)
                try:
                    self._finish(req, "error", f"sampling failed: {type(e).__name__}: {e}")
                except Exception:  # its own on_output callback raised; the request is finished all the same
                    log.exception("request %s: delivering its error failed", req.id)
        now = time.perf_counter()
        self._recent.append((now, len(sampling)))

    def _reap_cancelled(self) -> None:
        while not self._incoming.empty():
            self.waiting.push(self._incoming.get())
        if self._cancelled:
            cancelled, self._cancelled = self._cancelled, set()
            for req in [r for r in self.running if r.id in cancelled] + self.waiting.take(lambda r: r.id in cancelled):
                self._finish(req, "abort")

    def _schedule(self) -> list[tuple[Request, int]]:
        bs, budget, plan = self.pool.block_size, self.cfg.max_batch_tokens, []
        for req in list(self.running):
            if budget == 0:
                break
            if req not in self.running:  # preempted to make room for an older request
                continue
            n = min(len(req.tokens) - req.computed, budget)
            if not self._reserve(req, req.computed + n):
                continue
            plan.append((req, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_running:
            req = self.waiting.peek()
            if req.params.max_tokens == 0:
                self.waiting.pop()
                self._finish(req, "length")
                continue
            if self.cfg.prefix_cache and not req.blocks:
                # at least the last token is recomputed: its logits start the generation
                req.blocks, req.last_hash = self.pool.match(req.tokens, (len(req.tokens) - 1) // bs)
                req.hashed = len(req.blocks)
                req.computed = len(req.blocks) * bs
                if not req.generated:  # a first admission, not the return of a preempted request
                    req.cached_tokens = req.computed
            n = min(len(req.tokens) - req.computed, budget)
            need = math.ceil((req.computed + n) / bs) - len(req.blocks)
            if not self.pool.can_allocate(need):
                if not self.running:  # nothing to wait for: the request can never fit
                    self.waiting.pop()
                    self._finish(req, "error", "the KV cache is too small for this request")
                    continue
                self.pool.release(req.blocks)
                req.blocks, req.computed, req.hashed, req.last_hash = [], 0, 0, b""
                break
            req.blocks.extend(self.pool.allocate() for _ in range(need))
            if not req.generated:
                self.counters["prompt_tokens_cached"] += req.cached_tokens
            self.waiting.pop()
            self.running.append(req)
            plan.append((req, n))
            budget -= n
        return plan

    def _reserve(self, req: Request, upto: int) -> bool:
        """Blocks for the first `upto` tokens of a running request, preempting the newest others if needed."""
        need = math.ceil(upto / self.pool.block_size) - len(req.blocks)
        while need > 0 and not self.pool.can_allocate(need):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is req:
                return False
        req.blocks.extend(self.pool.allocate() for _ in range(max(0, need)))
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.pool.release(req.blocks)
        req.blocks, req.computed, req.hashed, req.last_hash = [], 0, 0, b""
        self.waiting.push_front(req)
        self.counters["preemptions"] += 1

    def _slots(self, blocks: list[int], upto: int) -> torch.Tensor:
        """Cache slots of positions 0..upto-1 of a block table, as a CPU tensor: built from the table by tensor ops,
        since a per-position Python loop made every decode step's host work grow with the context."""
        bs = self.pool.block_size
        table = torch.tensor(blocks[: -(-upto // bs)], dtype=torch.long)
        return (table[:, None] * bs + torch.arange(bs)).view(-1)[:upto]

    def _register_full_blocks(self, req: Request) -> None:
        if not self.cfg.prefix_cache:
            return
        bs = self.pool.block_size
        while (req.hashed + 1) * bs <= req.computed:
            i = req.hashed
            req.last_hash = chain_hash(req.last_hash, req.tokens[i * bs : (i + 1) * bs])
            self.pool.register(req.blocks[i], req.last_hash)
            req.hashed += 1

    def _sample(self, req: Request, logits: torch.Tensor) -> None:
        p = req.params
        if p.ignore_eos and self.eos:
            logits[list(self.eos)] = float("-inf")
        # the ids a penalty reads, counted once, then one entry more per new id (not rebuilt every step)
        if p.repetition_penalty != 1.0 and req.seen is None:
            req.seen = IdCounts(req.tokens, logits.device, counting=False)
        if (p.presence_penalty or p.frequency_penalty) and req.counts is None:
            req.counts = IdCounts(req.generated, logits.device)
        logits = penalize(logits, p, req.seen, req.counts)
        token = choose(logits, p, req.generator)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        self.counters["generated_tokens"] += 1
        if token in self.eos:
            req.stop_token = token
            self._finish(req, "stop")
            return
        req.tokens.append(token)
        req.generated.append(token)
        for counted in (req.seen, req.counts):
            if counted is not None:
                counted.add(token)
        entries = []
        if p.logprobs:
            lp, top = token_logprobs(logits, token, p.top_logprobs)
            entries = [{"token": token, "logprob": lp, "top": top}]
            req.logprobs.extend(entries)
        before = len(req.text)
        req.text += req.detok.add(token)
        # a stop string not found before this token can only end in its new text: search the tail, not the whole
        stop_at = min(
            (i for i in (req.text.find(s, max(0, before - len(s) + 1)) for s in p.stop) if i >= 0), default=-1
        )
        if stop_at >= 0:
            req.text = req.text[:stop_at]
            self._finish(req, "stop", tokens=[token], logprobs=entries)
        elif len(req.generated) >= p.max_tokens or len(req.tokens) >= self.max_model_len:
            self._finish(req, "length", tokens=[token], logprobs=entries)
        else:
            self._emit(req, [token], entries)

    def _emit(self, req: Request, tokens: list[int], logprobs: list[dict]) -> None:
        # hold back anything that could still become a stop string (an incomplete character never reaches req.text)
        hold = max((len(s) - 1 for s in req.params.stop), default=0)
        end = max(req.sent, len(req.text) - hold)
        text, req.sent = req.text[req.sent : end], end
        req._on_output(Output(req.id, text, tokens, logprobs=logprobs))

    def _finish(
        self,
        req: Request,
        reason: str,
        error: str | None = None,
        tokens: list[int] | None = None,
        logprobs: list[dict] | None = None,
    ) -> None:
        """The request's last Output carries its last token (if any), the rest of its text, and why it ended.
        A waiting request is taken off the queue by the caller (a scan of a long backlog per request is quadratic)."""
        if req.finished:
            return
        req.finish_reason, req.error = reason, error
        if req in self.running:
            self.running.remove(req)
        self.pool.release(req.blocks)
        req.blocks = []
        self.counters[f"requests_{reason}"] += 1
        tail, req.sent = req.text[req.sent :], len(req.text)
        req._done.set()  # before the last Output, so whoever receives it can take `result()` at once
        req._on_output(Output(req.id, tail, tokens or [], True, reason, logprobs or [], error))


def set_threads(cfg: EngineConfig) -> None:
    """engine.threads: torch's CPU threads for the process (0 leaves torch's default, one per core). On a host whose
    cores are busy with other work, fewer threads than cores was faster (2 shared cores: 1 thread 3.5x faster)."""
    if cfg.threads < 0:
        raise CamelidError(f"engine.threads must be >= 0 (got {cfg.threads}); 0 leaves torch's default")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
