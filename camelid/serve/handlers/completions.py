"""POST /v1/completions: raw text (or token id) prompts, up to serve.max_prompts_per_request of them, n choices
each, `echo` and `logprobs` (OpenAI's legacy shape: tokens, token_logprobs, top_logprobs), whole or streamed."""

from __future__ import annotations

import secrets
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from camelid.serve.protocol import ApiError, CompletionRequest, clip, logprob_items, usage, usage_chunk
from camelid.serve.runtime import Api, seeded


def prompt_list(api: Api, r: CompletionRequest) -> list[str | list[int]]:
    """`prompt` as a list of prompts, each text or token ids, checked before anything is tokenized or decoded."""
    p = r.prompt
    if isinstance(p, str):
        prompts = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = list(p)
    if not prompts:
        raise ApiError(400, "'prompt' is empty", param="prompt")
    # before any tokenizing: a 55 KB body can hold thousands of prompts
    if len(prompts) > api.cfg.max_prompts_per_request:
        raise ApiError(
            400,
            f"'prompt' holds {len(prompts)} prompts; at most {api.cfg.max_prompts_per_request} "
            "per request (serve.max_prompts_per_request)",
            param="prompt",
        )
    vocab = api.engine.vocab
    for x in prompts:  # before decoding them for `echo`: the tokenizer overflows on ids like -1 or 2**70
        if not isinstance(x, str) and x and not all(0 <= t < vocab for t in x):
            bad = next(t for t in x if not 0 <= t < vocab)
            raise ApiError(
                400,
                f"'prompt' holds token id {clip(str(bad), 30)}, outside the vocabulary [0, {vocab})",
                param="prompt",
            )
    return prompts


async def complete(api: Api, request: Request, owner: str, r: CompletionRequest):
    api.check_model(r.model)
    sp = api.params(r, r.max_tokens, r.logprobs is not None, r.logprobs or 0)
    prompts = prompt_list(api, r)
    ids = [api.tok(x, add_special_tokens=False)["input_ids"] if isinstance(x, str) else list(x) for x in prompts]
    for x in ids:
        if not x:
            raise ApiError(400, "'prompt' is empty", param="prompt")
        if not api.fits(len(x), sp.max_tokens):
            raise api.too_long(len(x), sp.max_tokens)
    texts = [x if isinstance(x, str) else api.tok.decode(x) for x in prompts]
    flat = [x for x in ids for _ in range(r.n)]
    reqs, queue = api.start(request, owner, flat, seeded(sp, r.n) * len(ids), "prompt" if len(ids) > 1 else "n")
    head = {"id": "cmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": api.model_id}
    n_prompt = sum(len(x) for x in ids)

    def logprobs(entries: list[dict]) -> dict | None:
        if r.logprobs is None:
            return None
        items = logprob_items(api.engine.token_bytes, entries)
        return {
            "tokens": [e["token"] for e in items],
            "token_logprobs": [e["logprob"] for e in items],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in items],
        }

    def choice(i: int, text: str, finish_reason: str | None, entries: list[dict] | None) -> dict:
        return {
            "index": i,
            "text": text,
            "finish_reason": finish_reason,
            "logprobs": None if entries is None else logprobs(entries),
        }

    if not r.stream:
        done = await api.collect(reqs, queue)
        if done is None:
            return api.client_gone()
        choices = [
            choice(i, (texts[i // r.n] if r.echo else "") + c.text, c.finish_reason, c.logprobs)
            for i, c in enumerate(done)
        ]
        return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage(n_prompt, done)})

    async def events():
        chunk = {**head, "object": "text_completion"}
        if r.echo:
            for i in range(len(flat)):
                yield {**chunk, "choices": [choice(i, texts[i // r.n], None, None)]}
        async for i, out in api.outputs(reqs, queue):
            if out.text or out.finished:
                yield {**chunk, "choices": [choice(i, out.text, out.finish_reason, out.logprobs)]}
        if not all(q.finished for q in reqs):  # the client went away
            return
        if r.stream_options and r.stream_options.include_usage:
            yield usage_chunk(head, "text_completion", usage(n_prompt, [q.result() for q in reqs]))

    return api.sse_response(events())
