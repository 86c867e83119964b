"""Chat templates and `render`: one rendering gives both the token ids and the loss mask.

The tokenizer's own chat template is the source of truth. For each assistant turn `render` asks it
for the chat up to the turn (`add_generation_prompt=True`: the prompt the model sees at inference)
and up to the turn's end; the characters in between are the turn. Tokenizing the text once with
offsets then labels every token that holds a character of a turn, up to and including the turn's
last special token (the end-of-turn the model must learn to emit), not the whitespace after it.

One text holds every turn when the template renders history the same way as the chat grows (all
built-ins, most stock templates). A template that rewrites past turns (Qwen3 drops past reasoning)
gives one example per such turn, each after the prefix the model sees for it (`render_examples`).

Special-token strings a user writes inside a message are tokenized as plain text, never as control
tokens, in training renders and in `prompt_ids` (serving), so no message can forge a turn.

Models without a usable template get one from BUILTIN, written for camelid in the formats these
model families use; tests check them against the stock templates where those are available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

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


# ------------------------------------------------------------------ special tokens written inside messages
# A user who types "<|im_start|>system" must not open a system turn. Before rendering, special-token strings in
# message text are moved into Unicode plane 15 (private use) character by character: the same length, so every
# offset stays valid, and no template filter (trim, strip, split on "</think>") changes such characters. After
# rendering they are moved back and tokenized as plain text; the template's own special tokens stay control tokens.

_PLANE = 0xF0000
_GUARDED_FIELDS = ("content", "reasoning_content")


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }


def _special_pattern(tokenizer) -> re.Pattern | None:
    names = {t.content for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False)}
    names |= set(tokenizer.all_special_tokens)
    names = sorted((n for n in names if n), key=len, reverse=True)  # a longer token wins over one it contains
    return re.compile("|".join(map(re.escape, names))) if names else None


def _guard(tokenizer, messages: list[dict]) -> list[dict] | None:
    """A copy of `messages` with the special-token strings in their text moved into the private-use plane, or None
    when they hold none (the common case: nothing to restore after rendering)."""
    pattern = _special_pattern(tokenizer)
    texts = [m.get(f) for m in messages for f in _GUARDED_FIELDS]
    if pattern is None or not any(isinstance(t, str) and pattern.search(t) for t in texts):
        return None

    def shift(match: re.Match) -> str:
        if any(ord(c) >= 0xFFFE for c in match[0]):
            raise CamelidError(f"cannot encode the special token {match[0]!r} inside a message as text")
        return "".join(chr(_PLANE + ord(c)) for c in match[0])

    out = []
    for m in messages:
        m = dict(m)
        for f in _GUARDED_FIELDS:
            if isinstance(m.get(f), str):
                if any(_PLANE <= ord(c) < _PLANE + 0x10000 for c in m[f]):
                    # such characters would be read back as special-token text
                    raise CamelidError(
                        "a message holds a special token and characters of Unicode plane 15 "
                        "(private use); cannot tell them apart: remove one or the other"
                    )
                m[f] = pattern.sub(shift, m[f])
        out.append(m)
    return out


def _restore(text: str, guarded: bool) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text with guarded characters restored, and the [start, end) spans they occupy (none when the
    messages were not `guarded`: their own private-use characters, if any, stay as written)."""
    if not guarded:
        return text, []
    spans: list[tuple[int, int]] = []
    chars = list(text)
    for i, c in enumerate(chars):
        if _PLANE <= ord(c) < _PLANE + 0x10000:
            chars[i] = chr(ord(c) - _PLANE)
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
    return "".join(chars), spans


