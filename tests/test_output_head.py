"""The chunked output head: the same log-probabilities and gradients as the whole logits, without keeping them."""

import pytest
import torch
import torch.nn.functional as F

from camelid.train import output_head
from camelid.train.losses import entropy_from_logits
from camelid.train.output_head import chunked_logits, head_logps

N, D, V = 37, 16, 50


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(output_head, "CHUNK_ENTRIES", 8 * V)  # 8 positions per chunk: 5 chunks, the last short


def reference(hidden, head, targets, temperature):
    return -F.cross_entropy(head(hidden).float() / temperature, targets, reduction="none")


def case(dtype=torch.float32, trainable=False, bias=False):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(D, V, bias=bias).to(dtype)
    head.requires_grad_(trainable)
    hidden = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g)  # a loss that weighs every position differently
    return head, hidden, targets, upstream


def grads(fn, head, hidden, targets, upstream, temperature):
    hidden.grad = None
    head.zero_grad(set_to_none=True)
    logp = fn(hidden, head, targets, temperature)
    (logp * upstream).sum().backward()
    return logp.detach(), hidden.grad.clone(), [p.grad.clone() for p in head.parameters() if p.requires_grad]


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen-head", "trained-head"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_and_gradients_equal_the_whole_logits(trainable, temperature):
    head, hidden, targets, upstream = case(trainable=trainable, bias=True)
    want = grads(reference, head, hidden, targets, upstream, temperature)
    got = grads(head_logps, head, hidden, targets, upstream, temperature)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-6)
    assert len(got[2]) == (2 if trainable else 0)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bfloat16_head_matches_the_whole_logits_in_bfloat16():
    head, hidden, targets, upstream = case(dtype=torch.bfloat16)
    want = grads(reference, head, hidden, targets, upstream, 1.0)
    got = grads(head_logps, head, hidden, targets, upstream, 1.0)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1].float(), want[1].float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen-head", "trained-head"])
def test_the_backward_pass_keeps_no_vocabulary_sized_tensor(trainable):
    head, hidden, targets, _ = case(trainable=trainable)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        head_logps(hidden, head, targets)
    assert saved and max(saved) <= max(N * D, V * D), saved  # hidden states or the weight, never N × V logits
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        reference(hidden, head, targets, 1.0)
    assert max(saved) >= N * V  # (the check does see the logits when they are kept)


def test_shapes_and_empty_input():
    head, hidden, targets, _ = case()
    got = head_logps(hidden.view(1, N, D), head, targets.view(1, N), 1.0)
    assert got.shape == (1, N)
    empty = head_logps(hidden[:0], head, targets[:0])
    assert empty.shape == (0,)
    head.requires_grad_(True)
    assert head_logps(hidden[:0].view(2, 0, D), head, targets[:0].view(2, 0)).shape == (2, 0)


def test_chunked_logits_give_the_entropy_of_the_whole_distribution():
    head, hidden, _, _ = case()
    with torch.no_grad():
        starts, chunks = zip(*chunked_logits(hidden.view(1, N, D), head, 0.7))
        want = entropy_from_logits(head(hidden).float() / 0.7)
    assert starts == (0, 8, 16, 24, 32) and all(c.shape[1] == V for c in chunks)
    torch.testing.assert_close(torch.cat([entropy_from_logits(c) for c in chunks]), want, atol=1e-6, rtol=1e-6)


def test_rollout_scoring_and_the_update_see_the_same_log_probs():
    # PPO scores a rollout without gradient (chunked_logits) and trains with head_logps: at the first PPO epoch the
    # ratio new/old must be exactly 1, so both must give the same bits
    head, hidden, targets, _ = case()
    with torch.no_grad():
        scored = [
            -F.cross_entropy(lg, targets[s : s + len(lg)], reduction="none")
            for s, lg in chunked_logits(hidden, head, 0.7)
        ]
    assert torch.equal(torch.cat(scored), head_logps(hidden, head, targets, 0.7).detach())
