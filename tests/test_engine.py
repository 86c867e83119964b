"""The continuous-batching engine (camelid.engine.engine) on tiny random Llama/Qwen2 models, checked against
transformers' own `generate` and plain forwards: greedy equality under chunked prefill, preemption and prefix
caching, cancellation, seeds, stop strings, limits, log-probabilities, scoring and the run loop."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import CHATS, CORPUS, build_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from camelid.config import EngineConfig
from camelid.engine import Engine, SamplingParams

ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module")
def model_dirs(tiny_model, tmp_path_factory):
    return {"llama": tiny_model, "qwen2": build_model_dir(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")}


@pytest.fixture(scope="module")
def tok(model_dirs):
    return AutoTokenizer.from_pretrained(model_dirs["llama"])  # both archs share the tokenizer


_REFS: dict = {}


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def ref_model(model_dirs, arch):
    """An untouched model (the engine switches its own model's attention implementation) for HF comparisons."""
    if arch not in _REFS:
        _REFS[arch] = load(model_dirs[arch])
    return _REFS[arch]


def make_engine(model_dirs, arch="llama", **cfg):
    base = dict(dtype="float32", block_size=4, kv_cache_tokens=1024, max_batch_tokens=16, max_running=64)
    base.update(cfg)
    path = model_dirs[arch]
    return Engine(load(path), AutoTokenizer.from_pretrained(path), EngineConfig(**base))


def chat_ids(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=messages[-1]["role"] == "user")
    return tok.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    """Six prompts from 1 to 60 tokens, in mixed order."""
    ps = [
        tok.encode(CORPUS[0]),  # 17
        tok.encode(CORPUS[0])[:1],  # 1
        chat_ids(tok, CHATS[2][:5])[:60],  # 60
        tok.encode(CORPUS[2]),  # 6
        chat_ids(tok, CHATS[1][:3]),  # 38
        chat_ids(tok, CHATS[0][:1]),  # 22
    ]
    lengths = sorted(len(p) for p in ps)
    assert lengths[0] == 1 and lengths[-1] == 60 and len(set(lengths)) == 6
    return ps


def hf_greedy(model, prompt, eos, max_new_tokens, **kw) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=sorted(eos)[0],
            **kw,
        )
    new = out[0, len(prompt) :].tolist()
    for i, t in enumerate(new):  # compare up to (not including) the first eos
        if t in eos:
            return new[:i]
    return new


def forward_greedy(model, prompt, eos, max_new_tokens) -> list[int]:
    """Greedy decoding by re-running the whole sequence each step: no KV cache, so nothing a cache API changes."""
    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            t = int(
                model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
                .logits[0, -1]
                .argmax()
            )
            if t in eos:
                break
            new.append(t)
            ids.append(t)
    return new


def greedy(max_tokens, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kw)


def assert_pool_empty(engine):
    assert engine.pool.used == 0
    assert all(r == 0 for r in engine.pool.refs)
    assert not engine.running and not engine.waiting


# ---------------------------------------------------------------- greedy equality with transformers


@pytest.mark.parametrize("penalty", [1.0, 1.3], ids=["plain", "repetition_penalty"])
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_chunked_greedy_equals_hf_generate(model_dirs, prompts, arch, penalty):
    engine = make_engine(model_dirs, arch, block_size=4, max_batch_tokens=16)
    outs = engine.generate(prompts, greedy(24, repetition_penalty=penalty))
    ref = ref_model(model_dirs, arch)
    for prompt, out in zip(prompts, outs):
        expected = hf_greedy(ref, prompt, engine.eos, 24, repetition_penalty=penalty)
        assert out.token_ids == expected, f"prompt of {len(prompt)} tokens"
        assert out.finish_reason == ("length" if len(expected) == 24 else "stop")
        assert out.prompt_tokens == len(prompt)
    assert_pool_empty(engine)


def penalized_greedy(model, prompt, eos, max_new_tokens, repetition, presence, frequency) -> list[int]:
    """Greedy decoding with the penalties written out (transformers' repetition penalty over prompt + output, then
    OpenAI's presence and frequency penalties over output counts), re-running the whole sequence each step."""
    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            for j in set(ids):
                logits[j] = logits[j] / repetition if logits[j] > 0 else logits[j] * repetition
            for j in set(new):
                logits[j] -= presence + frequency * new.count(j)
            t = int(logits.argmax())
            if t in eos:
                break
            new.append(t)
            ids.append(t)
    return new