def _as_text(tokenizer, text: str, a: int, b: int, first: int | None) -> tuple[list[int], list[tuple[int, int]]]:
    """text[a:b] encoded with special tokens as plain text, offsets into `text`. `first`: the id the whole-text
    encoding starts this stretch with, to tell which of the two ways below this tokenizer encodes it."""
    kw = dict(add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    enc = tokenizer(text[a:b], **kw)
    plain = list(enc["input_ids"]), [(s + a, e + a) for s, e in enc["offset_mapping"]]
    if a == 0 or (plain[0] and plain[0][0] == first):
        return plain
    # Mid-chat, a SentencePiece tokenizer with a "first" prefix scheme adds no space where this stretch starts,
    # but would at the start of a text of its own: encode it after a newline, then drop the newline.
    nl = tokenizer("\n", **kw)["input_ids"]
    enc = tokenizer("\n" + text[a:b], **kw)
    if enc["input_ids"][: len(nl)] != nl:
        return plain
    return list(enc["input_ids"][len(nl) :]), [
        (max(s - 1, 0) + a, max(e - 1, 0) + a) for s, e in enc["offset_mapping"][len(nl) :]
    ]


def encode(tokenizer, plain: str, guarded: list[tuple[int, int]] = ()) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) of a rendered chat: the template's special tokens as control tokens, and those
    written inside messages (the `guarded` spans) as plain text."""
    enc = tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not guarded:
        return ids, offsets
    special = special_ids(tokenizer)

    def inside(s: int, e: int) -> bool:
        return any(s < b and e > a for a, b in guarded)

    # Keep the template's special tokens as they are, and the text between two of them too, unless it holds a
    # guarded span: that text is encoded again, as plain text throughout.
    cuts = [k for k, (i, (s, e)) in enumerate(zip(ids, offsets)) if i in special and not inside(s, e)]
    out_ids, out_offsets, at, prev = [], [], 0, -1
    for k in cuts + [len(ids)]:
        s = offsets[k][0] if k < len(ids) else len(plain)
        if s > at and inside(at, s):
            piece_ids, piece_offsets = _as_text(tokenizer, plain, at, s, ids[prev + 1] if prev + 1 < k else None)
        else:
            piece_ids, piece_offsets = ids[prev + 1 : k], offsets[prev + 1 : k]
        out_ids += piece_ids
        out_offsets += piece_offsets
        if k < len(ids):
            out_ids.append(ids[k])
            out_offsets.append(offsets[k])
            at = offsets[k][1]
        prev = k
    ids, offsets = out_ids, out_offsets
    control = special - {tokenizer.unk_token_id}  # text the vocabulary cannot spell may still come out as unk
    if any(i in control and inside(s, e) for i, (s, e) in zip(ids, offsets)):
        raise CamelidError(
            "this tokenizer turns special-token text inside a message into a special token "
            "even as plain text; cannot encode the message safely"
        )
    return ids, offsets


# ---------------------------------------------------------------------------------------- render


def _text(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class Example(NamedTuple):
    text: str  # the rendered chat
    turns: list[tuple[int, int]]  # [start, end) of each supervised assistant turn
    guarded: list[tuple[int, int]]  # special-token text written inside messages: encoded as plain text


def examples(tokenizer, messages: list[dict]) -> list[Example]:
    """The chat as training examples: each assistant turn once, after the prefix the model sees when it writes it.

    A turn's prefix is the chat up to it rendered with the generation prompt; the turn is what rendering it as
    the last message adds. Turns whose prefix extends the previous example's text share that example (every
    template that renders history the same way: one example, the whole chat); a template that renders past turns
    differently (Qwen3 drops past reasoning) starts a new example at each such turn.
    """
    guarded = _guard(tokenizer, messages)
    msgs = guarded or messages
    out: list[tuple[str, list[tuple[int, int]]]] = []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _text(tokenizer, msgs[:k], True) if k else ""
        upto = _text(tokenizer, msgs[: k + 1], False)
        if not upto.startswith(before):
            raise CamelidError(
                "the chat template renders an assistant turn differently from its generation prompt "
                "(the text before the answer changes once the answer is added), so the answer cannot be "
                f"supervised after the prompt the model sees; pick a built-in template with model.template "
                f"({', '.join(BUILTIN)})"
            )
        reasoning = m.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning.strip() and reasoning.strip() not in upto[len(before) :]:
            raise CamelidError(
                "the chat template does not render an assistant message's reasoning_content; "
                "use the model's own template, or write the reasoning as <think>...</think> "
                "in the content"
            )
        if out and before.startswith(out[-1][0]):
            out[-1] = (upto, out[-1][1] + [(len(before), len(upto))])
        else:
            out.append((upto, [(len(before), len(upto))]))
    full = _text(tokenizer, msgs, False)
    if not out:
        out = [(full, [])]
    elif full.startswith(out[-1][0]):  # whatever follows the last answer (a trailing user turn) stays as context
        out[-1] = (full, out[-1][1])
    # The guarded characters go back to what the user wrote; being as many, every offset above stays valid.
    restored = [(_restore(text, guarded is not None), turns) for text, turns in out]
    return [Example(text, turns, spans) for (text, spans), turns in restored]


def _labels(
    tokenizer, plain: str, ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    special = special_ids(tokenizer)
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        # Every token holding a character of the turn: the model emits it at inference. That includes a token
        # that starts in the prompt, e.g. the generation prompt's "\n" merged with an answer's leading "\n\n".
        turn = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        last = max((j for j, i in enumerate(turn) if ids[i] in special), default=None)
        if last is not None and all(
            not plain[max(offsets[i][0], start) : min(offsets[i][1], end)].strip() for i in turn[last + 1 :]
        ):
            # Generation stops at the end-of-turn token: the whitespace the template writes after it is never
            # emitted, so it is not learned.
            turn = turn[: last + 1]
        for i in turn:
            labels[i] = ids[i]
    return labels


def _tokenized(tokenizer, ex: Example) -> Rendered:
    ids, offsets = encode(tokenizer, ex.text, ex.guarded)
    return Rendered(ids, _labels(tokenizer, ex.text, ids, offsets, ex.turns))


def render_examples(tokenizer, messages: list[dict]) -> list[Rendered]:
    """Tokenized `examples`; labels are the ids of each example's assistant turns, IGNORE elsewhere."""
    return [_tokenized(tokenizer, ex) for ex in examples(tokenizer, messages)]


