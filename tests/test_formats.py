"""Converters, readers and LLaMA-Factory folders: exact canonical outputs and exact error locations."""

import json
from collections import Counter
from pathlib import Path

import pytest

from camelid.data import formats as F
from camelid.data.formats import DataError
from camelid.utils import CamelidError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def sys_(c):
    return {"role": "system", "content": c}


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


# ------------------------------------------------------------------------------- converters


def test_alpaca_with_history_and_system():
    rec = {
        "instruction": "Summarize",
        "input": "Llamas live in the Andes.",
        "output": "Andean llamas.",
        "system": "Be brief.",
        "history": [["hi", "hello"], ["你好", "你好！"]],
    }
    assert F.detect_format(rec) == "alpaca"
    assert F.to_messages(rec) == {
        "messages": [
            sys_("Be brief."),
            user("hi"),
            bot("hello"),
            user("你好"),
            bot("你好！"),
            user("Summarize\n\nLlamas live in the Andes."),
            bot("Andean llamas."),
        ]
    }


def test_alpaca_empty_input_and_no_system():
    assert F.to_messages({"instruction": "Say hi", "input": "", "output": "hi"}) == {
        "messages": [user("Say hi"), bot("hi")]
    }


def test_sharegpt_with_top_level_system():
    rec = {
        "system": "S",
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
            {"from": "user", "value": "c"},
            {"from": "assistant", "value": "d"},
        ],
    }
    assert F.detect_format(rec) == "sharegpt"
    assert F.to_messages(rec) == {"messages": [sys_("S"), user("a"), bot("b"), user("c"), bot("d")]}


def test_sharegpt_system_turn_wins_over_column():
    rec = {
        "system": "column",
        "conversations": [
            {"from": "system", "value": "turn"},
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
        ],
    }
    assert F.to_messages(rec)["messages"][0] == sys_("turn")


def test_openai_messages():
    rec = {"messages": [sys_("S"), user("q"), bot("a")]}
    assert F.detect_format(rec) == "openai"
    assert F.to_messages(rec) == {"messages": [sys_("S"), user("q"), bot("a")]}


def test_lf_dpo_sharegpt_pair():
    # The shape of LLaMA-Factory's dpo_en_demo.json.
    rec = {
        "conversations": [{"from": "human", "value": "Write a haiku."}],
        "chosen": {"from": "gpt", "value": "Old pond, a frog jumps."},
        "rejected": {"from": "gpt", "value": "No."},
    }
    assert F.detect_format(rec) == "preference"
    assert F.to_preference(rec) == {
        "prompt": [user("Write a haiku.")],
        "chosen": "Old pond, a frog jumps.",
        "rejected": "No.",
    }
    assert F.to_prompt(rec) == {"prompt": [user("Write a haiku.")]}


def test_alpaca_and_openai_style_preference():
    rec = {"instruction": "Pick", "input": "a or b", "chosen": "a", "rejected": "b", "system": "S"}
    assert F.to_preference(rec) == {"prompt": [sys_("S"), user("Pick\n\na or b")], "chosen": "a", "rejected": "b"}
    rec = {"prompt": "q", "chosen": {"role": "assistant", "content": "good"}, "rejected": [bot("bad")]}
    assert F.to_preference(rec) == {"prompt": [user("q")], "chosen": "good", "rejected": "bad"}
    rec = {"prompt": [user("q1"), bot("a1"), user("q2")], "chosen": "x", "rejected": "y"}
    assert F.to_preference(rec)["prompt"] == [user("q1"), bot("a1"), user("q2")]


def test_prompt_and_text():
    assert F.detect_format({"prompt": "hi"}) == "prompt"
    assert F.to_prompt({"prompt": "hi"}) == {"prompt": [user("hi")]}
    # A reference answer is dropped from a PPO prompt.
    assert F.to_prompt({"instruction": "i", "output": "o"}) == {"prompt": [user("i")]}
    assert F.to_prompt({"messages": [user("q"), bot("a")]}) == {"prompt": [user("q")]}
    assert F.detect_format({"text": "doc"}) == "text"
    assert F.to_text({"text": "doc"}) == {"text": "doc"}
    # Chat records become their contents joined by newlines, without the system prompt.
    assert F.to_text({"instruction": "i", "input": "x", "output": "o", "system": "S"}) == {"text": "i\n\nx\no"}
    assert F.to_text({"messages": [sys_("S"), user("q"), bot("a")]}) == {"text": "q\na"}
    assert F.KINDS["messages"] is F.to_messages and set(F.KINDS) == {"text", "messages", "preference", "prompt"}


