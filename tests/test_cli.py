"""The command line: verbs over main(cfg), clear errors without tracebacks, the chat REPL."""

import io
import json
import subprocess
import sys

from camelid.cli import main
from camelid.config import load_config
from camelid.serve import chat


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "camelid", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_data_verb_shows_the_mask(tiny_model, chat_file, capsys):
    main(["data", f"model.name={tiny_model}", f"data.train={chat_file}"])
    out = capsys.readouterr().out
    assert "32 chats" in out and "[[Paris.<|im_end|>]]" in out


def test_data_verb_counts_the_turns_dropped_from_cut_chats(tiny_model, capsys):
    cut = __import__("pathlib").Path(__file__).parent / "fixtures" / "sharegpt_cut.jsonl"
    main(["data", f"model.name={tiny_model}", f"data.train={cut}"])
    assert "dropped from cut chats: {'leading assistant turns':" in capsys.readouterr().out


def test_duplicate_eval_names_are_refused_before_training(tmp_path):
    proc = run_cli(
        "sft",
        "model.name=does-not-matter",
        "data.train=x.jsonl",
        f"train.output_dir={tmp_path}/run",
        "eval.tasks=[mc_jsonl=a/exam.jsonl,mc_jsonl=b/exam.jsonl]",
    )
    assert proc.returncode == 1 and "would both be reported as 'mc_jsonl_exam'" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_bad_record_is_reported_with_file_line_and_field(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad.write_text(good + "\n" + json.dumps({"instruction": "hi", "output": ["not", "a", "string"]}) + "\n")
    proc = run_cli("sft", f"model.name={tiny_model}", f"data.train={bad}", f"train.output_dir={tmp_path}/run")
    assert proc.returncode == 1
    assert "bad.jsonl:2" in proc.stderr and "output" in proc.stderr and "Traceback" not in proc.stderr


def test_config_error_before_weights_load(tmp_path):
    proc = run_cli("sft", "model.name=does-not-matter", "data.train=x.jsonl", "train.lerning_rate=1")
    assert proc.returncode == 1 and "did you mean" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_verb():
    proc = run_cli("fly")
    assert proc.returncode == 2 and "unknown verb 'fly'" in proc.stdout


def test_chat_repl_streams_keeps_history_and_resets(tiny_model, monkeypatch):
    seen = []
    real = chat.prompt_ids

    def spy(tok, messages):
        seen.append([m["content"] for m in messages])
        return real(tok, messages)

    monkeypatch.setattr(chat, "prompt_ids", spy)
    cfg = load_config(None, ["chat.max_new_tokens=5", "chat.temperature=0"])
    out = io.StringIO()
    chat.main(cfg, str(tiny_model), stdin=io.StringIO("hello\nagain\n/reset\nfresh\n/exit\n"), stdout=out)
    assert seen[0] == ["hello"]
    assert seen[1][0] == "hello" and seen[1][-1] == "again" and len(seen[1]) == 3  # user, assistant, user
    assert seen[2] == ["fresh"]
    assert out.getvalue().count("bot> ") == 3 and "(history cleared)" in out.getvalue()


def test_chat_repl_outgrows_the_context_by_dropping_old_exchanges(tiny_model, monkeypatch):
    sent = []
    real = chat.prompt_ids

    def spy(tok, messages):
        ids = real(tok, messages)
        sent.append((messages, len(ids)))
        return ids

    monkeypatch.setattr(chat, "prompt_ids", spy)
    cfg = load_config(None, ["chat.max_new_tokens=8", "chat.temperature=0", "chat.system=Be brief."])
    lines = [f"Question {i}: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 6) for i in range(14)]
    out = io.StringIO()
    chat.main(cfg, str(tiny_model), stdin=io.StringIO("\n".join(lines) + "\n/exit\n"), stdout=out)
    assert out.getvalue().count("bot> ") == 14 and "not sent" not in out.getvalue()
    last = {m[-1]["content"]: (m, n) for m, n in sent}  # per turn, the last render: the prompt that was sent
    assert max(last[x][1] for x in lines) <= 512 - 8  # the tiny model's context, less the answer's room
    last = {x: last[x][0] for x in lines}
    firsts = [last[x][1]["content"] for x in lines]
    assert all(last[x][0]["content"] == "Be brief." for x in lines)  # the system prompt always stays
    assert firsts[0] == lines[0] and firsts[-1] != lines[0]  # old exchanges were dropped...
    assert len(set(firsts)) < len(lines) - 2  # ...in jumps, so consecutive turns share their start (cached KV)


def test_export_verb(tiny_model, chat_file, tmp_path):
    proc = run_cli(
        "sft",
        f"model.name={tiny_model}",
        f"data.train={chat_file}",
        f"train.output_dir={tmp_path}/run",
        "train.max_steps=2",
        "train.tensorboard=false",
        "data.max_length=64",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("vllm", f"{tmp_path}/run")  # the real run folder: adapter, tokenizer, template
    assert proc.returncode == 0 and "--enable-lora" in proc.stdout and "chat_template.jinja" in proc.stdout
    proc = run_cli("export", f"{tmp_path}/run", f"{tmp_path}/merged")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert f"vllm serve {tmp_path}/merged" in proc.stdout and (tmp_path / "merged" / "chat_template.jinja").exists()
    proc = run_cli("export", f"{tmp_path}/merged", f"{tmp_path}/again")
    assert proc.returncode == 1 and "no adapter" in proc.stderr
