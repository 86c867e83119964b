"""The API's wire format, and nothing else: OpenAI's request bodies as strict pydantic models (an unknown field, a
wrong type such as "2" for an integer, or a NaN/Infinity is a 400 naming it, as OpenAI does), the error it answers
with in OpenAI's shape, and the response payloads (chat completions whole or as stream chunks, usage, logprobs),
each built in one place.

Bounds beyond OpenAI's own keep one request from failing the batch it runs in: a `seed` must fit the 64-bit
generator, and `repetition_penalty` stays in [0.01, 100], since dividing float32 logits by less than ~1e-38
turns them into inf and the step's sampling into NaN for every request in it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prediction"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    @property
    def kind(self) -> str:
        """What /metrics counts it as: its code, or its type when it has none."""
        return self.code or self.type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        # ASCII-escaped: a message that quotes a client's text can never fail to encode (a lone surrogate would)
        return Response(json.dumps(self.body()), status_code=self.status, media_type="application/json")


SEED = Field(None, ge=-(2**63), le=2**63 - 1)  # torch.Generator's range (seed + choice index stays inside it)
REPETITION_PENALTY = Field(1.0, ge=0.01, le=100)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def plain(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingFields(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = SEED
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = REPETITION_PENALTY
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    session_id: str | None = None
    kb: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class KbSearch(_Strict):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)
    retriever: Literal["hybrid", "bm25", "dense"] | None = None


class KbAsk(_Strict):
    question: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # default rag.temperature (greedy)
    repetition_penalty: float = REPETITION_PENALTY
    seed: int | None = SEED


class SessionCreate(_Strict):
    messages: list[Message] = Field(default_factory=list)
    session_id: str | None = Field(None, min_length=1, max_length=128)


MAX_DEPTH = 64  # JSON nesting; OpenAI's bodies need 5


class SessionRename(_Strict):
    title: str = Field(max_length=200)


class KbCreate(_Strict):
    name: str = Field(min_length=1, max_length=64)


def clip(text: str, n: int = 80) -> str:
    """A client's text quoted in an error, cut so a huge field name or model id cannot make a huge error."""
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def session_not_found(sid: str) -> ApiError:
    return ApiError(404, f"session '{clip(sid)}' not found", param="session_id", code="session_not_found")


def session_deleted(sid: str) -> ApiError:
    return ApiError(
        409,
        f"session '{clip(sid)}' was deleted while this turn ran; the turn was aborted",
        param="session_id",
        code="session_deleted",
    )


def max_tokens_too_large(limit: int) -> ApiError:
    return ApiError(400, f"'max_tokens' must be <= {limit} on this server", param="max_tokens")


def check_content_type(value: str | None) -> None:
    """A body declared as something other than JSON (a form, text/plain) is refused rather than guessed at;
    no Content-Type at all is read as JSON."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415, f"Content-Type must be application/json (got '{clip(media)}')", code="unsupported_media_type"
        )


def _check_tree(body) -> None:
    """Walk the parsed body once (iteratively: its depth is the client's choice) and refuse what no field may
    hold: nesting past MAX_DEPTH, and strings with a lone UTF-16 surrogate ("\\ud800" is valid JSON but not
    Unicode: the tokenizer and SQLite cannot take it), naming where."""
    stack = [(body, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"the JSON body is nested deeper than {MAX_DEPTH} levels", code="invalid_json")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                raise ApiError(
                    400,
                    f"a field name under '{clip(path) or 'the body'}' holds a lone UTF-16 "
                    "surrogate, which is not valid Unicode",
                    param=path or None,
                )
            if isinstance(value, str):
                if _SURROGATE.search(value):
                    raise ApiError(
                        400, f"'{clip(where)}' holds a lone UTF-16 surrogate, which is not valid Unicode", param=where
                    )
            elif isinstance(value, (dict, list)):
                stack.append((value, where, depth + 1))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_union_tag(part) -> bool:
    """pydantic names the branch of a union it tried in the error's location ("str", "list[int]"): not a field."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def describe(e: ValidationError) -> ApiError:
    """The 400 for a body that does not fit its schema: the field's dotted path and why. Of a union's branches,
    the error reaching deepest says most (it is the branch the value nearly matched)."""
    errors = e.errors()
    extra = [x for x in errors if x["type"] == "extra_forbidden"]
    err = extra[0] if extra else max(errors, key=lambda x: len(x["loc"]))
    param = ".".join(str(x) for x in err["loc"] if extra or not _is_union_tag(x))
    msg = "unrecognized request argument" if extra else err["msg"]
    return ApiError(400, f"'{clip(param)}': {msg}", param=clip(param))


def parse(raw: bytes, schema: type[BaseModel]) -> BaseModel:
    """A request body as `schema`, or the ApiError saying what is wrong with it."""
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise ApiError(400, f"the JSON body is nested deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    except ValueError as e:  # also bad UTF-8 and integers too long to convert
        raise ApiError(400, f"invalid JSON body: {clip(str(e), 200)}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    _check_tree(body)
    for name in IGNORED_FIELDS & body.keys():
        body.pop(name)
    try:
        return schema.model_validate(body)
    except ValidationError as e:
        raise describe(e) from None


# ---------------------------------------------------------------- response payloads


def usage(prompt_tokens: int, done: Sequence) -> dict:
    """OpenAI's usage of a call whose generations (engine Completions) are `done`; cached_tokens is the prompt
    prefix every one of them reused."""
    completion = sum(c.completion_tokens for c in done)
    cached = min(c.cached_tokens for c in done) if done else 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def logprob_items(token_bytes, entries: list[dict]) -> list[dict]:
    """OpenAI's logprob items. `bytes` are the token's raw bytes (`token_bytes[id]`), so that text can be rebuilt
    from tokens that each hold part of a character; `token` is their text, with bytes that are not a whole
    character written as \\xNN (not U+FFFD, which would make different fragments the same key in top_logprobs)."""

    def tok(t: int, lp: float) -> dict:
        raw = token_bytes[t]
        return {"token": raw.decode("utf-8", "backslashreplace"), "logprob": lp, "bytes": list(raw)}

    return [{**tok(e["token"], e["logprob"]), "top_logprobs": [tok(t, lp) for t, lp in e["top"]]} for e in entries]


def chat_choice(index: int, text: str, finish_reason: str | None, logprobs: list[dict] | None = None) -> dict:
    """One choice of a whole chat completion; `logprobs` are items from `logprob_items`, None when not asked."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }


def chat_completion(head: dict, choices: list[dict], usage: dict, cites: list[dict] | None = None) -> dict:
    """A whole chat completion; `head` is {id, created, model[, session_id]}. A knowledge-base answer carries
    `cites` (its sources, numbered as in the prompt), even when empty."""
    return {
        **head,
        "object": "chat.completion",
        "choices": choices,
        "usage": usage,
        **({"citations": cites} if cites is not None else {}),
    }


def chat_chunk(
    head: dict,
    index: int,
    delta: dict,
    finish_reason: str | None = None,
    logprobs: list[dict] | None = None,
    cites: list[dict] | None = None,
) -> dict:
    """One streamed chunk of one choice; `cites` go on a knowledge-base answer's first chunk."""
    choice = {
        "index": index,
        "delta": delta,
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }
    return {
        **head,
        "object": "chat.completion.chunk",
        "choices": [choice],
        **({"citations": cites} if cites is not None else {}),
    }


def usage_chunk(head: dict, obj: str, usage: dict) -> dict:
    """The last chunk of a stream that asked for usage (stream_options.include_usage): no choices."""
    return {**head, "object": obj, "choices": [], "usage": usage}
