"""Loss masks come from the same render as the ids: exactly the assistant turns and their end-of-turn token."""

import pytest

from camelid.data.templates import BUILTIN, IGNORE, ensure_template, render, show
from camelid.utils import CamelidError
from conftest import CHATS, build_tokenizer

END_OF_TURN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}


def supervised_runs(tok, r):
    runs, cur = [], []
    for t, lab in zip(r.input_ids, r.labels):
        if lab != IGNORE:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("template", list(END_OF_TURN))
@pytest.mark.parametrize("chat", CHATS, ids=["single", "system-zh-2turn", "3turn"])
def test_mask_covers_exactly_assistant_turns(template, chat):
    tok = build_tokenizer(template)
    r = render(tok, chat)
    # Same ids as the stock apply_chat_template path.
    assert r.input_ids == tok.apply_chat_template(chat, tokenize=True, return_dict=False)
    expected = [m["content"] + END_OF_TURN[template] for m in chat if m["role"] == "assistant"]
    assert supervised_runs(tok, r) == expected


def test_qwen_template_adds_default_system_and_masks_it_out():
    tok = build_tokenizer("qwen")
    r = render(tok, CHATS[0])
    text = tok.decode(r.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert supervised_runs(tok, r) == ["Paris.<|im_end|>"]


def test_plain_template_for_vocab_without_chat_tokens():
    tok = build_tokenizer(None)
    tok.chat_template = None
    # The tiny vocab has <|im_start|>, so auto-selection picks ChatML; force plain to test it.
    assert ensure_template(tok) == "chatml"
    ensure_template(tok, "plain")
    r = render(tok, CHATS[2])
    assert supervised_runs(tok, r) == [m["content"] + tok.eos_token for m in CHATS[2] if m["role"] == "assistant"]


def test_truncation_keeps_prefix_and_show_marks_supervision():
    tok = build_tokenizer("chatml")
    r = render(tok, CHATS[2], max_length=20)
    assert len(r.input_ids) == 20 and len(r.labels) == 20
    shown = show(tok, render(tok, CHATS[0]))
    assert "[[Paris.<|im_end|>]]" in shown and shown.count("[[") == 1


def test_unknown_template_name_is_an_error():
    with pytest.raises(CamelidError, match="built-in"):
        ensure_template(build_tokenizer("chatml"), "vicuna")


def test_template_that_rewrites_history_is_rejected():
    tok = build_tokenizer("chatml")
    # Drops every assistant turn but the last one, as some reasoning templates do.
    tok.chat_template = (
        "{%- for m in messages -%}{%- if m['role'] != 'assistant' or loop.last -%}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
    )
    with pytest.raises(CamelidError, match="renders earlier turns differently"):
        render(tok, CHATS[2])


def test_every_builtin_renders():
    for name in BUILTIN:
        tok = build_tokenizer(name)
        assert render(tok, CHATS[1]).n_supervised > 0