@pytest.mark.parametrize(
    "rec, field, reason",
    [
        ({"instruction": "i", "output": ["o"]}, "output", "expected a string, got list"),
        ({"instruction": "i"}, "output", "missing"),
        ({"instruction": "i", "output": " "}, "output", "empty assistant answer"),
        ({"messages": [user("q"), user("q2"), bot("a")]}, "messages[1]", "expected an assistant turn"),
        (
            {"messages": [user("q"), bot("a"), sys_("late"), user("q")]},
            "messages[2]",
            "system message is allowed only first",
        ),
        ({"messages": [user("q")]}, "messages[0]", "must end with an assistant answer"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content", "got list"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]},
            "conversations[1].from",
            "tool turns ('function_call') are unsupported",
        ),
        ({"conversations": [{"from": "robot", "value": "q"}]}, "conversations[0].from", "unknown role 'robot'"),
        ({"instruction": "i", "output": "o", "history": "x"}, "history", "expected a list"),
        (
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                "tools": '[{"name": "f"}]',
            },
            "tools",
            "tool definitions are unsupported",
        ),
    ],
)
def test_bad_records(rec, field, reason):
    with pytest.raises(DataError) as e:
        F.to_messages(rec, path="x.jsonl", line=7)
    assert e.value.field == field and reason in e.value.reason, str(e.value)
    assert str(e.value).startswith(f"x.jsonl:7: field '{field}': ")


def test_bad_preference_and_unknown_format():
    with pytest.raises(DataError, match="identical to chosen"):
        F.to_preference({"prompt": "q", "chosen": "a", "rejected": "a"})
    with pytest.raises(DataError, match="not an SFT example"):
        F.to_messages({"prompt": "q", "chosen": "a", "rejected": "b"})
    with pytest.raises(DataError, match=r"unknown record format, keys \['foo'\]"):
        F.detect_format({"foo": 1})
    with pytest.raises(CamelidError, match="unknown data format 'yaml'"):
        F.to_text({"text": "t"}, "yaml")


def test_data_error_str_and_attributes():
    e = DataError("data/x.jsonl", 17, "output", "expected a string, got list")
    assert str(e) == "data/x.jsonl:17: field 'output': expected a string, got list"
    assert (e.path, e.line, e.field, e.reason) == ("data/x.jsonl", 17, "output", "expected a string, got list")
    import pickle

    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# ----------------------------------------------------------------------------------- readers


def test_jsonl_bad_line_and_bad_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": ["d"]}\n{oops\n')
    with pytest.raises(DataError) as e:
        F.load_source(str(p), "messages")
    assert e.value.line == 3 and e.value.field == "output"
    assert str(e.value) == f"{p}:3: field 'output': expected a string, got list"
    with pytest.raises(DataError) as e:
        list(F.read_records(p))
    assert e.value.line == 4 and "bad.jsonl:4: bad JSON" in str(e.value)
    records, stats = F.load_source(str(p), "messages", on_error="skip")
    assert records == [{"messages": [user("a"), bot("b")]}]
    assert (stats["read"], stats["kept"], stats["skipped"]) == (3, 1, 2)
    assert stats["reasons"]["field 'output': expected a string, got list"] == 1
    assert sum(stats["reasons"].values()) == 2
    assert stats["files"][0]["path"] == str(p.resolve()) and len(stats["files"][0]["sha256"]) == 64


def test_json_array_line_numbers(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n  {"text": "one"},\n  {\n    "text": "two"\n  },\n\n  {"text": 3}\n]\n')
    assert [line for line, _ in F.read_records(p)] == [2, 3, 7]
    with pytest.raises(DataError, match=r"a\.json:7: field 'text': expected a string, got int"):
        F.load_source(str(p), "text")
    p.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="top-level JSON array.*JSON Lines"):
        list(F.read_records(p))
    p.write_text('[{"text": "a"},\n {"text": "b" "c"}]')
    with pytest.raises(DataError, match=r"a\.json:2: bad JSON"):
        list(F.read_records(p))


def test_csv_lines_and_parquet(tmp_path):
    records = list(F.read_records(EXAMPLES / "alpaca.csv"))
    # The first row has a quoted two-line cell, so the next row starts on line 4.
    assert [line for line, _ in records] == [2, 4, 5, 6]
    assert F.to_messages(records[2][1]) == {"messages": [user("What is 12 times 12?"), bot("144")]}
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b"], "input": [None, "x"], "output": ["1", "2"]}), p)
    got, stats = F.load_source(str(p), "messages")
    assert got == [{"messages": [user("a"), bot("1")]}, {"messages": [user("b\n\nx"), bot("2")]}]
    assert [line for line, _ in F.read_records(p)] == [1, 2]


