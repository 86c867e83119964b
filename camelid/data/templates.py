"""Chat templates and `render`: one rendering gives both the token ids and the loss mask.

The tokenizer's own chat template is the source of truth. `render` asks it for the whole chat as
text, and for each assistant turn the text up to the turn's start (`add_generation_prompt=True`)
and up to its end; the characters in between are the turn. Tokenizing the whole text once with
offsets then labels exactly the tokens that start inside an assistant turn. Whatever the template
appends after the content (e.g. `<|im_end|>\\n`) is kept up to and including its last special
token (the end-of-turn the model must learn to emit) and no further.

Models without a usable template get one from BUILTIN, written for camelid in the formats these
model families use; tests check them against the stock templates where those are available.
"""

from __future__ import annotations

from dataclasses import dataclass

from camelid.utils import CamelidError, log

IGNORE = -100

_CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Qwen2-style: ChatML with a default system prompt when the chat has none.
_QWEN = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}" + _CHATML
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

# Gemma has no system role: the system text opens the first user turn.
_GEMMA = (
    "{{ bos_token }}"
    "{%- set sys = messages[0]['content'] + '\n\n' if messages[0]['role'] == 'system' else '' -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# For base models whose vocabulary has no chat tokens: plain-text turns ended by the EOS token.
_PLAIN = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] + '\n\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '### User:\n' + m['content'] + '\n\n' }}"
    "{%- else -%}{{ '### Assistant:\n' + m['content'] + eos_token + '\n\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}"
)

BUILTIN = {"chatml": _CHATML, "qwen": _QWEN, "llama3": _LLAMA3, "gemma": _GEMMA, "plain": _PLAIN}

# Which built-in fits a vocabulary, judged by the special tokens it already has.
_MARKERS = [("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma")]


def ensure_template(tokenizer, name: str = "") -> str:
    """Give `tokenizer` a chat template: `name` if asked for, else its own, else the best built-in.

    Returns the name of what is used ("own" for the tokenizer's).
    """
    if name:
        if name not in BUILTIN:
            raise CamelidError(f"unknown template '{name}'; built-in: {', '.join(BUILTIN)}")
        tokenizer.chat_template = BUILTIN[name]
        return name
    if tokenizer.chat_template:
        return "own"
    vocab = tokenizer.get_vocab()
    name = next((n for marker, n in _MARKERS if marker in vocab), "plain")
    log.info(f"tokenizer has no chat template; using built-in '{name}'")
    tokenizer.chat_template = BUILTIN[name]
    return name


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _text(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """The full chat text and, per assistant turn, (start, content_end, end) character offsets.

    [start, end) is everything the template emits for the turn; content_end is where the
    message's own text stops (the rest is the end-of-turn marker and trailing whitespace).
    """
    full = _text(tokenizer, messages, False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _text(tokenizer, messages[:k], True) if k else ""
        upto = _text(tokenizer, messages[: k + 1], False)
        if not (full.startswith(before) and full.startswith(upto) and upto.startswith(before)):
            raise CamelidError(
                "the chat template renders earlier turns differently once later turns are added "
                "(e.g. it drops past reasoning), so turns cannot be masked from one render; "
                f"pick a built-in template with model.template ({', '.join(BUILTIN)})"
            )
        seg = upto[len(before):]
        at = seg.find(m["content"].strip())
        if at < 0:
            raise CamelidError("the chat template changed an assistant message's text; cannot locate it to mask")
        content_end = len(before) + at + len(m["content"].strip())
        spans.append((len(before), content_end, len(upto)))
    return full, spans


def render(tokenizer, messages: list[dict], max_length: int | None = None) -> Rendered:
    """Tokenize a chat with its template; labels are the ids on assistant turns, IGNORE elsewhere."""
    full, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    labels = [IGNORE] * len(ids)
    for start, content_end, end in spans:
        turn = [i for i, (s, e) in enumerate(offsets) if start <= s < end and e > s]
        tail = [i for i in turn if offsets[i][0] >= content_end]
        # Keep the end-of-turn marker the model must emit; drop the template's trailing newlines.
        last_special = max((j for j, i in enumerate(tail) if ids[i] in special), default=None)
        drop = set(tail[last_special + 1:]) if last_special is not None else set()
        for i in turn:
            if i not in drop:
                labels[i] = ids[i]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(ids, labels)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a chat up to the start of the assistant's reply, tokenized the way `render` tokenizes training chats."""
    return tokenizer(_text(tokenizer, messages, True), add_special_tokens=False)["input_ids"]


def show(tokenizer, rendered: Rendered) -> str:
    """Human view of a rendered example: supervised text inside [[...]], the rest as is."""
    out, cur, buf = [], None, []
    for tok, lab in zip(rendered.input_ids, rendered.labels):
        sup = lab != IGNORE
        if cur is not None and sup != cur:
            text = tokenizer.decode(buf)
            out.append(f"[[{text}]]" if cur else text)
            buf = []
        cur = sup
        buf.append(tok)
    if buf:
        text = tokenizer.decode(buf)
        out.append(f"[[{text}]]" if cur else text)
    return "".join(out)
