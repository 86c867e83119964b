"""Answering from a knowledge base: retrieve, build the grounded prompt within the context budget, generate, cite.

`camelid kb ask`, the API's /v1/kb/{name}/ask and chat completions with model "kb:<name>" all go through here, so
they retrieve, prompt and sample alike:

- `answer_params` is how a grounded answer samples (rag.max_new_tokens, rag.temperature, no repetition penalty);
- `ground` puts the sources into a conversation's last user turn (chat completions, with their history);
- `prepare` grounds one question and `Grounding.reply` turns the generated text into the answer with citations;
  `ask` is the two with the engine's blocking `generate` between them. The server runs the same two around its own
  engine submission, which counts against the caller's key and stops when the caller disconnects.

    camelid kb ask handbook "How do I get a refund?" model.name=runs/sft-lora/final
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from camelid.config import Config, RagConfig
from camelid.data.templates import prompt_ids
from camelid.engine import Engine, SamplingParams
from camelid.rag.prompt import citations, grounded, not_found
from camelid.rag.rerank import LlmJudge
from camelid.rag.retrieve import Hit, search
from camelid.rag.store import KnowledgeBase, kb_folder
from camelid.utils import CamelidError


def answer_params(
    rag: RagConfig,
    max_tokens: int | None = None,
    temperature: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
) -> SamplingParams:
    """How a grounded answer samples unless the caller says otherwise: rag.max_new_tokens, rag.temperature (greedy
    by default). No repetition penalty by default: it counts the prompt's tokens too, so it would push the model
    away from the very words of the sources it should quote."""
    return SamplingParams(
        max_tokens=rag.max_new_tokens if max_tokens is None else max_tokens,
        temperature=rag.temperature if temperature is None else temperature,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )


def prompt_budget(max_model_len: int, rag: RagConfig, max_tokens: int) -> int:
    """Prompt tokens a grounded prompt may take: the context less the answer, capped by rag.max_prompt_tokens."""
    budget = max_model_len - max_tokens
    return min(budget, rag.max_prompt_tokens) if rag.max_prompt_tokens else budget


def ground(
    kb: KnowledgeBase,
    rag: RagConfig,
    conversation: list[dict],
    count: Callable[[list[dict]], int],
    budgets: list[int],
    judge: LlmJudge | None = None,
) -> tuple[list[dict] | None, list[Hit]]:
    """The conversation with its last user turn grounded in retrieved chunks, and the chunks used; (None, [])
    when nothing relevant was found. The question is the last user turn. The first budget (prompt tokens) that
    holds at least one source is used. `judge`: the answering model, for rag.reranker=llm."""
    question = conversation[-1]["content"]
    hits = search(kb, question, rag, judge=judge)
    if not hits:
        return None, []
    for budget in budgets:
        messages, used = grounded(question, hits, conversation[:-1], count, budget, rag.system)
        if used:
            return messages, used
    raise CamelidError(
        f"no retrieved passage fits the prompt budget of {max(budgets)} tokens: raise "
        "rag.max_prompt_tokens or the model's context, or lower rag.chunk_tokens for new knowledge bases"
    )


@dataclass
class Grounding:
    """One question made ready to answer: its grounded prompt (`ids`, empty when nothing relevant was found, and
    then nothing is generated) and the sources in it."""

    question: str
    messages: list[dict] | None
    used: list[Hit]
    ids: list[int]

    @property
    def found(self) -> bool:
        return self.messages is not None

    def reply(self, text: str | None) -> dict:
        """{"answer", "found", "citations", "prompt"} from the generated text (None when nothing was found)."""
        if not self.found:
            return {"answer": not_found(self.question), "found": False, "citations": [], "prompt": None}
        text = (text or "").strip()
        return {
            "answer": text,
            "found": True,
            "citations": citations(self.used, text),
            "prompt": self.messages[-1]["content"],
        }


def prepare(
    kb: KnowledgeBase,
    rag: RagConfig,
    question: str,
    render: Callable[[list[dict]], list[int]],
    max_model_len: int,
    max_tokens: int,
    judge: LlmJudge | None = None,
) -> Grounding:
    """Retrieve for `question` and build its prompt, as many sources as fit beside `max_tokens` of answer.
    `render` turns messages into prompt ids (the model's chat template)."""
    messages, used = ground(
        kb,
        rag,
        [{"role": "user", "content": question}],
        lambda m: len(render(m)),
        [prompt_budget(max_model_len, rag, max_tokens)],
        judge,
    )
    return Grounding(question, messages, used, render(messages) if messages is not None else [])


def ask(engine: Engine, kb: KnowledgeBase, question: str, rag: RagConfig, params: SamplingParams) -> dict:
    """{"answer", "found", "citations", "prompt"}: one grounded answer (or the "not found" one, with no
    generation at all)."""
    render = functools.partial(prompt_ids, engine.tokenizer)
    judge = LlmJudge(engine, render) if rag.reranker == "llm" else None
    g = prepare(kb, rag, question, render, engine.max_model_len, params.max_tokens, judge)
    return g.reply(engine.generate([g.ids], params)[0].text if g.found else None)


def ask_main(cfg: Config, kb_name: str, question: str) -> dict:
    """`camelid kb ask`: open the knowledge base, load the model, answer with `answer_params(cfg.rag)`."""
    if not cfg.model.name:
        raise CamelidError("camelid kb ask needs the model that answers: model.name=FOLDER_RUN_OR_CATALOG_NAME")
    kb = KnowledgeBase.open(kb_folder(kb_name, cfg.rag))
    engine = Engine.load(cfg.model.name, cfg.engine, trust_remote_code=cfg.model.trust_remote_code)
    return ask(engine, kb, question, cfg.rag, answer_params(cfg.rag))
