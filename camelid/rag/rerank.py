"""Reordering the fused candidates, which reciprocal rank fusion ranks by position alone: a cross-encoder
(`rag.reranker=FOLDER_OR_ID`, question and passage read together), or, where no cross-encoder is at hand offline,
the answering model itself (`rag.reranker=llm`): asked whether the passage answers the question, its log-odds of
"yes" over "no" for the first token of the reply is the score. Both return one score per passage, higher = better."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from camelid.engine import Engine, SamplingParams
from camelid.hub import resolve_model
from camelid.utils import CamelidError, require

# question first: every candidate's prompt starts alike, so the engine's prefix cache serves that part once
JUDGE_PROMPT = (
    "Question: {question}\n\nPassage:\n{passage}\n\n"
    "Does the passage answer the question? Reply with one word, yes or no."
)
YES, NO = ("yes", "Yes", "YES", "是"), ("no", "No", "NO", "否")
TOP = 20  # alternatives the engine reports per token: the most it offers


class CrossEncoderReranker:
    """A cross-encoder scoring (question, passage) pairs jointly: slower than the bi-encoder, better ordering."""

    def __init__(self, name: str, device: str | None = None):
        st = require("sentence_transformers", "rag")
        try:
            self.model = st.CrossEncoder(
                resolve_model(name, kind="encoder"), device=device or "cpu", trust_remote_code=False
            )
        except OSError as e:
            raise CamelidError(f"could not load the cross-encoder '{name}': {e}") from None

    def scores(self, question: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        return [float(s) for s in self.model.predict([(question, p) for p in passages], show_progress_bar=False)]


@lru_cache(maxsize=2)
def cross_encoder(name: str) -> CrossEncoderReranker:
    return CrossEncoderReranker(name)


class LlmJudge:
    """The answering model as a reranker. One engine batch of one-token replies per question, so it costs about a
    prompt's prefill per candidate: measured against what it buys in benchmarks/RESULTS.md."""

    def __init__(self, engine: Engine, render: Callable[[list[dict]], list[int]]):
        self.engine, self.render = engine, render
        self.yes, self.no = _single_tokens(engine.tokenizer, YES), _single_tokens(engine.tokenizer, NO)
        if not self.yes or not self.no:
            raise CamelidError("rag.reranker=llm: the model's tokenizer has no single token for 'yes' or 'no'")

    def scores(self, question: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        prompts = [
            self.render([{"role": "user", "content": JUDGE_PROMPT.format(question=question, passage=p)}])
            for p in passages
        ]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=TOP)
        return [self.log_odds(c.logprobs) for c in self.engine.generate(prompts, params)]

    def log_odds(self, logprobs: list[dict]) -> float:
        """log P(yes) - log P(no), each summed over its spellings, from the first token's top alternatives. A side
        missing from them gets the least listed probability: an upper bound on its own."""
        if not logprobs:  # the reply ended at once: no opinion either way
            return 0.0
        top = dict(logprobs[0]["top"])
        floor = min(top.values())

        def mass(ids: set[int]) -> float:
            listed = [top[i] for i in ids if i in top]
            return math.log(sum(math.exp(v) for v in listed)) if listed else floor

        return mass(self.yes) - mass(self.no)


def _single_tokens(tokenizer, words: tuple[str, ...]) -> set[int]:
    """Ids of the words (with or without a leading space) that the tokenizer writes as one token."""
    ids = set()
    for w in words:
        for text in (w, " " + w):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
    return ids
