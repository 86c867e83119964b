"""A model whose vocabulary `camelid tok extend` grew: resized embeddings keep old logits and start new rows as the
mean of their old pieces, `embedding.new_rows_only` moves only new rows (over several AdamW steps), and the
two-stage recipe (configs/pt_vocab_stage1.yaml, then stage2) runs end to end into export, serving and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_model_dir, tiny_config
from safetensors.torch import load_file
from test_tokenizer import zh_lines

from camelid.config import ConfigError, load_config, validate
from camelid.utils import CamelidError

pytest.importorskip("sentencepiece")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def extended(request, tmp_path_factory):
    """(base model folder, extended model folder, Chinese corpus): `tok extend` with a domain BPE trained inline."""
    from camelid.train.tok import extend_main

    root = tmp_path_factory.mktemp("vocab")
    base = build_model_dir(root / "base", tie=request.param)
    corpus = root / "zh.txt"
    corpus.write_text("\n".join(zh_lines(1500)), encoding="utf-8")
    cfg = load_config(None, [f"tok.train=[{corpus}]", "tok.vocab_size=900"])
    extend_main(cfg, str(base), None, str(root / "ext"))
    return base, root / "ext", corpus


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_resize_keeps_old_logits_and_starts_new_rows_at_their_pieces_mean(extended):
    base_dir, ext_dir, _ = extended
    old, old_tok = _load(base_dir)
    new, new_tok = _load(ext_dir)
    first = len(old_tok)
    assert new.config.vocab_size == new.get_input_embeddings().num_embeddings == len(new_tok) > first
    tied = old.config.tie_word_embeddings
    assert (new.get_output_embeddings().weight is new.get_input_embeddings().weight) == tied
    ids = old_tok(
        ["北京是中国的首都。The quick brown fox.", "你好！请问有什么可以帮你？"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        before, after = old(**ids).logits, new(**ids).logits
    assert torch.equal(before, after[..., :first])  # old tokens in, old tokens' logits out: bit for bit
    assert torch.isfinite(after).all()
    pieces = old_tok.backend_tokenizer.model
    for i in (first, first + 7, len(new_tok) - 1):
        parts = [t.id for t in pieces.tokenize(new_tok.convert_ids_to_tokens(i))]
        assert len(parts) >= 2
        for w_old, w_new in [
            (old.get_input_embeddings().weight, new.get_input_embeddings().weight),
            (old.get_output_embeddings().weight, new.get_output_embeddings().weight),
        ]:
            torch.testing.assert_close(w_new[i], w_old[parts].mean(0))


def _embedding_run(ext_dir, corpus, tmp_path, **over):
    from camelid.train import pt

    cfg = tiny_config(ext_dir, corpus, tmp_path, method="embedding", **{"train.max_steps": 5, **over})
    pt.main(cfg)
    return load_file(str(tmp_path / "run" / "final" / "model.safetensors"))


def test_new_rows_only_moves_only_new_rows(extended, tmp_path):
    _, ext_dir, corpus = extended
    first = json.loads((ext_dir / "camelid_vocab.json").read_text())["first_new_id"]
    start = load_file(str(ext_dir / "model.safetensors"))
    trained = _embedding_run(ext_dir, corpus, tmp_path / "a", **{"embedding.new_rows_only": True})
    rows = [n for n in start if "embed_tokens" in n or "lm_head" in n]
    assert rows
    for name, w in start.items():
        if name in rows:
            assert torch.equal(trained[name][:first], w[:first]), name  # five AdamW steps: not one bit moved
            assert not torch.allclose(trained[name][first:], w[first:]), name
        else:
            assert torch.equal(trained[name], w), name
    # the run's folder still says where new rows start (for another stage 1 run from it)
    assert json.loads((tmp_path / "a" / "run" / "final" / "camelid_vocab.json").read_text())["first_new_id"] == first
    # without the option the old rows move too: the comparison above is not vacuous
    free = _embedding_run(ext_dir, corpus, tmp_path / "b")
    assert not torch.equal(free[rows[0]][:first], start[rows[0]][:first])


def test_new_rows_only_is_checked(tiny_model, text_file, tmp_path):
    cfg = tiny_config(
        tiny_model,
        text_file,
        tmp_path,
        method="embedding",
        **{"embedding.new_rows_only": True, "train.weight_decay": 0.1},
    )
    with pytest.raises(ConfigError, match="weight_decay"):
        validate(cfg, "pt")
    with pytest.raises(ConfigError, match="needs method embedding"):
        validate(tiny_config(tiny_model, text_file, tmp_path, method="lora", **{"embedding.new_rows_only": True}), "pt")
    from camelid.train import pt

    with pytest.raises(CamelidError, match="camelid_vocab.json"):  # a folder `tok extend` did not write
        pt.main(tiny_config(tiny_model, text_file, tmp_path, method="embedding", **{"embedding.new_rows_only": True}))


def test_two_stage_recipe_end_to_end(extended, tmp_path):
    """Shipped stage-1 and stage-2 configs on the tiny extended model, then export, serving and eval: the new
    vocabulary is carried through without size mismatches."""
    if json.loads((extended[0] / "config.json").read_text())["tie_word_embeddings"]:
        pytest.skip("once is enough: the untied variant")
    from camelid.engine import Engine, SamplingParams
    from camelid.eval.run import main as evaluate
    from camelid.model import load_for_inference, merge_adapter
    from camelid.serve.chat import answers
    from camelid.train import pt

    _, ext_dir, corpus = extended
    tiny = [
        "data.max_length=64",
        "data.eval_split=0.1",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.tensorboard=false",
        f"data.train=[{corpus}]",
    ]
    one = pt.main(
        load_config(
            CONFIGS / "pt_vocab_stage1.yaml",
            tiny + [f"model.name={ext_dir}", f"train.output_dir={tmp_path / 's1'}", "train.lr=1e-2"],
        )
    )
    two = pt.main(
        load_config(
            CONFIGS / "pt_vocab_stage2.yaml",
            tiny
            + [
                f"model.name={tmp_path / 's1' / 'final'}",
                f"train.output_dir={tmp_path / 's2'}",
                "lora.r=4",
                "lora.alpha=8",
            ],
        )
    )
    assert one["eval_loss"] > 0 and two["eval_loss"] > 0
    merged = merge_adapter(tmp_path / "s2", tmp_path / "merged")
    model, tok = load_for_inference(merged, dtype="float32")
    assert (
        model.get_input_embeddings().num_embeddings
        == len(tok)
        == json.loads((ext_dir / "camelid_vocab.json").read_text())["vocab_size"]
    )
    [answer] = answers(
        Engine(model, tok),
        [[{"role": "user", "content": "北京是中国的首都。"}]],
        SamplingParams(max_tokens=8, temperature=0),
    )
    assert isinstance(answer, str)
    cfg = load_config(None, [f"eval.perplexity=[{corpus}]", "eval.ppl_window=32", "eval.ppl_stride=16"])
    result = json.loads(evaluate(cfg, str(merged), out=str(tmp_path / "ev")).read_text())
    assert result["perplexity"]["zh.txt"]["ppl"] > 1