def test_txt_and_unknown_extension(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("first doc\n\nsecond doc\n")
    assert list(F.read_records(p)) == [(1, {"text": "first doc"}), (3, {"text": "second doc"})]
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'; supported: \.jsonl \.json"):
        list(F.read_records(tmp_path / "x.xml"))


def test_examples_load():
    recs, stats = F.load_source(str(EXAMPLES / "chat_zh_en.jsonl"), "messages")
    assert stats["kept"] == 10 and all(r["messages"][-1]["role"] == "assistant" for r in recs)
    recs, _ = F.load_source(str(EXAMPLES / "sharegpt.json"), "messages")
    assert recs[0]["messages"][0] == sys_("You are a concise assistant.") and len(recs) == 3
    recs, stats = F.load_source(str(EXAMPLES / "chat_zh_en.jsonl"), "text", max_samples=4)
    assert len(recs) == 4 and stats["read"] == 4


# ------------------------------------------------------------------------ LLaMA-Factory folders


def read_lf_entry(folder, name: str):
    """(path, line, standard alpaca/sharegpt record) for each record of a dataset_info.json entry, and its format:
    the mapping's output before any converter sees it."""
    files, mapper, fmt = F._lf_plan(folder, name)
    return [(p, line, mapper(rec, p, line)) for p in files for line, rec in F.read_records(p)], fmt


def test_lf_folder_column_and_tag_mapping():
    folder = EXAMPLES / "lf_folder"
    rows, fmt = read_lf_entry(folder, "shop_faq")
    assert fmt == "alpaca" and [line for _, line, _ in rows] == [1, 2, 3]
    assert F.to_messages(rows[1][2], fmt) == {
        "messages": [
            sys_("You answer questions for a bike shop."),
            user("Are you open on Sunday?"),
            bot("Yes, from 10:00 to 16:00."),
            user("How long does a repair take?\n\nIt's a flat tyre."),
            bot("A flat is usually fixed the same day, often within an hour."),
        ]
    }
    recs, stats = F.load_source(f"{folder}@support_chats", "messages")
    assert stats["files"][0]["path"].endswith("support_chats.json")
    assert recs == [
        {
            "messages": [
                sys_("You are a friendly bike shop agent."),
                user("My brakes squeak."),
                bot("Squeaking usually comes from dirty or glazed pads. Cleaning the rims or discs often helps."),
                user("And if it doesn't?"),
                bot("Then the pads may need replacing; bring the bike in and we'll check."),
            ]
        },
        {
            "messages": [
                sys_("你是自行车店的客服，回答要简短。"),
                user("轮胎气压应该打多少？"),
                bot("看轮胎侧面标注的范围，公路车一般在 80 到 110 psi 之间。"),
            ]
        },
    ]


def test_lf_folder_errors(tmp_path):
    folder = EXAMPLES / "lf_folder"
    with pytest.raises(CamelidError, match="did you mean shop_faq"):
        F.load_source(f"{folder}@shop_fac", "messages")
    with pytest.raises(CamelidError, match="needs a download.*hf_hub_url=someone/some_dataset.*local file"):
        F.load_source(f"{folder}@remote_only", "messages")
    with pytest.raises(CamelidError, match="name an entry"):
        F.load_source(str(folder), "messages")


def test_lf_ranking_kto_and_pretraining(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"msgs": [{"r": "u", "c": "q"}], "good": {"r": "a", "c": "yes"}, "bad": {"r": "a", "c": "no"}})
        + "\n"
    )
    (tmp_path / "kto.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": true}\n'
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}], "label": false}\n'
    )
    (tmp_path / "docs.jsonl").write_text('{"body": "doc one"}\n{"body": "doc two"}\n')
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "pairs": {
                    "file_name": "pairs.jsonl",
                    "formatting": "sharegpt",
                    "ranking": True,
                    "columns": {"messages": "msgs", "chosen": "good", "rejected": "bad"},
                    "tags": {"role_tag": "r", "content_tag": "c", "user_tag": "u", "assistant_tag": "a"},
                },
                "kto": {
                    "file_name": "kto.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"},
                    "tags": tags,
                },
                "docs": {"file_name": "docs.jsonl", "columns": {"prompt": "body"}},
            }
        )
    )
    recs, _ = F.load_source(f"{tmp_path}@pairs", "preference")
    assert recs == [{"prompt": [user("q")], "chosen": "yes", "rejected": "no"}]
    recs, stats = F.load_source(f"{tmp_path}@kto", "messages", on_error="skip")
    assert recs == [{"messages": [user("q"), bot("a")]}] and stats["skipped"] == 1
    recs, _ = F.load_source(f"{tmp_path}@docs", "text")
    assert recs == [{"text": "doc one"}, {"text": "doc two"}]


