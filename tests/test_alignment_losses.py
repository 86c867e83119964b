"""The alignment losses against numbers worked out by hand (plain arithmetic in the test, not the same formula)."""

import math

import pytest
import torch
from conftest import CHATS

from camelid.data.loader import collate, collate_pairs, last_turn_only, render_pairs
from camelid.data.templates import IGNORE, render
from camelid.train.losses import (
    dpo_loss,
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    pairwise_reward_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logps,
    token_logps,
)

T = torch.tensor
# −log σ(1) and −log σ(−1), i.e. log(1 + e^−1) and log(1 + e): they differ by exactly 1.
NLS_1 = 0.31326168751822286
NLS_M1 = 1.3132616875182228


def close(got, want, tol=1e-6):
    assert torch.allclose(
        torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64), atol=tol, rtol=0
    ), (got, want)


def test_constants_are_what_they_say():
    assert NLS_1 == pytest.approx(math.log(1 + math.exp(-1))) and NLS_M1 == pytest.approx(math.log(1 + math.e))


# ---------------------------------------------------------------------------------------------
# reward model


def test_pairwise_reward_loss():
    chosen, rejected = T([2.0, 0.0, 3.0]), T([1.0, 1.0, 3.0])  # gaps +1, −1, 0
    close(pairwise_reward_loss(chosen, rejected), (NLS_1 + NLS_M1 + math.log(2)) / 3)
    # Llama 2's margin: the gap has to exceed m before the loss falls like a zero-margin gap would
    # gaps − 1 = 0, −2, −1
    close(pairwise_reward_loss(chosen, rejected, margin=1.0), (math.log(2) + math.log(1 + math.exp(2)) + NLS_M1) / 3)
    # a huge gap costs ~nothing, a huge wrong gap costs ~the gap
    close(pairwise_reward_loss(T([50.0]), T([0.0])), 0.0)
    close(pairwise_reward_loss(T([0.0]), T([50.0])), 50.0, tol=1e-5)


def test_pairwise_reward_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = T([0.0], requires_grad=True), T([0.0], requires_grad=True)
    pairwise_reward_loss(chosen, rejected).backward()
    close(chosen.grad, [-0.5])  # d/dx −log σ(x) at 0 = −σ(−0) = −½
    close(rejected.grad, [0.5])


# ---------------------------------------------------------------------------------------------
# DPO and friends

# pair 0: policy gained 1 nat on chosen and lost 1 on rejected relative to the reference → h = 2
# pair 1: policy == reference → h = 0
PC, PR, RC, RR = T([-10.0, -7.0]), T([-12.0, -9.0]), T([-11.0, -7.0]), T([-11.0, -9.0])


def test_dpo_sigmoid():
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.5)
    close(losses, [NLS_1, math.log(2)])  # −log σ(0.5·2), −log σ(0)
    close(rc, [0.5, 0.0])  # β (log π − log π_ref) on chosen
    close(rr, [-0.5, 0.0])
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1)
    close(losses[0], math.log(1 + math.exp(-0.2)))


def test_cdpo_label_smoothing():
    eps = 0.1
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=eps)
    # 0.9·(−log σ(1)) + 0.1·(−log σ(−1)) = 0.9·0.31326 + 0.1·1.31326 = 0.31326 + 0.1
    close(losses[0], NLS_1 + eps)
    close(losses[1], math.log(2))  # at h = 0 both terms are log 2, whatever ε
    close(rc, [0.5, 0.0])  # rewards do not depend on the smoothing
    # cDPO's loss no longer falls forever: it has its minimum at a finite margin, σ(βh) = 1 − ε
    h = torch.linspace(-20, 40, 6001, dtype=torch.float64)
    z = torch.zeros_like(h)
    best = h[dpo_loss(h, z, z, z, beta=0.5, label_smoothing=eps)[0].argmin()]
    close(best, 2 * math.log((1 - eps) / eps), tol=0.02)  # β h* = logit(1 − ε)


