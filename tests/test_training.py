"""Every method × {pt, sft} trains a tiny real model: finite falling loss, exactly the right weights change."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config

from camelid.model import count_parameters, load_model, load_tokenizer
from camelid.train import pt, sft

METHODS = ["full", "freeze", "lora", "qlora", "ptuning", "embedding"]


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def expected_trainable(method, model_cfg, cfg):
    h, v, n_layers = model_cfg.hidden_size, model_cfg.vocab_size, model_cfg.num_hidden_layers
    kv = model_cfg.num_key_value_heads * (h // model_cfg.num_attention_heads)
    i = model_cfg.intermediate_size
    if method in ("lora", "qlora"):  # r·(in+out) for q,k,v,o,gate,up,down in every layer
        shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
        return n_layers * sum(cfg.lora.r * (a + b) for a, b in shapes)
    if method == "ptuning":  # one key and one value vector per virtual token per layer
        return cfg.ptuning.virtual_tokens * n_layers * 2 * kv
    if method == "embedding":
        return v * h * (1 if model_cfg.tie_word_embeddings else 2)
    return None


@pytest.mark.parametrize("stage", ["sft", "pt"])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains(method, stage, tiny_model, chat_file, text_file, tmp_path):
    data = chat_file if stage == "sft" else text_file
    cfg = tiny_config(
        tiny_model,
        data,
        tmp_path,
        method=method,
        **{
            "train.max_steps": 6,
            "data.packing": method != "ptuning",
            "freeze.last_n_blocks": 1,
            "freeze.modules": ["mlp"],
            "train.lr": 3e-3 if method in ("full", "freeze") else 1e-2,
        },
    )
    # Same seed → same initial weights as the run makes; snapshot them to compare after.
    reference = load_model(cfg)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    trainable = {n for n, p in reference.named_parameters() if p.requires_grad}
    n_train, _ = count_parameters(reference)
    main = sft.main if stage == "sft" else pt.main
    main(cfg)
    run = tmp_path / "run"
    ls = losses(run)
    assert len(ls) == 6 and all(torch.isfinite(torch.tensor(ls)))
    assert ls[-1] < ls[0], ls

    from camelid.model import load_for_inference

    trained, _ = load_for_inference(run, merge=False)
    after = dict(trained.named_parameters())
    exp = expected_trainable(method, trained.config if hasattr(trained, "config") else None, cfg)
    if exp is not None:
        assert n_train == exp
    if method == "freeze":
        assert trainable and all(".1.mlp." in n for n in trainable)
    if method in ("full", "freeze", "embedding"):
        for n, p0 in before.items():
            changed = not torch.equal(p0, after[n].detach())
            assert changed == (n in trainable), n
    else:  # adapters: the base is untouched on disk, the adapter moved away from its init
        assert (run / "final" / "adapter_config.json").exists()
        for n, p in after.items():
            if n in before and "lora_" not in n and "prompt_encoder" not in n and "base_layer" not in n:
                assert torch.equal(before[n], p.detach()), n


def test_trainable_count_for_freeze_and_full(tiny_model, chat_file, tmp_path):
    cfg = tiny_config(tiny_model, chat_file, tmp_path, method="freeze", **{"freeze.last_n_blocks": 1})
    model = load_model(cfg)
    block = sum(p.numel() for p in model.model.layers[1].parameters())
    assert count_parameters(model)[0] == block
    cfg = tiny_config(tiny_model, chat_file, tmp_path, method="full")
    t, total = count_parameters(load_model(cfg))
    assert t == total


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, chat_file, tmp_path):
    runs = {}
    for gc in (False, True):
        cfg = tiny_config(
            tiny_model,
            chat_file,
            tmp_path / str(gc),
            method="lora",
            **{"model.gradient_checkpointing": gc, "train.max_steps": 3},
        )
        sft.main(cfg)
        runs[gc] = losses(tmp_path / str(gc) / "run")
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_mixed_precision_auto_autocasts_in_bf16_only_where_it_is_native(tiny_model, chat_file, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    from camelid.train import loop

    runs = {}
    for name, precision, native in (("fp32", "no", True), ("auto-native", "auto", True), ("auto-not", "auto", False)):
        AcceleratorState._reset_state()  # accelerate fixes one precision per process; each stage is its own process
        monkeypatch.setattr(loop, "fast_bf16", lambda device_type, native=native: native)
        cfg = tiny_config(
            tiny_model,
            chat_file,
            tmp_path / name,
            method="lora",
            **{"train.mixed_precision": precision, "train.max_steps": 3},
        )
        sft.main(cfg)
        runs[name] = losses(tmp_path / name / "run")
    AcceleratorState._reset_state()
    assert runs["auto-not"] == runs["fp32"]  # no bf16 in hardware: plain float32, bit for bit
    assert runs["auto-native"] != runs["fp32"]  # autocast ran ...
    assert runs["auto-native"] == pytest.approx(runs["fp32"], rel=5e-2)  # ... and trains the same


def test_chats_emptied_by_truncation_are_dropped_and_counted(tiny_model, tmp_path):
    data = tmp_path / "long.jsonl"
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "北京 " * 200}, {"role": "assistant", "content": "ok"}]}
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [short] * 8 + [long] * 3) + "\n")
    cfg = tiny_config(tiny_model, data, tmp_path, **{"train.max_steps": 1})
    sft.main(cfg)
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["dropped_after_tokenizing"] == {"no assistant tokens within data.max_length": 3}
    assert info["sources"][0]["kept"] == 11


def test_tensorboard_and_run_folder_contents(tiny_model, chat_file, tmp_path):
    cfg = tiny_config(
        tiny_model, chat_file, tmp_path, **{"train.tensorboard": True, "train.max_steps": 2, "data.eval_split": 0.25}
    )
    sft.main(cfg)
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for name in (
        "config.yaml",
        "data.json",
        "metrics.jsonl",
        "summary.json",
        "final/adapter_config.json",
        "final/chat_template.jinja",
        "final/tokenizer.json",
    ):
        assert (run / name).exists(), name
    data = json.loads((run / "data.json").read_text())
    assert data["sources"][0]["files"][0]["sha256"] and data["eval_units"] == 8
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "eval_loss" in rows[0]  # the baseline before any update


def test_pt_text_is_tokenized_once_and_cached(tiny_model, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    pt.main(tiny_config(tiny_model, text_file, tmp_path / "a", **{"train.max_steps": 1}))
    cached = list((tmp_path / "home" / "tokenized").glob("pt-*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    pt.main(tiny_config(tiny_model, text_file, tmp_path / "b", **{"train.max_steps": 1}))
    assert list((tmp_path / "home" / "tokenized").glob("pt-*.json")) == cached
    assert cached[0].stat().st_mtime_ns == stamp
    # A different block length reuses the same token stream (the cache holds tokens, not blocks).
    pt.main(tiny_config(tiny_model, text_file, tmp_path / "c", **{"train.max_steps": 1, "data.max_length": 32}))
    assert len(list((tmp_path / "home" / "tokenized").glob("pt-*"))) == 3  # .json, .tokens, .docs
    assert json.loads((tmp_path / "b" / "run" / "data.json").read_text())["sources"][0]["kept"] > 0  # from cache


def test_pt_token_file_holds_each_document_then_eos_and_blocks_read_it_lazily(tiny_model, text_file, tmp_path):
    from camelid.data.loader import prepare_pt
    from camelid.data.token_file import Blocks, _batch_encoder
    from camelid.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    cfg = tiny_config(tiny_model, text_file, tmp_path, **{"data.max_length": 16, "data.eval_split": 0.25})
    data = prepare_pt(tok, cfg.data, 0, tmp_path / "cache")
    expected = [
        t
        for line in text_file.read_text().splitlines()
        for t in (*tok(line.strip(), add_special_tokens=False)["input_ids"], tok.eos_token_id)
    ]
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("pt-*.json")]
    tokens = np.fromfile(next((tmp_path / "cache").glob("pt-*.tokens")), dtype=meta["dtype"])
    assert meta["dtype"] == "uint16" and tokens.tolist() == expected
    starts = np.fromfile(next((tmp_path / "cache").glob("pt-*.docs")), dtype=np.uint64)
    assert len(starts) == meta["documents"] and tokens[starts[1:] - 1].tolist() == [tok.eos_token_id] * (
        len(starts) - 1
    )
    assert isinstance(data.train, Blocks) and isinstance(data.train.tokens, np.memmap)
    # the Rust backend called directly gives what tokenizer(texts) gives, special-token text included
    texts = ["plain words", "a <|im_end|> inside", "", "中文 and English"]
    assert _batch_encoder(tok)(texts) == tok(texts, add_special_tokens=False)["input_ids"]
    n = len(expected) // 16
    assert len(data.train) + len(data.eval) == n
    seen = sorted(b.tolist() for b in [*data.train, *data.eval])
    assert seen == sorted(expected[i * 16 : (i + 1) * 16] for i in range(n))


def test_progress_eta_counts_training_steps_only(tiny_model, chat_file, tmp_path, monkeypatch):
    """A slow step-0 eval once made a 9.5 min run show 46 min after step 1: evals are now off the bar's clock.
    Compared with measured step times, not constants: the machine may be busy."""
    import time

    from camelid.train import loop
    from camelid.train.losses import lm_loss

    pause = 1.5
    real_evaluate = loop.evaluate

    def slow_evaluate(*a, **k):
        time.sleep(pause)
        return real_evaluate(*a, **k)

    started = []  # when the first training micro-batch began

    def loss(model, batch):
        if model.training and not started:
            started.append(time.perf_counter())
        return lm_loss(model, batch)

    seen = []  # (when, the bar's elapsed seconds, the rate its ETA uses) after each step

    class Bar(loop.tqdm):
        def update(self, n=1):
            super().update(n)
            fd = self.format_dict
            seen.append((time.perf_counter(), fd["elapsed"], fd["rate"] or fd["n"] / fd["elapsed"]))

    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    monkeypatch.setattr(loop, "tqdm", Bar)
    sft.main(
        tiny_config(
            tiny_model, chat_file, tmp_path, **{"train.max_steps": 4, "train.eval_every": 2, "data.eval_split": 0.25}
        ),
        loss_fn=loss,
    )
    assert len(seen) == 4
    step1 = seen[0][0] - started[0]  # the first step's own time
    (_, elapsed1, rate1), (when4, elapsed4, _) = seen[0], seen[-1]
    assert elapsed1 < step1 + 0.5  # the step-0 eval came before the bar's clock started
    assert (4 - 1) / rate1 < 3 * step1 + 1.0  # so the ETA after step 1 is three steps' time
    assert elapsed4 < (when4 - started[0]) - pause + 0.5  # the eval after step 2 is off its clock too


def test_a_run_folder_names_its_final_weights_as_the_base_model(tiny_model, chat_file, tmp_path):
    """model.name=runs/pt (not runs/pt/final) trains on what that run ended with, as chat and serve read it."""
    earlier = tmp_path / "earlier"
    shutil.copytree(tiny_model, earlier / "final")
    (earlier / "metrics.jsonl").write_text("")
    cfg = tiny_config(earlier, chat_file, tmp_path, method="full", **{"train.max_steps": 1})
    assert len(load_tokenizer(str(earlier))) == len(load_tokenizer(str(tiny_model)))
    assert load_model(cfg).name_or_path == str(earlier / "final")
    sft.main(cfg)
    info = json.loads((tmp_path / "run" / "final" / "camelid_model.json").read_text())
    assert info["base_model"] == str(earlier) and info["base_path"] == str(earlier / "final")


def test_qlora_gradients_are_the_same_after_an_eval_pass(tiny_model, chat_file, tmp_path):
    # bitsandbytes repacks a 4-bit weight for its CPU inference kernel the first time it runs in eval mode without
    # grad (the step-0 eval does that), and that kernel has no backward: training after it silently lost the
    # gradient through every frozen base layer.
    cfg = tiny_config(tiny_model, chat_file, tmp_path, method="qlora")
    model = load_model(cfg)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))

    def lora_grads():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = lora_grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads()
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, msg=name)


def test_training_on_from_a_lora_run_starts_from_what_it_learned(tiny_model, chat_file, text_file, tmp_path):
    # A pt LoRA run under an sft LoRA run: the pt adapter was attached unmerged as "default" and then replaced by
    # the new adapter of that name, so sft silently started from the untouched base.
    from camelid.model import load_for_inference, merge_adapter

    pt_cfg = tiny_config(tiny_model, text_file, tmp_path / "pt", method="lora", **{"train.max_steps": 3})
    pt.main(pt_cfg)
    pt_run = tmp_path / "pt" / "run"
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 11]])

    def logits(model):
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids).logits

    after_pt = logits(load_for_inference(pt_run)[0])
    assert not torch.allclose(after_pt, logits(load_for_inference(tiny_model)[0]), atol=1e-3)
    sft_cfg = tiny_config(pt_run, chat_file, tmp_path / "sft", method="lora", **{"train.max_steps": 3})
    torch.testing.assert_close(logits(load_model(sft_cfg)), after_pt)  # the new LoRA starts at zero: pt's output

    sft.main(sft_cfg)
    sft_run = tmp_path / "sft" / "run"
    adapter = json.loads((sft_run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((pt_run / "final").resolve())
    merged = merge_adapter(sft_run, tmp_path / "merged")
    unmerged = logits(load_for_inference(sft_run, merge=False)[0])
    torch.testing.assert_close(logits(load_for_inference(merged)[0]), unmerged, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unmerged, after_pt, atol=1e-3)  # and sft trained on top of it