# (repetition, presence, frequency): all three at once; and a negative frequency penalty alone, under which tokens
# repeat, so the output depends on the counts themselves and not only on which ids were seen
PENALTIES = [(1.2, 0.5, 0.7), (1.0, 0.0, -0.4)]


@pytest.mark.parametrize("penalties", PENALTIES, ids=["all", "frequency"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_presence_frequency_and_repetition_penalties_equals_the_written_out_rule(
    model_dirs, prompts, arch, penalties
):
    """The penalties read ids and counts the engine keeps as tensors and grows by one entry per new id."""
    repetition, presence, frequency = penalties
    engine = make_engine(model_dirs, arch, block_size=4, max_batch_tokens=16)
    params = greedy(24, repetition_penalty=repetition, presence_penalty=presence, frequency_penalty=frequency)
    outs = engine.generate(prompts, params)
    ref = ref_model(model_dirs, arch)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == penalized_greedy(ref, prompt, engine.eos, 24, repetition, presence, frequency)
    assert_pool_empty(engine)


def test_prompt_longer_than_max_batch_tokens_alone(model_dirs, prompts):
    """A lone prompt longer than max_batch_tokens takes several prefill steps in which nothing is sampled."""
    engine = make_engine(model_dirs, "llama", max_batch_tokens=16)
    long = prompts[2]  # 60 tokens: 4 chunks of 16
    [out] = engine.generate([long], greedy(8))
    assert out.token_ids == hf_greedy(ref_model(model_dirs, "llama"), long, engine.eos, 8)
    assert_pool_empty(engine)


# ---------------------------------------------------------------- memory pressure and prefix cache


def test_preemption_keeps_greedy_output(model_dirs, prompts):
    reqs = [prompts[0], prompts[5], prompts[3], prompts[0][:10]]  # 17, 22, 6, 10 tokens, + 32 generated each
    params = greedy(32, ignore_eos=True)
    calm = make_engine(model_dirs, "llama", kv_cache_tokens=1024, max_batch_tokens=64).generate(reqs, params)
    tight = make_engine(model_dirs, "llama", kv_cache_tokens=96, block_size=4, max_batch_tokens=64)
    outs = tight.generate(reqs, params)
    assert tight.counters["preemptions"] > 0
    assert [o.token_ids for o in outs] == [o.token_ids for o in calm]
    assert all(o.finish_reason == "length" and len(o.token_ids) == 32 for o in outs)
    assert_pool_empty(tight)


def test_prefix_cache_reuses_blocks_and_keeps_output(model_dirs, tok):
    prefix = chat_ids(tok, CHATS[2][:4])  # a long shared conversation
    a = prefix + chat_ids(tok, [{"role": "user", "content": "Thanks"}])
    b = prefix + chat_ids(tok, [{"role": "user", "content": "And to ten?"}])
    params = greedy(12)
    engine = make_engine(model_dirs, "llama", block_size=4, prefix_cache=True, max_batch_tokens=128)
    [first] = engine.generate([a], params)
    assert first.cached_tokens == 0
    before = engine.counters["prompt_tokens_cached"]
    [second] = engine.generate([b], params)
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared >= len(prefix) >= 40
    assert second.cached_tokens > 0 and second.cached_tokens % 4 == 0
    assert second.cached_tokens == shared // 4 * 4  # every full block of the shared prefix
    assert engine.counters["prompt_tokens_cached"] - before == second.cached_tokens
    # the same prompt again: all but the last token's block-aligned prefix comes from the cache
    [again] = engine.generate([a], params)
    assert again.cached_tokens == (len(a) - 1) // 4 * 4
    assert_pool_empty(engine)

    plain = make_engine(model_dirs, "llama", block_size=4, prefix_cache=False, max_batch_tokens=128)
    ref = plain.generate([a, b], params)
    assert [first.token_ids, second.token_ids] == [r.token_ids for r in ref]
    assert again.token_ids == first.token_ids
    assert all(r.cached_tokens == 0 for r in ref)
    assert plain.counters["prompt_tokens_cached"] == 0


def test_prompt_tokens_cached_counts_only_tokens_served_from_the_cache(model_dirs, prompts, tok):
    """A request that waits for memory must not add its cached prefix to the counter at every attempted admission."""
    engine = make_engine(model_dirs, "llama", kv_cache_tokens=96, block_size=4, max_batch_tokens=64)  # 24 blocks
    system = prompts[2][:32]
    engine.generate([system + [5]], greedy(1))  # leaves 8 cached (idle) blocks
    hog = engine.submit(prompts[3], greedy(80, ignore_eos=True))
    while len(hog.tokens) < 64:  # 16 blocks: every free block is in use, only the 8 cached ones remain
        engine.step()
    late = engine.submit(system + tok.encode(CORPUS[1])[:20], greedy(4, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert late not in engine.running  # it had to wait: 5 more blocks than the pool can give
    while not (hog.finished and late.finished):
        engine.step()
    served = hog.result().cached_tokens + late.result().cached_tokens
    assert engine.counters["prompt_tokens_cached"] == served
    assert_pool_empty(engine)


# ---------------------------------------------------------------- cancellation


def test_closing_a_stream_aborts_and_frees_blocks(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    gen = engine.stream(prompts[0], greedy(200, ignore_eos=True))
    outs = [next(gen) for _ in range(3)]
    assert all(not o.finished and len(o.token_ids) == 1 for o in outs)
    assert engine.pool.used > 0
    gen.close()
    assert engine.counters["requests_abort"] == 1
    assert_pool_empty(engine)


def test_cancel_before_and_during_generation(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    req = engine.submit(prompts[0], greedy(200, ignore_eos=True))
    engine.cancel(req.id)
    engine.step()
    out = req.result(timeout=0)
    assert out.finish_reason == "abort" and out.token_ids == []
    assert_pool_empty(engine)

    req = engine.submit(prompts[0], greedy(200, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert len(req.generated) == 4 and engine.pool.used > 0
    engine.cancel(req.id)
    engine.step()
    out = req.result(timeout=0)
    assert out.finish_reason == "abort" and len(out.token_ids) == 4
    events = list(req)  # every Output it delivered, ending with the final one
    assert events[-1].finished and events[-1].finish_reason == "abort"
    assert_pool_empty(engine)


# ---------------------------------------------------------------- sampling


def test_seeds_top_k_and_greedy(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=128)
    p = prompts[3]

    def sampled(seed, **kw):
        return SamplingParams(max_tokens=16, temperature=1.0, seed=seed, ignore_eos=True, **kw)

    same = engine.generate([p, p], [sampled(7), sampled(7)])
    alone = engine.generate([p], sampled(7))
    assert same[0].token_ids == same[1].token_ids == alone[0].token_ids
    assert len(same[0].token_ids) == 16

    seeds = [(1, 2), (3, 4), (5, 6), (8, 9)]
    outs = engine.generate([p] * 8, [sampled(s) for pair in seeds for s in pair])
    pairs = [(outs[2 * i].token_ids, outs[2 * i + 1].token_ids) for i in range(4)]
    assert not all(x == y for x, y in pairs)

    [top1] = engine.generate([p], sampled(11, top_k=1))
    [g] = engine.generate([p], greedy(16, ignore_eos=True))
    assert top1.token_ids == g.token_ids
    assert_pool_empty(engine)


# ---------------------------------------------------------------- stop strings and limits


@pytest.mark.parametrize("length", [1, 3, 9])
def test_stop_string_truncates_and_never_leaks_in_stream(model_dirs, prompts, length):
    """Stop strings of one character up to several tokens long (the engine searches only the new text's tail)."""
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    p = prompts[0]
    [full] = engine.generate([p], greedy(40, ignore_eos=True))
    text = full.text
    start = next(
        i for i in range(3, len(text) - length) if "\ufffd" not in text[i : i + length] and text[i : i + length].strip()
    )
    stop = text[start : start + length]
    cut = text.find(stop)

    [out] = engine.generate([p], greedy(40, ignore_eos=True, stop=[stop]))
    assert out.finish_reason == "stop"
    assert out.text == text[:cut]
    assert stop not in out.text
    assert out.token_ids == full.token_ids[: len(out.token_ids)] and len(out.token_ids) < 40

    deltas = list(engine.stream(p, greedy(40, ignore_eos=True, stop=[stop])))
    assert deltas[-1].finished and deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == text[:cut]
    assert sum(len(d.token_ids) for d in deltas) == len(out.token_ids)
    assert_pool_empty(engine)


def test_limits_and_validation(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_model_len=64, max_batch_tokens=64)
    assert engine.max_model_len == 64
    [out] = engine.generate([prompts[3]], greedy(5, ignore_eos=True))
    assert out.finish_reason == "length" and len(out.token_ids) == 5 and out.completion_tokens == 5
    [zero] = engine.generate([prompts[3]], greedy(0))
    assert zero.finish_reason == "length" and zero.token_ids == []
    # exactly filling the context is allowed
    [fill] = engine.generate([prompts[2]], greedy(4, ignore_eos=True))
    assert fill.finish_reason == "length" and len(fill.token_ids) == 4

    with pytest.raises(ValueError, match="context"):
        engine.submit(prompts[2], greedy(5))
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], greedy(5))
    with pytest.raises(ValueError, match="outside"):  # would crash the shared forward for everyone
        engine.submit([1, engine.vocab], greedy(5))
    with pytest.raises(ValueError, match="'temperature'"):
        engine.submit(prompts[3], SamplingParams(temperature=-1))
    with pytest.raises(ValueError, match="'top_p'"):
        engine.submit(prompts[3], SamplingParams(top_p=0))
    assert engine.stats()["waiting"] == 0
    assert_pool_empty(engine)


def test_generate_with_an_invalid_prompt_leaves_nothing_queued(model_dirs, prompts):
    """A rejected batch must not leave its valid requests queued to run (unseen) during a later call."""
    engine = make_engine(model_dirs, "llama")
    with pytest.raises(ValueError):
        engine.generate([prompts[3], []], greedy(8))
    assert engine.stats()["waiting"] == 0


# ---------------------------------------------------------------- log-probabilities and scoring


def test_logprobs_match_a_reference_forward(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    p = prompts[5]
    [out] = engine.generate([p], greedy(8, logprobs=True, top_logprobs=3))
    assert len(out.token_ids) > 0 and len(out.logprobs) == len(out.token_ids)
    seq = p + out.token_ids
    with torch.no_grad():
        logits = ref_model(model_dirs, "llama")(input_ids=torch.tensor([seq])).logits[0].float()
    lp = torch.log_softmax(logits, -1)[len(p) - 1 : len(seq) - 1]
    for i, (tok_id, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert entry["token"] == tok_id
        assert entry["logprob"] == pytest.approx(float(lp[i, tok_id]), abs=1e-4)
        assert len(entry["top"]) == 3
        assert entry["top"][0][0] == tok_id  # greedy: the chosen token is the most likely
        values, ids = torch.topk(lp[i], 3)
        assert [t for t, _ in entry["top"]] == ids.tolist()
        assert [v for _, v in entry["top"]] == pytest.approx(values.tolist(), abs=1e-4)


def test_ptuning_prefix_is_served_from_pinned_blocks(model_dirs, prompts):
    """A P-Tuning v2 (peft prefix tuning) model: its learned KV prefix sits in pinned blocks ahead of every request;
    greedy output equals a full-sequence greedy loop through peft's forward, and the prefix blocks survive requests
    finishing. (Not peft's `generate`: with transformers >= 5.24 generate passes its own `cache`, and the model then
    ignores the prefix peft hands over as `past_key_values` — the reference, not the engine, went wrong.)"""
    from peft import PrefixTuningConfig, get_peft_model

    def build():
        torch.manual_seed(1)
        return get_peft_model(
            load(model_dirs["llama"]), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)
        ).eval()

    reference, served = build(), build()
    engine = Engine(
        served,
        AutoTokenizer.from_pretrained(model_dirs["llama"]),
        EngineConfig(dtype="float32", block_size=4, kv_cache_tokens=1024, max_batch_tokens=16),
    )
    for round_ in range(2):
        outs = engine.generate(prompts[:4], SamplingParams(max_tokens=12, temperature=0))
        for p, out in zip(prompts[:4], outs):
            assert out.token_ids == forward_greedy(reference, p, engine.eos, 12), (round_, len(p))
    assert engine.stats()["kv_blocks_used"] == 0 and engine.pool.used == 2  # 6 virtual tokens in 2 pinned blocks
    assert engine.max_model_len == 512 - 6


def test_a_served_model_still_runs_padded_batches_exactly(model_dirs, prompts):
    """The engine switches the model's attention implementation; ordinary forwards (training the policy PPO also
    samples from, scoring) must keep transformers' masks, left padding included."""
    engine = make_engine(model_dirs, "llama")
    engine.generate([prompts[0]], SamplingParams(max_tokens=2, temperature=0))
    seqs = [prompts[0], prompts[3]]
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(x)) + x for x in seqs])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs])
    with torch.no_grad():
        got = engine.model(input_ids=ids, attention_mask=mask).logits
        want = ref_model(model_dirs, "llama")(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)


# ---------------------------------------------------------------- the run loop


def test_run_loop_serves_and_shutdown_aborts_in_flight(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    expected = make_engine(model_dirs, "llama", max_batch_tokens=64).generate(prompts[:3], greedy(10))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        reqs = [engine.submit(p, greedy(10)) for p in prompts[:3]]
        results = [r.result(timeout=30) for r in reqs]
        assert [r.token_ids for r in results] == [e.token_ids for e in expected]
        assert all(r.finish_reason in ("length", "stop") for r in results)
        # generate() from another thread while the loop runs: the loop steps it
        [via_generate] = engine.generate([prompts[0]], greedy(10))
        assert via_generate.token_ids == expected[0].token_ids

        long = engine.submit(prompts[1], greedy(400, ignore_eos=True))
        first = next(iter(long))  # it is running
        assert not first.finished
        engine.shutdown(grace=0)
        out = long.result(timeout=30)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert out.finish_reason == "abort" and 0 < len(out.token_ids) < 400
        with pytest.raises(RuntimeError):
            engine.submit(prompts[1], greedy(4))
        assert_pool_empty(engine)
    finally:
        engine.shutdown(grace=0)
        thread.join(timeout=30)


def test_shutdown_grace_lets_short_requests_finish(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        req = engine.submit(prompts[0], greedy(6, ignore_eos=True))
        engine.shutdown(grace=30)
        thread.join(timeout=30)
        assert not thread.is_alive()
        out = req.result(timeout=0)
        assert out.finish_reason == "length" and len(out.token_ids) == 6
    finally:
        engine.shutdown(grace=0)
        thread.join(timeout=30)


# ---------------------------------------------------------------- one request's failure stays its own


def test_sampling_ranges_are_what_float32_can_compute(model_dirs, prompts):
    """temperature 1e-300 and repetition_penalty 1e-320 used to pass validation, then make inf/NaN probabilities
    in the shared step. A temperature too small to divide by samples greedily (its limit); the penalty is refused."""
    with pytest.raises(ValueError, match="'repetition_penalty' must be in"):
        SamplingParams(repetition_penalty=1e-320).check()
    with pytest.raises(ValueError, match="'repetition_penalty'"):
        SamplingParams(repetition_penalty=float("nan")).check()
    with pytest.raises(ValueError, match="'seed'"):
        SamplingParams(seed=2**64).check()  # torch's generator would raise inside submit
    tiny = SamplingParams(max_tokens=12, temperature=1e-300, seed=3, ignore_eos=True)
    tiny.check()
    engine = make_engine(model_dirs, "llama", max_batch_tokens=64)
    [out] = engine.generate([prompts[0]], tiny)
    [ref] = engine.generate([prompts[0]], greedy(12, ignore_eos=True))
    assert out.finish_reason == "length" and out.token_ids == ref.token_ids


def test_a_request_whose_sampling_fails_finishes_alone(model_dirs, prompts):
    """Params that bypass `check` (here a penalty that makes the logits inf) fail their own request with an error;
    the others in the same steps produce exactly what they produce without it."""
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    others = [prompts[0], prompts[3], prompts[5]]
    expected = make_engine(model_dirs, "llama", max_batch_tokens=128).generate(others, params)

    engine = make_engine(model_dirs, "llama", max_batch_tokens=128)
    good = [engine.submit(p, params) for p in others[:2]]
    bad_params = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    bad = engine.submit(prompts[1], bad_params)
    bad_params.repetition_penalty = 1e-320  # after check, as a caller building params by hand could
    good.append(engine.submit(prompts[5], params))
    for _ in range(3):
        engine.step()
    assert bad.finished and all(not g.finished for g in good)  # failed in the first step it sampled in
    while not all(g.finished for g in good):
        engine.step()
    failed = bad.result(timeout=0)
    assert failed.finish_reason == "error" and "not finite" in failed.error
    events = list(bad)
    assert events[-1].finished and events[-1].finish_reason == "error" and events[-1].error == failed.error
    assert [g.result().token_ids for g in good] == [e.token_ids for e in expected]
    assert all(g.result().finish_reason == "length" for g in good)
    assert engine.counters["requests_error"] == 1
    assert_pool_empty(engine)


# ---------------------------------------------------------------- fairness between owners


def test_one_owners_backlog_does_not_starve_another(model_dirs, prompts):
    """Owner a queues 30 requests; owner b's one, submitted after a's have started, is admitted at the next free
    slot instead of after a's whole backlog. Within one owner, first come first served."""
    engine = make_engine(model_dirs, "llama", max_running=2, max_batch_tokens=64)
    params = greedy(3, ignore_eos=True)
    backlog = [engine.submit(prompts[3], params, owner="a") for _ in range(30)]
    engine.step()
    engine.step()
    started_before = sum(r.computed > 0 for r in backlog)
    late = engine.submit(prompts[0], params, owner="b")
    steps = 0
    while late.computed == 0 and not late.finished:
        engine.step()
        steps += 1
    started_meanwhile = sum(r.computed > 0 or r.finished for r in backlog) - started_before
    assert started_meanwhile <= 1 and steps <= 3  # FIFO admitted all 28 waiting ones first
    while not all(r.finished for r in backlog):
        engine.step()
    starts = [r.first_token_at for r in backlog]
    assert starts == sorted(starts)  # a's own requests in the order a sent them
    [alone] = make_engine(model_dirs, "llama", max_batch_tokens=64).generate([prompts[0]], params)
    assert late.result().token_ids == alone.token_ids
    assert_pool_empty(engine)


def test_preemption_with_several_owners_keeps_greedy_output(model_dirs, prompts):
    reqs = [prompts[0], prompts[5], prompts[3], prompts[0][:10], prompts[4][:12], prompts[3]]
    params = greedy(32, ignore_eos=True)
    calm = make_engine(model_dirs, "llama", kv_cache_tokens=1024, max_batch_tokens=64).generate(reqs, params)
    tight = make_engine(model_dirs, "llama", kv_cache_tokens=96, block_size=4, max_batch_tokens=64)
    subs = [tight.submit(p, params, owner="abc"[i % 3]) for i, p in enumerate(reqs)]
    while not all(r.finished for r in subs):
        tight.step()
    assert tight.counters["preemptions"] > 0
    assert [r.result().token_ids for r in subs] == [o.token_ids for o in calm]
    assert_pool_empty(tight)


def test_cancelling_waiting_requests_of_one_owner(model_dirs, prompts):
    engine = make_engine(model_dirs, "llama", max_running=1, max_batch_tokens=64)
    a = [engine.submit(prompts[3], greedy(4, ignore_eos=True), owner="a") for _ in range(5)]
    b = engine.submit(prompts[3], greedy(4, ignore_eos=True), owner="b")
    engine.step()
    for r in a[1:]:
        engine.cancel(r.id)
    while not (a[0].finished and b.finished):
        engine.step()
    assert [r.result().finish_reason for r in a] == ["length"] + ["abort"] * 4
    assert b.result().finish_reason == "length"
    assert_pool_empty(engine)


# ---------------------------------------------------------------- threads


def test_engine_threads_is_applied_and_logged(model_dirs):
    import logging

    from camelid.utils import CamelidError

    before = torch.get_num_threads()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("camelid")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        want = before + 1
        make_engine(model_dirs, "llama", threads=want)
        assert torch.get_num_threads() == want
        assert any(f"{want} CPU threads" in m for m in records)
        torch.set_num_threads(before)
        make_engine(model_dirs, "llama")  # 0: torch's default stays
        assert torch.get_num_threads() == before
        assert "torch's default" in records[-1]
        with pytest.raises(CamelidError, match="engine.threads"):
            make_engine(model_dirs, "llama", threads=-1)
    finally:
        torch.set_num_threads(before)
        logger.removeHandler(handler)
        logger.setLevel(level)
