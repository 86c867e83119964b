"""`camelid eval` and the eval a training run ends with, end to end on a tiny model, down to the HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import CORPUS
from test_cli import run_cli

from camelid.utils import CamelidError

EXAM = Path(__file__).parent / "fixtures" / "eval" / "mc_jsonl"


def test_eval_verb_writes_scores_perplexity_samples_and_merges(tiny_model, tmp_path):
    text = tmp_path / "domain.txt"
    text.write_text("\n".join(CORPUS[:5]), encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\n你好\n", encoding="utf-8")
    out = tmp_path / "ev"
    proc = run_cli(
        "eval",
        str(tiny_model),
        "--out",
        str(out),
        f"eval.tasks=[mc_jsonl={EXAM}]",
        "eval.k_shot=1",
        f"eval.samples={prompts}",
        "eval.max_new_tokens=6",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "eval" / "model.json").read_text())
    task = result["tasks"]["mc_jsonl_mc_jsonl"]  # mc_jsonl=<folder>: named after the folder
    assert task["task"] == "mc_jsonl" and task["source"] == str(EXAM.resolve())
    assert (
        task["n"] == 3
        and task["k_shot"] == 1
        and 0 <= task["acc"] <= 1
        and set(task["subjects"]) == {"arithmetic", "地理"}
    )
    preds = [json.loads(x) for x in (out / "eval" / "model.mc_jsonl_mc_jsonl.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(len(p["loglik"]) in (2, 3, 5) for p in preds)
    assert task["acc"] == sum(p["pred"] == p["gold"] for p in preds) / 3
    assert [s["prompt"] for s in result["samples"]] == ["What is the capital of France?", "你好"]
    assert "mc_jsonl" in proc.stdout and "acc" in proc.stdout
    # a second call adds perplexity and keeps the scores
    proc = run_cli(
        "eval",
        str(tiny_model),
        "--out",
        str(out),
        f"eval.perplexity=[{text}]",
        "eval.ppl_window=16",
        "eval.ppl_stride=8",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "eval" / "model.json").read_text())
    assert result["tasks"]["mc_jsonl_mc_jsonl"] == task and result["perplexity"]["domain.txt"]["ppl"] > 1


def test_eval_errors_are_one_line(tiny_model, tmp_path):
    proc = run_cli("eval", str(tiny_model), "--out", str(tmp_path))
    assert proc.returncode == 1 and "nothing to evaluate" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("eval", str(tiny_model), "--out", str(tmp_path), f"eval.tasks=[piqa={tmp_path}]")
    assert proc.returncode == 1 and "valid.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("eval", str(tiny_model), "--before", "eval.tasks=[mmlu]")
    assert proc.returncode == 1 and "run folder" in proc.stderr


def _exam(path: Path, questions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"question": q, "choices": ["yes", "no"], "answer": 0}) + "\n" for q in questions),
        encoding="utf-8",
    )
    return path


def test_two_exams_in_one_call_and_later_calls_keep_their_own_results(tiny_model, tmp_path):
    from camelid.config import load_config
    from camelid.eval.report import write_report
    from camelid.eval.run import main

    a = _exam(tmp_path / "a.jsonl", ["Is water wet?", "Is fire cold?"])
    b = _exam(tmp_path / "b.jsonl", ["Is the sky blue?", "Do fish fly?", "Is snow white?"])
    c = _exam(tmp_path / "c.jsonl", ["Is ice hot?"])
    out = tmp_path / "ev"

    def evaluate(*tasks: str) -> dict:
        main(load_config(None, [f"eval.tasks=[{','.join(tasks)}]"]), str(tiny_model), out=str(out))
        return json.loads((out / "eval" / "model.json").read_text())

    # a results file from before results were named per file (and before acc_norm followed lm-eval)
    old = {"acc": 0.5, "acc_norm_char": 0.5, "acc_norm_token": 0.5, "n": 4, "k_shot": 0}
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "model.json").write_text(
        json.dumps(
            {"label": "model", "model": "m", "tasks": {"mc_jsonl": old}, "perplexity": {}, "samples": [], "reward": {}}
        )
    )
    result = evaluate(f"mc_jsonl={a}", f"mc_jsonl={b}")
    assert {k: v["n"] for k, v in result["tasks"].items()} == {"mc_jsonl": 4, "mc_jsonl_a": 2, "mc_jsonl_b": 3}
    for name, n in (("mc_jsonl_a", 2), ("mc_jsonl_b", 3)):
        preds = (out / "eval" / f"model.{name}.jsonl").read_text().splitlines()
        assert len(preds) == n and "pred_norm" in json.loads(preds[0])
    first = result["tasks"]
    # a later call adds its exam and leaves the others as they were; a label names a second file of the same stem
    result = evaluate(f"mc_jsonl={c}", f"mc_jsonl:a_again={_exam(tmp_path / 'other' / 'a.jsonl', ['Is it?'])}")
    assert result["tasks"]["mc_jsonl_a"] == first["mc_jsonl_a"] and result["tasks"]["mc_jsonl_b"] == first["mc_jsonl_b"]
    assert result["tasks"]["mc_jsonl_c"]["n"] == 1 and result["tasks"]["a_again"]["n"] == 1
    # the same name for another file: refused before the model loads (the model path does not even exist)
    missing_model = str(tmp_path / "no-model")
    with pytest.raises(CamelidError, match="'mc_jsonl_a'.*second replacing the first.*mc_jsonl:LABEL="):
        main(
            load_config(None, [f"eval.tasks=[mc_jsonl={a},mc_jsonl={tmp_path / 'other' / 'a.jsonl'}]"]),
            missing_model,
            out=str(out),
        )
    with pytest.raises(CamelidError, match=f"already holds 'mc_jsonl_a' scored on {re.escape(str(a))}"):
        main(
            load_config(None, [f"eval.tasks=[mc_jsonl={tmp_path / 'other' / 'a.jsonl'}]"]),
            str(tiny_model),
            out=str(out),
        )
    with pytest.raises(CamelidError, match="'siqa'"):  # an alias names the same task
        main(load_config(None, ["eval.tasks=[siqa,social_iqa]"]), missing_model, out=str(out))
    # the report reads every exam
    page = write_report([out], tmp_path / "report").read_text()
    assert all(f"<h4>{n}</h4>" in page for n in ("mc_jsonl_a", "mc_jsonl_b", "mc_jsonl_c", "a_again"))
    assert "<td>acc_norm</td>" in page
    old_table = page.split("<h4>mc_jsonl</h4>")[1].split("<h4>")[0]  # the old entry: its own row, with a word why
    assert "<td>acc_norm_char</td><td>0.5000</td>" in old_table and "older camelid" in old_table
    assert page.count("acc_norm_char") == 2


def test_training_run_ends_with_before_and_after_eval_and_reports(tiny_model, chat_file, tmp_path):
    run = tmp_path / "run"
    text = tmp_path / "domain.txt"
    text.write_text("\n".join(CORPUS[:5]), encoding="utf-8")
    proc = run_cli(
        "sft",
        f"model.name={tiny_model}",
        f"data.train={chat_file}",
        f"train.output_dir={run}",
        "train.max_steps=3",
        "train.tensorboard=false",
        "data.max_length=64",
        "train.eval_every=1",
        "data.eval_split=0.2",
        f"eval.tasks=[mc_jsonl={EXAM}]",
        f"eval.perplexity=[{text}]",
        "eval.ppl_window=32",
        "eval.ppl_stride=16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((run / "eval" / "before.json").read_text())
    after = json.loads((run / "eval" / "after.json").read_text())
    assert before["model"] == str(tiny_model) and after["model"] == str(run)
    assert before["tasks"]["mc_jsonl_mc_jsonl"]["n"] == after["tasks"]["mc_jsonl_mc_jsonl"]["n"] == 3
    assert before["perplexity"]["domain.txt"]["ppl"] != after["perplexity"]["domain.txt"]["ppl"]  # it trained
    proc = run_cli("report", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (run / "report" / "index.html").read_text()
    assert "mc_jsonl_mc_jsonl" in html and "acc_norm" in html and "domain.txt" in html
    pngs = list((run / "report").glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_reward_model_accuracy_on_preference_pairs(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from camelid.data.templates import render
    from camelid.model import load_reward_model

    rm_dir = tmp_path / "rm"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Say something.", "chosen": a, "rejected": b}
        for a, b in [("Paris.", "北京"), ("1 2 3", "You are welcome."), ("你好", "Paris.")]
    ]
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    proc = run_cli("eval", str(rm_dir), "--out", str(tmp_path / "ev"), f"eval.preference=[{pairs}]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "ev" / "eval" / "model.json").read_text())["reward"][str(pairs)]
    # the same decision by hand: the model's score of each rendered answer
    model, tok = load_reward_model(str(rm_dir))
    wins = 0
    for r in rows:
        prompt = [{"role": "user", "content": r["prompt"]}]
        with torch.no_grad():
            s = [
                float(
                    model(
                        input_ids=torch.tensor([render(tok, prompt + [{"role": "assistant", "content": x}]).input_ids])
                    ).logits[0, 0]
                )
                for x in (r["chosen"], r["rejected"])
            ]
        wins += s[0] > s[1]
    assert got["n"] == 3 and got["accuracy"] == pytest.approx(wins / 3)
    proc = run_cli("eval", str(rm_dir), "--out", str(tmp_path / "ev"), f"eval.tasks=[mc_jsonl={EXAM}]")
    assert proc.returncode == 1 and "reward model" in proc.stderr
    proc = run_cli("eval", str(tiny_model), "--out", str(tmp_path / "ev2"), f"eval.preference=[{pairs}]")
    assert proc.returncode == 1 and "needs a reward model" in proc.stderr
