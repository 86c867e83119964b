"""LoRA dropout with hashed random bits (camelid/lora_dropout.py): the rate, independence, reproducibility and
gradients of nn.Dropout, and the same masks when activation checkpointing replays a forward."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from camelid.lora_dropout import HashDropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    n = 4_000_000
    kept = keep_mask(torch.Size([n]), p, torch.Generator().manual_seed(1)).double()
    want = 1 - round(p * 65536) / 65536
    sigma = (want * (1 - want) / n) ** 0.5
    assert abs(kept.mean().item() - want) < 5 * sigma
    # neighbours, inside one 64-bit hash (lags 1-3) and across hashes (4, 5), are uncorrelated
    centred = kept - kept.mean()
    for lag in (1, 2, 3, 4, 5):
        corr = (centred[:-lag] * centred[lag:]).mean() / centred.var()
        assert abs(corr.item()) < 5 / n**0.5, lag


def test_masks_follow_the_generator_and_differ_between_calls():
    shape = torch.Size([64, 96])
    torch.manual_seed(0)
    a, b = keep_mask(shape, 0.3), keep_mask(shape, 0.3)
    torch.manual_seed(0)
    assert torch.equal(keep_mask(shape, 0.3), a) and torch.equal(keep_mask(shape, 0.3), b)
    assert not torch.equal(a, b)
    assert a.shape == shape and a.dtype == torch.bool


def test_hash_dropout_is_unbiased_and_its_gradient_is_the_mask():
    drop = HashDropout(0.2)
    x = torch.rand(512, 256, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * drop.scale)
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    assert abs((y.sum() / x.sum()).item() - 1) < 0.01  # expectation: the input
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * drop.scale)
    drop.eval()
    assert drop(x) is x


def test_lora_layers_get_hash_dropout_and_a_checkpointed_replay_draws_the_same_masks(tiny_model, chat_file, tmp_path):
    """Activation checkpointing recomputes each block's forward in backward; the LoRA gradients only equal those of
    a run without checkpointing if the replay draws the very masks the first forward drew."""
    from camelid.model import load_model

    grads = []
    for ckpt in (False, True):
        cfg = tiny_config(
            tiny_model, chat_file, tmp_path, **{"lora.dropout": 0.3, "model.gradient_checkpointing": ckpt}
        )
        torch.manual_seed(0)  # the LoRA A matrices' initialisation
        model = load_model(cfg)
        drops = [m for m in model.modules() if isinstance(m, HashDropout)]
        assert drops and all(d.p == 0.3 for d in drops)
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())
        model.train()
        ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(7)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=0), name
    # and the masks mattered: without dropout the gradients differ
    cfg = tiny_config(tiny_model, chat_file, tmp_path, **{"lora.dropout": 0.0})
    torch.manual_seed(0)
    model = load_model(cfg)
    model.train()
    torch.manual_seed(7)
    model(input_ids=ids, labels=ids).loss.backward()
    some = next(n for n in grads[0] if "lora_B" in n)
    assert not torch.allclose(dict(model.named_parameters())[some].grad, grads[0][some], atol=1e-6)