def test_ipo():
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    close(losses, [(2 - 1) ** 2, (0 - 1) ** 2])  # (h − 1/(2β))², target h = 1
    close(rc, [0.5, 0.0])
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="ipo")
    close(losses, [0.0, 4.0])  # target h = 2: pair 0 sits on it
    close(rc, [0.25, 0.0])
    close(rr, [-0.25, 0.0])
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")


def test_dpo_gradient_flows_to_the_policy_only():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    losses, rc, rr = dpo_loss(pc, pr, RC, RR, beta=0.5)
    losses.sum().backward()
    # d/dpc −log σ(β h) = −β σ(−β h): pair 0 → −0.5·σ(−1), pair 1 → −0.5·0.5
    close(pc.grad, [-0.5 / (1 + math.e), -0.25])
    close(pr.grad, [0.5 / (1 + math.e), 0.25])
    assert not rc.requires_grad and not rr.requires_grad  # logged rewards are detached


# ---------------------------------------------------------------------------------------------
# PPO pieces

MASK = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1 is padded at its last position


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    scores = T([1.0, 2.0])
    logp = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, 5.0]])  # 5.0 on padding must not count
    ref = T([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]])
    # −0.1·kl, plus the score at position 2 (row 0) and position 1 (row 1); padding stays 0
    close(rewards, [[-0.05, 0.0, 0.1 + 1.0], [-0.1, 2.0, 0.0]])
    rewards, _ = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.0)
    close(rewards, [[0, 0, 1.0], [0, 2.0, 0]])


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = T([[0.0, 0.0, 1.0], [1.0, 2.0, 9.0]])  # 9.0 is on padding
    values = T([[0.5, 0.2, 0.7], [0.3, 0.4, 9.0]])
    adv, ret = gae(rewards, values, MASK, gamma=1.0, lam=1.0)
    # row 0: reward-to-go 1, 1, 1; row 1: 3, 2 (padding ignored)
    close(adv, [[1 - 0.5, 1 - 0.2, 1 - 0.7], [3 - 0.3, 2 - 0.4, 0.0]])
    close(ret, [[1.0, 1.0, 1.0], [3.0, 2.0, 0.0]])


def test_gae_step_by_step():
    rewards, values = T([[0.0, 0.5, 1.0]]), T([[0.2, 0.4, 0.6]])
    g, lam = 0.9, 0.8
    # right to left; the value after the last token is 0
    d2 = 1.0 - 0.6  # 0.4
    d1 = 0.5 + g * 0.6 - 0.4  # 0.64
    d0 = 0.0 + g * 0.4 - 0.2  # 0.16
    a2 = d2
    a1 = d1 + g * lam * a2  # 0.928
    a0 = d0 + g * lam * a1  # 0.82816
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=g, lam=lam)
    close(adv, [[a0, a1, a2]])
    close(adv, [[0.82816, 0.928, 0.4]])
    close(ret, [[a0 + 0.2, a1 + 0.4, a2 + 0.6]])
    # λ = 1: discounted return minus value (0.9·0.5 + 0.81·1 − 0.2 at t=0)
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=g, lam=1.0)
    close(adv[0, 0], 0.45 + 0.81 - 0.2)
    # λ = 0: the one-step TD error
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=g, lam=0.0)
    close(adv, [[d0, d1, d2]])


def test_gae_padding_changes_nothing():
    rewards, values = T([[0.0, 0.5, 1.0]]), T([[0.2, 0.4, 0.6]])
    short_adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    padded_r = torch.cat([rewards, T([[7.0, -3.0]])], 1)
    padded_v = torch.cat([values, T([[5.0, 5.0]])], 1)
    adv, ret = gae(padded_r, padded_v, T([[1.0, 1, 1, 0, 0]]), gamma=0.9, lam=0.8)
    close(adv[:, :3], short_adv)
    close(adv[:, 3:], [[0.0, 0.0]])
    close(ret[:, 3:], [[0.0, 0.0]])