def render(tokenizer, messages: list[dict], max_length: int | None = None) -> Rendered:
    """The chat as the model sees it when it writes its last answer, supervised on the assistant turns it holds.

    For every template that renders history the same way this is the whole chat with every turn supervised;
    SFT uses `render_examples`, which also covers earlier turns of chats whose template rewrites history.
    """
    r = _tokenized(tokenizer, examples(tokenizer, messages)[-1])
    if max_length is not None and len(r.input_ids) > max_length:
        r = Rendered(r.input_ids[:max_length], r.labels[:max_length])
    return r


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a chat up to the start of the assistant's reply, tokenized the way `render` tokenizes training chats
    (special tokens inside messages as plain text)."""
    guarded = _guard(tokenizer, messages)
    text, spans = _restore(_text(tokenizer, guarded or messages, True), guarded is not None)
    return encode(tokenizer, text, spans)[0]


def spans(tokenizer, rendered: Rendered) -> list[tuple[str, bool]]:
    """A rendered example as (text, supervised) runs: the loss mask as a person reads it."""
    out, cur, buf = [], None, []
    for tok, lab in zip(rendered.input_ids, rendered.labels):
        sup = lab != IGNORE
        if cur is not None and sup != cur:
            out.append((tokenizer.decode(buf), cur))
            buf = []
        cur = sup
        buf.append(tok)
    if buf:
        out.append((tokenizer.decode(buf), cur))
    return out


def marked(runs: list[tuple[str, bool]]) -> str:
    """Human view of (text, supervised) runs: supervised text inside [[...]], the rest as is."""
    return "".join(f"[[{text}]]" if sup else text for text, sup in runs)


def show(tokenizer, rendered: Rendered) -> str:
    return marked(spans(tokenizer, rendered))
