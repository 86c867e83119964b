"""`camelid chat`: a terminal chat over a model, catalog name, run folder or adapter, streaming tokens from the
same engine `camelid serve` uses.

    camelid chat runs/quickstart            # the run's final weights and its chat template
    camelid chat smollm2-135m-instruct chat.temperature=0

Commands inside: /reset (forget the history), /system TEXT (set the system prompt), /exit. A conversation longer
than the context sends only its latest exchanges (the system prompt stays), as `camelid serve` sessions do.
"""

from __future__ import annotations

import sys

from camelid.config import ChatConfig
from camelid.data.templates import prompt_ids
from camelid.engine import Engine, SamplingParams
from camelid.serve.sessions import window_history


def chat_params(c: ChatConfig) -> SamplingParams:
    return SamplingParams(
        max_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, repetition_penalty=c.repetition_penalty
    )


def answers(engine: Engine, conversations: list[list[dict]], params: SamplingParams) -> list[str]:
    """One reply per conversation, generated together."""
    outs = engine.generate([prompt_ids(engine.tokenizer, m) for m in conversations], params)
    return [o.text.strip() for o in outs]


def main(cfg, target: str, stdin=sys.stdin, stdout=sys.stdout) -> None:
    engine = Engine.load(target, cfg.engine, trust_remote_code=cfg.model.trust_remote_code)
    params = chat_params(cfg.chat)
    system = cfg.chat.system
    history: list[dict] = []
    window = 0  # index into [system] + history of the oldest message still sent to the model
    print(f"chatting with {target} — /reset, /system TEXT, /exit", file=stdout)
    while True:
        print("\nyou> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history, window = [], 0
            print("(history cleared)", file=stdout)
            continue
        if line.startswith("/system"):
            system = line[len("/system") :].strip()
            history, window = [], 0
            print("(system prompt set; history cleared)", file=stdout)
            continue
        turn = [{"role": "user", "content": line}]
        stored = ([{"role": "system", "content": system}] if system else []) + history
        # a long conversation drops its oldest exchanges, as server sessions do; the REPL keeps them all
        room = engine.max_model_len - params.max_tokens
        ids, moved = window_history(stored, turn, window, lambda m: prompt_ids(engine.tokenizer, m), room)
        if len(ids) > room:
            print(
                f"(not sent: the message alone is {len(ids)} tokens; the context holds {engine.max_model_len}, "
                f"{params.max_tokens} of them (chat.max_new_tokens) kept for the answer)",
                file=stdout,
            )
            continue
        window = window if moved is None else moved
        print("bot> ", end="", file=stdout, flush=True)
        reply = []
        for out in engine.stream(ids, params):
            print(out.text, end="", file=stdout, flush=True)
            reply.append(out.text)
        print(file=stdout)
        history += turn + [{"role": "assistant", "content": "".join(reply).strip()}]