def test_ppo_policy_loss_clipping():
    # ratio, advantage per token (clip range 0.2):
    #   1.1, +1 → inside: −1.1               1.5, +1 → clipped to −1.2 (active)
    #   1.5, −1 → 1.5 (the pessimistic side is the unclipped one; not active)
    #   0.5, −1 → clipped to 0.8 (active)   0.5, +1 → −0.5 (not active)      padding: ignored
    ratio = T([[1.1, 1.5, 1.5], [0.5, 0.5, 100.0]])
    adv = T([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]])
    logp = ratio.log().requires_grad_(True)
    loss, stats = ppo_policy_loss(logp, torch.zeros(2, 3), adv, MASK, clip_range=0.2)
    close(loss, (-1.1 - 1.2 + 1.5 + 0.8 - 0.5) / 5)
    close(stats["clipfrac"], 2 / 5)
    close(stats["approx_kl"], sum(0.5 * math.log(r) ** 2 for r in (1.1, 1.5, 1.5, 0.5, 0.5)) / 5)
    loss.backward()
    # d/dlogp (−A ρ) = −A ρ where the unclipped term is taken; zero where clipping is active and on padding
    close(logp.grad, [[-1.1 / 5, 0.0, 1.5 / 5], [0.0, -0.5 / 5, 0.0]])


def test_ppo_policy_loss_at_the_old_policy_is_minus_mean_advantage():
    adv = T([[1.0, -2.0, 4.0], [3.0, 1.0, 50.0]])
    loss, stats = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, MASK)
    close(loss, -(1 - 2 + 4 + 3 + 1) / 5)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)