def test_load_source_bad_specs(tmp_path):
    with pytest.raises(CamelidError, match="not a catalog dataset.*alpaca_zh_demo.*did you mean alpaca_zh_demo"):
        F.load_source("alpaca_zh_dmo", "messages")
    with pytest.raises(CamelidError, match="does not exist"):
        F.load_source(str(tmp_path / "nope.jsonl"), "messages")
    with pytest.raises(CamelidError, match="unknown data kind 'sft'"):
        F.load_source(str(EXAMPLES / "alpaca.csv"), "sft")


# ------------------------------------------------------------------- chats cut from longer ones

CUT = Path(__file__).resolve().parent / "fixtures" / "sharegpt_cut.jsonl"


def test_cut_chats_lose_their_opening_assistant_and_closing_user_turns():
    recs, stats = F.load_source(str(CUT), "messages")  # on_error=fail: none of these is an error
    assert recs == [
        {
            "messages": [
                user("And at sunset?"),
                bot("Light crosses more air at sunset, so the blue scatters away and red remains."),
            ]
        },
        {"messages": [user("Translate 'good morning' into Chinese."), bot("早上好。")]},
        {"messages": [sys_("You are a patient tutor."), user("What is step three?"), bot("Divide both sides by 3.")]},
        {"messages": [user("Name a prime number."), bot("7")]},
    ]
    assert stats["trimmed"] == {"leading_assistant_turns": 2, "trailing_user_turns": 2}
    assert (stats["kept"], stats["skipped"]) == (4, 0)
    # The same shapes in OpenAI messages.
    notes = Counter()
    assert F.to_messages({"messages": [sys_("S"), bot("cut"), user("q"), bot("a"), user("cut")]}, notes=notes) == {
        "messages": [sys_("S"), user("q"), bot("a")]
    }
    assert notes == {"leading_assistant_turns": 1, "trailing_user_turns": 1}
    # Prompts (PPO, preference pairs) lose an opening assistant turn too; they end with their user turn.
    assert F.to_prompt({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "q"}]}) == {
        "prompt": [user("q")]
    }
    assert F.to_preference({"messages": [bot("x"), user("q")], "chosen": "a", "rejected": "b"})["prompt"] == [user("q")]


@pytest.mark.parametrize(
    "turns, field, reason",
    [
        ([bot("a"), bot("b"), user("q"), bot("c")], "messages[1]", "expected a user turn, got assistant"),
        ([user("q"), bot("a"), user("q2"), user("q3")], "messages[3]", "expected an assistant turn, got user"),
        ([bot("cut")], None, "no user turn"),
        ([sys_("S"), bot("cut")], None, "no user turn"),
        ([bot("cut"), user("q")], "messages[1]", "must end with an assistant answer"),
        ([user("q"), {"role": "robot", "content": "x"}], "messages[1].role", "unknown role 'robot'"),
    ],
)
def test_broken_chats_still_fail(turns, field, reason):
    with pytest.raises(DataError) as e:
        F.to_messages({"messages": turns})
    assert e.value.field == field and reason in e.value.reason, str(e.value)


def test_trimmed_turns_are_counted_in_what_a_run_saves():
    from conftest import build_tokenizer

    from camelid.config import load_config
    from camelid.data.loader import prepare_sft

    cfg = load_config(None, [f"data.train=[{CUT}]", "data.eval_split=0"])
    prepared = prepare_sft(build_tokenizer("chatml"), cfg.data, 0)
    # A run's data.json holds these source stats as they are (train/run.py: record_data).
    assert prepared.sources[0]["trimmed"] == {"leading_assistant_turns": 2, "trailing_user_turns": 2}
    assert len(prepared.train) == 1 and sum(len(row) for row in prepared.train) == 4  # packed into one row


def test_reasoning_stays_with_its_assistant_turn():
    rec = {"messages": [user("q"), {"role": "assistant", "content": "a", "reasoning_content": "think"}]}
    assert F.to_messages(rec)["messages"][1] == {"role": "assistant", "content": "a", "reasoning_content": "think"}
    with pytest.raises(DataError, match=r"field 'messages\[0\]\.reasoning_content': only assistant"):
        F.to_messages({"messages": [{"role": "user", "content": "q", "reasoning_content": "x"}, bot("a")]})
    with pytest.raises(DataError, match="expected a string, got int"):
        F.to_messages({"messages": [user("q"), {"role": "assistant", "content": "a", "reasoning_content": 1}]})
