"""`camelid chat`: a terminal chat over a model, catalog name, run folder or adapter, streaming tokens.

    camelid chat runs/quickstart            # the run's final weights and its chat template
    camelid chat smollm2-135m-instruct chat.temperature=0

Commands inside: /reset (forget the history), /system TEXT (set the system prompt), /exit.
"""

from __future__ import annotations

import sys
import threading

import torch

from camelid.model import load_for_inference


def generate(model, tokenizer, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, streamer=None, repetition_penalty: float = 1.0) -> str:
    """One reply to `messages`, rendered with the tokenizer's chat template (greedy when temperature=0)."""
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, streamer=streamer,
                             pad_token_id=tokenizer.pad_token_id, repetition_penalty=repetition_penalty, **sampling)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main(cfg, target: str, stdin=sys.stdin, stdout=sys.stdout) -> None:
    from transformers import TextIteratorStreamer

    model, tokenizer = load_for_inference(target, trust_remote_code=cfg.model.trust_remote_code)
    c = cfg.chat
    system = c.system
    history: list[dict] = []
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
            history = []
            print("(history cleared)", file=stdout)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip()
            history = []
            print("(system prompt set; history cleared)", file=stdout)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.setdefault("text", generate(
            model, tokenizer, messages, c.max_new_tokens, c.temperature, c.top_p, streamer, c.repetition_penalty)))
        worker.start()
        print("bot> ", end="", file=stdout, flush=True)
        for piece in streamer:
            print(piece, end="", file=stdout, flush=True)
        worker.join()
        print(file=stdout)
        history.append({"role": "assistant", "content": result.get("text", "")})
