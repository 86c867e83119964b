"""Reward model and DPO end to end on the tiny model (CPU, seconds each): they learn a separable toy preference,
exactly the right weights move, the reference stays put, and the results load, evaluate, export and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_cli import run_cli
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from camelid.cli import main as cli
from camelid.config import DataConfig
from camelid.data.loader import collate_pairs, render_pairs
from camelid.model import is_reward_model, load_model, load_reward_model, load_tokenizer
from camelid.train import dpo, rm
from camelid.train.losses import sequence_logps


def write_pairs(path, n, start=0):
    """A separable preference: the chosen answer says Paris, the rejected one London."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(
                json.dumps(
                    {
                        "prompt": f"What is the capital of France? #{i}",
                        "chosen": f"Paris is the capital. {i % 7}",
                        "rejected": f"London is the capital. {i % 7}",
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    return write_pairs(d / "train.jsonl", 64), write_pairs(d / "eval.jsonl", 16, start=100)


def config(tiny_model, pairs, tmp_path, **over):
    train, ev = pairs
    return tiny_config(tiny_model, train, tmp_path, **{"data.eval": [str(ev)], **over})


def metric_rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evals(run_dir):
    """(step-0 eval, last eval) lines of a run."""
    rows = [r for r in metric_rows(run_dir) if "eval_loss" in r]
    assert rows[0]["step"] == 0
    return rows[0], rows[-1]


class Spy:
    """Wraps a loss to keep the model the loop trains (the object itself, after training)."""

    def __init__(self, loss_fn):
        self.loss_fn, self.model = loss_fn, None

    def __call__(self, model, batch):
        self.model = model
        return self.loss_fn(model, batch)


def eval_batch(tiny_model, pairs):
    tok = load_tokenizer(str(tiny_model))
    records = [json.loads(x) for x in pairs[1].read_text().splitlines()]
    records = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in records
    ]
    ps, _ = render_pairs(tok, records, DataConfig(max_length=64))
    batch = collate_pairs(ps, tok.pad_token_id)
    batch.pop("num_tokens")
    return tok, batch


def base_weights(tiny_model):
    return load_file(str(tiny_model / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# reward model


def test_rm_lora_learns_loads_evaluates_and_exports(tiny_model, pairs, tmp_path):
    cfg = config(tiny_model, pairs, tmp_path, method="lora", **{"train.max_steps": 30, "train.lr": 3e-3})
    tok, batch = eval_batch(tiny_model, pairs)
    torch.manual_seed(cfg.train.seed)  # the run seeds the same way: same random head and LoRA init
    init = {
        n: p.detach().clone() for n, p in load_model(cfg, reward=True, pad_token_id=tok.pad_token_id).named_parameters()
    }
    spy = Spy(rm.reward_loss(cfg.rm.margin))
    metrics = rm.main(cfg, loss_fn=spy)
    run = tmp_path / "run"

    first, last = evals(run)
    assert first["eval_accuracy"] <= 0.6 and last["eval_accuracy"] >= 0.9, (first, last)
    assert last["eval_loss"] < first["eval_loss"] and last["eval_margin"] > first["eval_margin"] + 1
    assert metrics["eval_accuracy"] == last["eval_accuracy"]

    # trainable weights moved; the frozen base is bit-identical to the base folder's file
    model = spy.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and any("score" in n for n in trainable)
    base = base_weights(tiny_model)
    compared = set()
    for n, p in model.named_parameters():
        assert torch.equal(init[n], p.detach()) != (n in trainable), n
        if n not in trainable and "score" not in n:
            key = n.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(base[key], p.detach()), n
            compared.add(key)
    assert compared == set(base) - {"lm_head.weight"}

    # the saved run: a SEQ_CLS adapter, loaded merged, scoring what the trained model scores
    assert (run / "final" / "adapter_config.json").exists() and is_reward_model(run)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        loaded, _ = load_reward_model(run)
        merged = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)
    chosen, rejected = trained.chunk(2)
    assert (chosen > rejected).float().mean().item() == last["eval_accuracy"]

    # `camelid eval RUN eval.preference=[...]` reports the accuracy training's last eval reported
    cli(["eval", str(run), f"eval.preference=[{pairs[1]}]"])
    got = json.loads((run / "eval" / "after.json").read_text())["reward"][str(pairs[1])]
    assert got["n"] == 16 and got["accuracy"] == last["eval_accuracy"]
    assert got["mean_margin"] == pytest.approx(last["eval_margin"], rel=1e-3)

    # `camelid export`: a plain sequence-classification folder equal to base + adapter
    out = tmp_path / "merged"
    cli(["export", str(run), str(out)])
    assert not (out / "adapter_config.json").exists() and is_reward_model(out)
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert exported.config.num_labels == 1 and exported.config.pad_token_id == tok.pad_token_id
    from peft import PeftModel

    unmerged = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=1, pad_token_id=tok.pad_token_id
    )
    unmerged = PeftModel.from_pretrained(unmerged, str(run / "final")).eval()
    with torch.no_grad():
        a = exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = unmerged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:, 0], trained, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_rm_full_and_freeze_save_a_plain_classifier(method, tiny_model, pairs, tmp_path):
    cfg = config(
        tiny_model,
        pairs,
        tmp_path,
        method=method,
        **{"train.max_steps": 20, "train.lr": 1e-3 if method == "full" else 1e-2, "freeze.last_n_blocks": 1},
    )
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    torch.manual_seed(cfg.train.seed)
    ref = load_model(cfg, reward=True, pad_token_id=tok.pad_token_id)
    init = {n: p.detach().clone() for n, p in ref.named_parameters()}
    trainable = {n for n, p in ref.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable  # the new head trains under freeze too
    if method == "freeze":
        assert all(n.startswith("model.layers.1.") or n == "score.weight" for n in trainable)
    rm.main(cfg)
    run = tmp_path / "run"
    first, last = evals(run)
    assert last["eval_loss"] < first["eval_loss"] and last["eval_accuracy"] >= 0.9, (first, last)

    final = run / "final"
    assert not (final / "adapter_config.json").exists() and is_reward_model(run)
    arch = json.loads((final / "config.json").read_text())["architectures"]
    assert arch == ["LlamaForSequenceClassification"]
    saved = AutoModelForSequenceClassification.from_pretrained(final)
    assert saved.config.num_labels == 1 and saved.config.pad_token_id == tok.pad_token_id
    for n, p in saved.named_parameters():
        assert torch.equal(init[n], p.detach()) != (n in trainable), n


# ---------------------------------------------------------------------------------------------
# DPO


@pytest.fixture
def record_reference(monkeypatch):
    """The Reference objects dpo.main builds, and which of their log-prob calls came from training steps."""
    made = []

    class Recording(dpo.Reference):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.calls = {"precompute": 0, "live": 0}
            made.append(self)

        def logps(self, batch, model=None):
            self.calls["live" if model is not None else "precompute"] += 1
            return super().logps(batch, model)

    monkeypatch.setattr(dpo, "Reference", Recording)
    return made


def test_dpo_lora_margin_grows_and_the_reference_stays(tiny_model, pairs, tmp_path, record_reference):
    cfg = config(tiny_model, pairs, tmp_path, method="lora", **{"train.max_steps": 12, "train.lr": 1e-2})
    tok, batch = eval_batch(tiny_model, pairs)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base_logps = sequence_logps(plain, batch)
    spy = Spy(lambda m, b: dpo.dpo_batch_loss(record_reference[0], cfg.dpo)(m, b))
    dpo.main(cfg, loss_fn=spy)
    first, last = evals(tmp_path / "run")
    # at step 0 the policy is the reference (LoRA's B is zero): no margin, loss log 2
    assert first["eval_margin"] == 0 and first["eval_reward_chosen"] == 0
    assert first["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert last["eval_margin"] > 0.5 and last["eval_accuracy"] >= 0.9 and last["eval_loss"] < first["eval_loss"]
    assert last["eval_logp_chosen"] > first["eval_logp_chosen"]  # the policy moved towards the chosen answers

    ref = record_reference[0]
    assert ref.copy is None and ref.calls["live"] > 0  # adapter switched off, no second model
    model = spy.model
    model.eval()
    with torch.no_grad():
        after_ref = ref.logps(batch, model)
        policy = sequence_logps(model, batch)
    torch.testing.assert_close(after_ref, base_logps, atol=1e-4, rtol=1e-5)
    assert (policy - base_logps).abs().max() > 0.1
    # switching the adapter off and on again leaves it trainable, in the mode the reference found it in
    model.train()
    ref.logps(batch, model)
    assert model.training and any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_dpo_full_uses_a_frozen_copy(tiny_model, pairs, tmp_path, record_reference):
    cfg = config(tiny_model, pairs, tmp_path, method="full", **{"train.max_steps": 12, "train.lr": 1e-3})
    dpo.main(cfg)
    first, last = evals(tmp_path / "run")
    assert first["eval_margin"] == 0 and first["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert last["eval_margin"] > 1 and last["eval_accuracy"] >= 0.9
    ref = record_reference[0]
    assert ref.copy is not None and ref.copy is not ref.policy and ref.calls["live"] > 0
    base = base_weights(tiny_model)
    copy = dict(ref.copy.named_parameters())
    assert set(copy) == set(base)
    for n, p in copy.items():
        assert not p.requires_grad and torch.equal(p.detach(), base[n]), n
    policy = dict(ref.policy.named_parameters())
    assert all(p.requires_grad for p in policy.values())
    assert not torch.equal(
        policy["model.layers.0.self_attn.q_proj.weight"].detach(), base["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not (tmp_path / "run" / "final" / "adapter_config.json").exists()


@pytest.mark.parametrize(
    "over,loss0",
    [
        ({"dpo.loss": "ipo", "dpo.beta": 0.5}, 1.0),  # h = 0 at step 0: (0 − 1/(2·0.5))² = 1
        ({"dpo.label_smoothing": 0.2}, math.log(2)),  # cDPO at h = 0: 0.8·log 2 + 0.2·log 2
    ],
)
def test_dpo_ipo_and_label_smoothing_run(over, loss0, tiny_model, pairs, tmp_path):
    cfg = config(tiny_model, pairs, tmp_path, method="lora", **{"train.max_steps": 6, "train.lr": 1e-2, **over})
    dpo.main(cfg)
    first, last = evals(tmp_path / "run")
    assert first["eval_loss"] == pytest.approx(loss0, abs=1e-5)
    assert all(math.isfinite(r["loss"]) for r in metric_rows(tmp_path / "run") if "loss" in r)
    assert last["eval_loss"] < first["eval_loss"] and last["eval_margin"] > 0


@pytest.mark.parametrize("method", ["lora", "full"])
def test_precomputed_reference_gives_the_live_losses(method, tiny_model, pairs, tmp_path, record_reference):
    got = {}
    for pre in (False, True):
        cfg = config(
            tiny_model,
            pairs,
            tmp_path / str(pre),
            method=method,
            **{"train.max_steps": 2, "train.lr": 1e-3, "dpo.precompute_ref": pre},
        )
        dpo.main(cfg)
        got[pre] = [r for r in metric_rows(tmp_path / str(pre) / "run")]
    live, pre = record_reference
    assert live.calls["precompute"] == 0 and live.calls["live"] > 0
    # precompute scores train + eval (64 + 16 pairs, batches of 4) once; training then never calls the reference
    assert pre.calls == {"precompute": 20, "live": 0}
    if method == "full":
        assert pre.copy is None  # freed after precomputing
    for a, b in zip(got[False], got[True], strict=True):
        assert a["step"] == b["step"]
        for k in a:
            if k == "loss" or k.startswith("eval_") or k.startswith("reward") or k in ("margin", "accuracy"):
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-5), (a["step"], k)


# ---------------------------------------------------------------------------------------------
# errors and resume


def test_bad_preference_data_names_file_line_and_field(tiny_model, tmp_path, capsys):
    good = json.dumps({"prompt": "hi", "chosen": "Paris.", "rejected": "London."})
    same = tmp_path / "same.jsonl"
    same.write_text(good + "\n" + json.dumps({"prompt": "hi", "chosen": "Paris.", "rejected": "Paris."}) + "\n")
    proc = run_cli("dpo", f"model.name={tiny_model}", f"data.train={same}", f"train.output_dir={tmp_path}/run")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "same.jsonl:2" in proc.stderr and "'rejected'" in proc.stderr and "identical" in proc.stderr
    assert "Traceback" not in proc.stderr

    missing = tmp_path / "missing.jsonl"
    missing.write_text(good + "\n" + good + "\n" + json.dumps({"prompt": "hi", "chosen": "Paris."}) + "\n")
    with pytest.raises(SystemExit) as e:
        cli(["rm", f"model.name={tiny_model}", f"data.train={missing}", f"train.output_dir={tmp_path}/run2"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "missing.jsonl:3" in err and "'rejected'" in err and "missing" in err


RESUME = {
    "method": "lora",
    "train.max_steps": 8,
    "train.save_every": 4,
    "train.eval_every": 4,
    "train.grad_accum": 2,
    "train.batch_size": 2,
    "train.lr": 3e-3,
    "lora.dropout": 0.1,
    "train.scheduler": "cosine",
    "train.warmup_ratio": 0.25,
}


def test_rm_resume_matches_an_uninterrupted_run(tiny_model, pairs, tmp_path):
    rm.main(config(tiny_model, pairs, tmp_path / "a", **RESUME))
    expected = metric_rows(tmp_path / "a" / "run")

    calls = [0]

    def dying(model, batch):
        if model.training:
            calls[0] += 1
            if calls[0] == 2 * 5 + 2:  # second micro-batch of step 6, after checkpoint-4
                raise RuntimeError("power cut")
        return rm.reward_loss()(model, batch)

    cfg = config(tiny_model, pairs, tmp_path / "b", **RESUME)
    with pytest.raises(RuntimeError, match="power cut"):
        rm.main(cfg, loss_fn=dying)
    run = tmp_path / "b" / "run"
    assert not (run / "final").exists() and [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-4"]
    rm.main(cfg)
    got = metric_rows(run)

    def comparable(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert comparable(got) == comparable(expected)
    assert expected[-1]["eval_accuracy"] is not None and got[-1]["step"] == 8
    a = load_file(str(tmp_path / "a" / "run" / "final" / "adapter_model.safetensors"))
    b = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# pairs cut by data.max_length


def write_cut_pairs(path):
    """Pairs that data.max_length=64 cuts: before the fix, the three of the first two kinds were kept with identical
    sides (a multi-turn prompt cut inside an earlier assistant turn, which then passed as the "answer"; answers
    equal up to the cut), so their rewards were equal and the loss ln 2 whatever the model did."""
    long_turn = "The history of Paris is long and the city grew along the Seine over many centuries. " * 3
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about Paris. #{i}"},
                {"role": "assistant", "content": long_turn},
                {"role": "user", "content": "And its capital status?"},
            ],
            "chosen": "Paris is the capital.",
            "rejected": "London is the capital.",
        }
        for i in range(2)
    ]
    rows.append(
        {"prompt": "Describe the river.", "chosen": long_turn + "It is calm.", "rejected": long_turn + "It is wild."}
    )
    rows += [
        {
            "prompt": f"What is the capital of France? #{i}",
            "chosen": "Paris is the capital.",
            "rejected": "London is the capital.",
        }
        for i in range(12)
    ]
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


class NoTwinSides:
    """A loss wrapper that fails when a batch (train or eval) holds a pair whose two rows are the same tokens."""

    def __init__(self, loss_fn):
        self.loss_fn, self.batches = loss_fn, 0

    def __call__(self, model, batch):
        chosen, rejected = batch["input_ids"].chunk(2)
        for c, r in zip(chosen, rejected):
            assert not torch.equal(c, r), "a pair with identical sides reached the loss"
        self.batches += 1
        return self.loss_fn(model, batch)


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_pairs_identical_after_truncation_are_dropped_and_counted(stage, tiny_model, tmp_path, monkeypatch):
    data = write_cut_pairs(tmp_path / "cut.jsonl")
    cfg = tiny_config(
        tiny_model,
        data,
        tmp_path,
        **{"data.max_length": 64, "train.max_steps": 3, "data.eval_split": 0.2, "train.eval_every": 2},
    )
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    from camelid.data.loader import load_records

    records, _ = load_records(cfg.data.train, "preference", cfg.data)
    pairs_, dropped = render_pairs(tok, records, cfg.data)
    assert dropped == {
        "answer cut to nothing by data.max_length": 2,
        "chosen and rejected identical within data.max_length": 1,
    }
    assert len(pairs_) == 12
    for p in pairs_:  # each side is supervised on its own final answer, and the sides differ
        assert p.chosen.input_ids != p.rejected.input_ids and p.chosen.n_supervised and p.rejected.n_supervised

    if stage == "rm":
        spy = NoTwinSides(rm.reward_loss())
        rm.main(cfg, loss_fn=spy)
    else:  # DPO's loss needs the reference main builds: wrap the loss main makes
        spy = NoTwinSides(None)
        real = dpo.dpo_batch_loss
        monkeypatch.setattr(dpo, "dpo_batch_loss", lambda ref, dc: setattr(spy, "loss_fn", real(ref, dc)) or spy)
        dpo.main(cfg)
    assert spy.batches >= 3
    recorded = json.loads((tmp_path / "run" / "data.json").read_text())["dropped_after_tokenizing"]
    assert recorded == dropped
