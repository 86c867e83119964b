"""Multiple-choice scoring: equal to a hand computation of summed log-probs, whichever batching path runs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from camelid.eval import mc
from camelid.eval.items import MCItem


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        tiny_model
    )


def items() -> list[MCItem]:
    q = "The capital of France is"
    return [
        MCItem("t/0", "t", "geo", [q] * 3, [" Paris.", " 北京", " a quick brown fox"], 0),
        MCItem("t/1", "t", "math", ["1 2 3 4 "] * 2, ["5", "6 7 8 9 10"], 0),  # trailing space moves to the choice
        MCItem("t/2", "t", "", ["The quick brown _ fox".split("_")[0] + w for w in ("dog", "fox")], [" jumps"] * 2, 1),
        MCItem("t/3", "t", "", ["", ""], ["Hello", "你好"], 1),  # empty context: the end-of-text token
    ]


def by_hand(model, tok, context: str, continuation: str) -> float:
    ctx, cont = mc.encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_encode_pair_moves_trailing_space_to_the_continuation(model_tok):
    _, tok = model_tok
    ctx, cont = mc.encode_pair(tok, "1 2 3 4 ", "5")
    assert tok.decode(ctx) == "1 2 3 4" and tok.decode(cont) == " 5"
    assert mc.encode_pair(tok, "", "Hello")[0] == [tok.eos_token_id]


@pytest.mark.parametrize("path", ["tree", "rows"])
def test_scores_equal_summed_logprobs_by_hand(model_tok, path, monkeypatch):
    model, tok = model_tok
    if path == "rows":  # the path P-Tuning models take
        monkeypatch.setattr(mc, "decoder_and_head", lambda m: None)
    got = mc.score_items(model, tok, items(), batch_tokens=64, progress=False)
    for item, s in zip(items(), got):
        want = [by_hand(model, tok, c, t) for c, t in zip(item.contexts, item.continuations)]
        assert s.loglik == pytest.approx(want, abs=1e-4), item.id
        assert s.n_tokens == [len(mc.encode_pair(tok, c, t)[1]) for c, t in zip(item.contexts, item.continuations)]
        assert s.n_chars == item.norm_lengths()


def test_norm_lengths_are_lm_evals_choice_lengths():
    # the choice without the space before it (lm-eval's len(doc_to_choice)); a partial item's choices are its contexts
    assert [it.norm_lengths() for it in items()] == [[6, 2, 17], [1, 10], [len("The quick brown dog"), 19], [5, 2]]
    given = MCItem("x", "t", "", ["Q:"] * 2, [" A", " B"], 0, ["Paris", "Rome"], ["A", "B"])
    assert given.norm_lengths() == [1, 1]


def test_acc_norm_divides_by_the_choice_without_its_leading_space():
    """By hand: log-likelihoods -2.0 for " ab" and -2.9 for " abc". lm-eval's acc_norm: -2.0/2 = -1.000 against
    -2.9/3 = -0.967, so the second choice; counting the space: -2.0/3 = -0.667 against -2.9/4 = -0.725, the first."""
    from camelid.eval.run import summarize

    item = MCItem("x", "t", "", ["Q:"] * 2, [" ab", " abc"], 1)
    s = mc.ItemScore("x", "", 1, loglik=[-2.0, -2.9], n_tokens=[2, 2], n_chars=item.norm_lengths())
    assert s.n_chars == [2, 3] and s.pred("char") == 1 and s.pred() == 0
    with_space = mc.ItemScore("x", "", 1, loglik=[-2.0, -2.9], n_tokens=[2, 2], n_chars=[3, 4])
    assert with_space.pred("char") == 0  # the old definition picked the other choice
    got = summarize([s], k_shot=0)
    assert got["acc"] == 0.0 and got["acc_norm"] == 1.0 and "acc_norm_char" not in got


def test_normalized_predictions_differ_as_they_should():
    s = mc.ItemScore("x", "", 0, loglik=[-6.0, -8.0], n_tokens=[2, 8], n_chars=[3, 16])
    assert s.pred() == 0  # raw: the short choice
    assert s.pred("token") == 1  # -3.0 vs -1.0 per token
    assert s.pred("char") == 1  # -2.0 vs -0.5 per character


def test_a_ptuning_model_is_scored_row_by_row_through_its_prefix(model_tok):
    from peft import PrefixTuningConfig, get_peft_model

    base, tok = model_tok
    torch.manual_seed(2)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base.name_or_path, dtype=torch.float32),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    ).eval()
    assert mc.decoder_and_head(model) is None  # the prefix lives in peft's forward: the per-row path runs
    got = mc.score_items(model, tok, items(), batch_tokens=64, progress=False)
    for item, s in zip(items(), got):
        want = [by_hand(model, tok, c, t) for c, t in zip(item.contexts, item.continuations)]
        assert s.loglik == pytest.approx(want, abs=1e-4), item.id
    plain = mc.score_items(base, tok, items(), progress=False)
    assert [s.loglik for s in got] != [s.loglik for s in plain]  # the prefix changed the scores


def test_bf16_pass_rescores_exactly_the_near_ties_in_float32(model_tok, monkeypatch):
    """eval.bf16_margin: everything scored by a bf16 copy of the model (forced here, whatever the CPU), then the items whose
    best two choices are within the margin scored again in float32: those equal a float32 run, the rest keep bf16's
    scores."""
    model, tok = model_tok
    monkeypatch.setattr(mc, "fast_bf16", lambda device_type: True)
    exact = mc.score_items(model, tok, items(), batch_tokens=64, progress=False)
    bf16 = mc.score_items(model, tok, items(), batch_tokens=64, progress=False, bf16_margin=1e-12)
    assert [s.loglik for s in bf16] != [s.loglik for s in exact]  # the first pass really ran in bf16
    for a, b in zip(bf16, exact):
        assert a.loglik == pytest.approx(b.loglik, abs=0.5)
    margins = sorted(s.margin() for s in bf16)
    cut = (margins[1] + margins[2]) / 2  # two items below, two above
    got = mc.score_items(model, tok, items(), batch_tokens=64, progress=False, bf16_margin=cut)
    for a, b, e in zip(got, bf16, exact):
        assert a.rechecked == (b.margin() < cut)
        assert a.loglik == (e.loglik if a.rechecked else b.loglik)
    assert sum(s.rechecked for s in got) == 2
    every = mc.score_items(model, tok, items(), batch_tokens=64, progress=False, bf16_margin=1e9)
    assert [s.loglik for s in every] == [s.loglik for s in exact] and all(s.rechecked for s in every)


def test_margin_is_the_closest_call_in_units_of_a_one_token_gap():
    # One-token choices of one character: every scoring is the raw score, and the margin is the gap to the second.
    s = mc.ItemScore("x", "", 0, loglik=[-1.0, -2.5, -1.75], n_tokens=[1, 1, 1], n_chars=[1, 1, 1])
    assert s.margin() == pytest.approx(0.75)
    # Longer choices get sqrt(tokens)/2 of room each; a normalized score divides that room by the length.
    s = mc.ItemScore("x", "", 0, loglik=[-6.0, -8.0], n_tokens=[2, 8], n_chars=[3, 16])
    raw = 2 / (2**0.5 / 2 + 8**0.5 / 2)  # -6 vs -8: 0.943
    per_token = 2 / (8**0.5 / 2 / 8 + 2**0.5 / 2 / 2)  # -1 (choice 1) vs -3: 3.77
    per_char = 1.5 / (8**0.5 / 2 / 16 + 2**0.5 / 2 / 3)  # -0.5 vs -2: 4.63
    assert s.margin() == pytest.approx(min(raw, per_token, per_char)) and s.margin() == pytest.approx(raw)
    # A tie on a long choice's per-character score is a tie whatever its raw gap.
    s = mc.ItemScore("x", "", 0, loglik=[-10.0, -20.0], n_tokens=[10, 20], n_chars=[50, 100])
    assert s.margin() == pytest.approx(0.0)
    assert mc.ItemScore("y", "", 0, loglik=[-1.0], n_tokens=[1], n_chars=[1]).margin() == float("inf")


def test_bf16_margin_is_checked_and_reported():
    from camelid.config import EvalConfig
    from camelid.eval.run import summarize, table

    assert EvalConfig(bf16_margin=-0.1).check() == ["eval.bf16_margin must be >= 0 (0 = float32 throughout)"]
    assert EvalConfig(bf16_margin=0.5).check() == []
    rows = [mc.ItemScore(f"x{i}", "", 0, [-1.0, -1.2], [1, 1], [1, 1], rechecked=i < 2) for i in range(3)]
    got = summarize(rows, k_shot=0)
    assert got["rechecked_float32"] == 2
    result = {"label": "run", "model": "m", "tasks": {"t": {**got}}, "perplexity": {}, "samples": []}
    assert "2 near-ties rescored in float32" in table(result)
    assert "rechecked_float32" not in summarize(rows[2:], k_shot=0)