def test_ppo_value_loss_clipping():
    old = torch.zeros(2, 3)
    # V, R per token (clip 0.2 around V_old = 0):
    #   0.1, 1  → inside, (0.9)² = 0.81
    #   0.5, 1  → clipped V 0.2: max(0.25, 0.64) = 0.64 (clipping binds)
    #   0.5, 0  → clipped V 0.2: max(0.25, 0.04) = 0.25
    #  −0.5, −1 → clipped V −0.2: max(0.25, 0.64) = 0.64 (binds)         padding: ignored
    values = T([[0.1, 0.5, 0.5], [-0.5, 5.0, 0.0]])
    returns = T([[1.0, 1.0, 0.0], [-1.0, -5.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.5 * (0.81 + 0.64 + 0.25 + 0.64) / 4)
    close(stats["value_clipfrac"], 2 / 4)


def test_masked_whiten():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, generator=g, dtype=torch.float64) * 5 + 3
    mask = (torch.rand(3, 7, generator=g) > 0.3).double()
    x_pad = x.masked_fill(mask == 0, 1e6)  # padding values must not leak into the statistics
    sel = x[mask.bool()]
    mean, std = sel.mean(), sel.std(unbiased=False)
    w = masked_whiten(x_pad, mask)
    ws = w[mask.bool()]
    close(ws.mean(), 0.0, tol=1e-9)
    close(ws.std(unbiased=False), 1.0, tol=1e-6)
    close(ws, (sel - mean) / std, tol=1e-6)
    assert (w[mask == 0] == 0).all()
    # scale only: the mean stays
    w = masked_whiten(x_pad, mask, shift_mean=False)[mask.bool()]
    close(w.mean(), mean, tol=1e-6)
    close(w.std(unbiased=False), 1.0, tol=1e-6)


def test_entropy_from_logits():
    v = 50
    close(entropy_from_logits(torch.zeros(2, 3, v)), torch.full((2, 3), math.log(v)), tol=1e-5)
    close(entropy_from_logits(torch.full((1, v), 7.0)), [math.log(v)], tol=1e-5)  # shift-invariant
    close(
        entropy_from_logits(T([[math.log(0.25), math.log(0.75)]])), [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    )
    close(entropy_from_logits(T([[100.0, 0.0, 0.0]])), [0.0], tol=1e-5)
    close(entropy_from_logits(torch.zeros(1, 4, dtype=torch.bfloat16)), [math.log(4)], tol=1e-5)  # computed in fp32


# ---------------------------------------------------------------------------------------------
# sequence log-probs on a real (tiny) model


def _plain_sequence_logps(model, batch):
    """Σ log p(x_{t+1} | x_≤t) over positions whose next token is supervised, from an ordinary full forward."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    keep = batch["labels"][:, 1:] != IGNORE
    out = []
    for r in range(len(logp)):
        out.append(sum(float(logp[r, t]) for t in range(logp.shape[1]) if keep[r, t]))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def tok_and_model(tiny_model):
    from transformers import AutoModelForCausalLM

    from camelid.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return tok, model


def test_sequence_logps_equal_a_plain_forward_over_supervised_tokens(tok_and_model):
    tok, model = tok_and_model
    rendered = [render(tok, c) for c in CHATS]  # different lengths: the batch is right-padded
    batch = collate(rendered, tok.pad_token_id)
    batch.pop("num_tokens")
    assert len({len(r.input_ids) for r in rendered}) == 3
    want = _plain_sequence_logps(model, batch)
    with torch.no_grad():
        got = sequence_logps(model, batch)
    close(got, want, tol=1e-3)
    assert (got < 0).all()
    # per token: as many log-probs as supervised targets, each tagged with its row
    with torch.no_grad():
        logp, rows = token_logps(model, batch)
    n_sup = [sum(1 for x in r.labels[1:] if x != IGNORE) for r in rendered]
    assert rows.tolist() == [i for i, n in enumerate(n_sup) for _ in range(n)]


def test_sequence_logps_through_a_lora_model_and_with_adapters_off(tok_and_model):
    from peft import LoraConfig, get_peft_model

    tok, model = tok_and_model
    import copy

    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
    ).eval()
    batch = collate([render(tok, c) for c in CHATS], tok.pad_token_id)
    batch.pop("num_tokens")
    with torch.no_grad():
        adapted = sequence_logps(peft_model, batch)
        with peft_model.disable_adapter():
            off = sequence_logps(peft_model, batch)
    close(adapted, _plain_sequence_logps(peft_model, batch), tol=1e-3)
    close(off, _plain_sequence_logps(model, batch), tol=1e-3)
    assert not torch.allclose(adapted, off, atol=1e-3)  # the random adapter does change them


# ---------------------------------------------------------------------------------------------
# preference rendering


def _supervised_text(tok, r):
    return tok.decode([i for i, lab in zip(r.input_ids, r.labels) if lab != IGNORE])


def test_last_turn_only_masks_earlier_assistant_turns(tok_and_model):
    tok, _ = tok_and_model
    chat = CHATS[2]  # three assistant turns
    full = render(tok, chat)
    assert _supervised_text(tok, full).count("<|im_end|>") == 3
    last = last_turn_only(full)
    assert last.input_ids == full.input_ids
    assert _supervised_text(tok, last) == "You are welcome.<|im_end|>"
    # the kept labels are the original ones, at the same positions, and form one contiguous span at the end
    kept = [i for i, lab in enumerate(last.labels) if lab != IGNORE]
    assert kept == list(range(kept[0], kept[-1] + 1))
    assert all(last.labels[i] == full.labels[i] for i in kept)
    single = render(tok, CHATS[0])
    assert last_turn_only(single).labels == single.labels  # one turn: nothing to mask


def test_render_pairs_supervise_only_the_final_answer(tok_and_model, tmp_path):
    from camelid.config import DataConfig

    tok, model = tok_and_model
    prompt = CHATS[2][:-1]  # a multi-turn context ending with the user's "Thanks"
    records = [{"prompt": prompt, "chosen": "You are welcome.", "rejected": "Paris."}]
    pairs, dropped = render_pairs(tok, records, DataConfig(max_length=256))
    assert not dropped and len(pairs) == 1
    p = pairs[0]
    assert _supervised_text(tok, p.chosen) == "You are welcome.<|im_end|>"
    assert _supervised_text(tok, p.rejected) == "Paris.<|im_end|>"
    batch = collate_pairs(pairs, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and "ref_logps" not in batch
    assert batch["input_ids"][0, : len(p.chosen.input_ids)].tolist() == p.chosen.input_ids  # chosen row first
    batch.pop("num_tokens")
    # the DPO sequence log-prob sums over those final-answer tokens only
    with torch.no_grad():
        both = sequence_logps(model, batch)
    close(both, _plain_sequence_logps(model, batch), tol=1e-3)
    p.ref = (-1.5, -2.5)
    assert collate_pairs([p], tok.pad_token_id)["ref_logps"].tolist() == [-1.5, -2.5]
