"""Packed rows compute exactly what separate examples compute; a merged LoRA equals base + adapter."""

import pytest
import torch
from conftest import CHATS, tiny_config
from transformers import AutoModelForCausalLM

from camelid.data.loader import batch_order, collate, pack
from camelid.data.templates import IGNORE, render
from camelid.model import load_for_inference, load_tokenizer, merge_adapter
from camelid.train import sft
from camelid.train.losses import causal_lm_loss


def test_packed_row_logits_equal_unpacked(tiny_model, tmp_path):
    cfg = tiny_config(tiny_model, "unused", tmp_path)
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    examples = [render(tok, c) for c in CHATS]
    rows = pack(examples, capacity=1000)
    assert len(rows) == 1 and len(rows[0]) == 3
    batch = collate(rows, tok.pad_token_id)
    batch.pop("num_tokens")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        at = 0
        for e in rows[0]:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            torch.testing.assert_close(packed[at : at + len(e.input_ids)], alone, atol=1e-5, rtol=1e-4)
            at += len(e.input_ids)
    # What the training loss function computes on the packed batch is the same thing.
    from camelid.train.losses import lm_loss

    with torch.no_grad():
        loss_fn_value, _ = lm_loss(model, batch)
    # The loss over the packed row equals the token-weighted loss over the separate examples.
    with torch.no_grad():
        loss_packed, n = causal_lm_loss(packed[None], batch["labels"])
        pad = collate(examples, tok.pad_token_id)
        pad.pop("num_tokens")
        loss_padded, n2 = causal_lm_loss(
            model(input_ids=pad["input_ids"], attention_mask=pad["attention_mask"]).logits, pad["labels"]
        )
    assert n == n2
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_fn_value, loss_padded, atol=1e-5, rtol=1e-5)


def test_pack_respects_capacity_and_keeps_every_example():
    from camelid.data.templates import Rendered

    examples = [Rendered([1] * n, [IGNORE] * n) for n in [50, 30, 30, 20, 64, 10, 5]]
    rows = pack(examples, capacity=64)
    assert sorted(len(e.input_ids) for row in rows for e in row) == sorted(len(e.input_ids) for e in examples)
    assert all(sum(len(e.input_ids) for e in row) <= 64 for row in rows)
    assert len(rows) == 4  # 209 tokens need at least 4 rows of 64


def test_batch_order_is_deterministic_and_sharded():
    a = batch_order(10, 2, seed=1, epoch=0)
    assert a == batch_order(10, 2, seed=1, epoch=0) and a != batch_order(10, 2, seed=1, epoch=1)
    r0, r1 = batch_order(10, 2, 1, 0, rank=0, world=2), batch_order(10, 2, 1, 0, rank=1, world=2)
    flat = [i for b in r0 + r1 for i in b]
    assert len(flat) == 8 and len(set(flat)) == 8  # disjoint shards, uneven tail dropped


def test_export_merged_logits_equal_base_plus_adapter(tiny_model, chat_file, tmp_path):
    cfg = tiny_config(tiny_model, chat_file, tmp_path, method="lora", **{"train.max_steps": 3})
    sft.main(cfg)
    run = tmp_path / "run"
    adapter_model, tok = load_for_inference(run, merge=False)
    out = merge_adapter(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not (out / "adapter_config.json").exists() and (out / "chat_template.jinja").exists()
    ids = torch.tensor([render(tok, CHATS[1]).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter_model(ids).logits, atol=1e-5, rtol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-4)  # the adapter did something


def test_causal_lm_loss_matches_hand_computed_value():
    # Two rows, vocab 3; row 0 supervises tokens 1 and 2, row 1 only token 2.
    logits = torch.tensor(
        [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [5.0, 0.0, 0.0]]]
    )
    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, IGNORE, 0]])
    loss, n = causal_lm_loss(logits, labels)
    lsm = torch.log_softmax(logits, -1)
    # target t is predicted from position t-1
    expected = -(lsm[0, 0, 1] + lsm[0, 1, 2] + lsm[1, 1, 0]) / 3
    assert n == 3
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("method", ["full", "lora", "ptuning"])
def test_lm_loss_fast_path_equals_the_full_forward(method, tiny_model, tmp_path):
    """Running the head only where the next token is trained gives the same loss and gradients."""
    from camelid.model import decoder_and_head, load_model
    from camelid.train.losses import lm_loss

    cfg = tiny_config(tiny_model, "unused", tmp_path, method=method, **{"data.packing": False})
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    model = load_model(cfg).train()
    batch = collate([render(tok, c) for c in CHATS], tok.pad_token_id)
    batch.pop("num_tokens")
    assert (decoder_and_head(model) is None) == (method == "ptuning")

    loss_fast, n_fast = lm_loss(model, batch)
    loss_fast.backward()
    grads_fast = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    loss_full, n_full = causal_lm_loss(logits, batch["labels"])
    loss_full.backward()
    assert n_fast["n_tokens"] == n_full
    torch.testing.assert_close(loss_fast, loss_full, atol=1e-5, rtol=1e-5)
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_fast[k], p.grad, atol=1e-5, rtol=1e-4)
