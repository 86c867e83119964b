"""Answering from a knowledge base through the engine: retrieve, build the grounded prompt within the context
budget, generate, cite. `camelid kb ask`, the API's /v1/kb/{name}/ask and chat completions with model
"kb:<name>" all go through `ground`, so they retrieve and prompt alike.

    camelid kb ask handbook "How do I get a refund?" model.name=runs/sft-lora/final
"""

from __future__ import annotations

from typing import Callable

from camelid.config import Config, RagConfig
from camelid.data.templates import prompt_ids
from camelid.engine import Engine, SamplingParams
from camelid.rag.prompt import citations, grounded, not_found
from camelid.rag.retrieve import Hit, search
from camelid.rag.store import KnowledgeBase, kb_folder
from camelid.utils import CamelidError


def prompt_budget(engine: Engine, rag: RagConfig, max_tokens: int) -> int:
    budget = engine.max_model_len - max_tokens
    return min(budget, rag.max_prompt_tokens) if rag.max_prompt_tokens else budget


def ground(kb: KnowledgeBase, rag: RagConfig, conversation: list[dict], count: Callable[[list[dict]], int],
           budgets: list[int]) -> tuple[list[dict] | None, list[Hit]]:
    """The conversation with its last user turn grounded in retrieved chunks, and the chunks used; (None, [])
    when nothing relevant was found. The question is the last user turn. The first budget (prompt tokens) that
    holds at least one source is used."""
    question = conversation[-1]["content"]
    hits = search(kb, question, rag)
    if not hits:
        return None, []
    for budget in budgets:
        messages, used = grounded(question, hits, conversation[:-1], count, budget, rag.system)
        if used:
            return messages, used
    raise CamelidError(f"no retrieved passage fits the prompt budget of {max(budgets)} tokens: raise "
                       "rag.max_prompt_tokens or the model's context, or lower rag.chunk_tokens for new knowledge bases")


def ask(engine: Engine, kb: KnowledgeBase, question: str, rag: RagConfig, params: SamplingParams) -> dict:
    """{"answer", "found", "citations", "prompt"}: one grounded answer (or the "not found" one, with no
    generation at all)."""
    tok = engine.tokenizer
    messages, used = ground(kb, rag, [{"role": "user", "content": question}], lambda m: len(prompt_ids(tok, m)),
                            [prompt_budget(engine, rag, params.max_tokens)])
    if messages is None:
        return {"answer": not_found(question), "found": False, "citations": [], "prompt": None}
    text = engine.generate([prompt_ids(tok, messages)], params)[0].text.strip()
    return {"answer": text, "found": True, "citations": citations(used, text), "prompt": messages[-1]["content"]}


def ask_main(cfg: Config, kb_name: str, question: str) -> dict:
    if not cfg.model.name:
        raise CamelidError("camelid kb ask needs the model that answers: model.name=FOLDER_RUN_OR_CATALOG_NAME")
    kb = KnowledgeBase.open(kb_folder(kb_name, cfg.rag))
    engine = Engine.load(cfg.model.name, cfg.engine, trust_remote_code=cfg.model.trust_remote_code)
    params = SamplingParams(max_tokens=cfg.rag.max_new_tokens, temperature=cfg.rag.temperature,
                            top_p=cfg.chat.top_p, repetition_penalty=cfg.chat.repetition_penalty)
    return ask(engine, kb, question, cfg.rag, params)
