"""Benchmark questions as text, for `camelid clean`'s decontamination (camelid.data cannot import camelid.eval).

    benchmark_items(["mmlu", "mc_jsonl=exam.jsonl"])   # {"mmlu/astronomy/0": "What is ...\\nA. ...\\nAnswer: B", ...}

Each item is the question as the model sees it, without the task's description (the same "The following are
multiple choice questions ..." line starts every MMLU context and would match everywhere), followed by its gold
answer; specs are eval.tasks' (NAME, NAME=PATH, NAME:LABEL=PATH). The eval split is used, as `camelid eval` scores
it. Ids start with the name `camelid eval` reports the task under, so two exams' questions never share an id.
"""

from __future__ import annotations

from camelid.eval.tasks import description, load_task, task_specs


def benchmark_items(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in task_specs(specs):
        items, _ = load_task(spec.task, spec.path)
        for item in items:
            context = item.contexts[item.gold]
            desc = description(item.task, item.subject)
            if desc and context.startswith(desc):
                context = context[len(desc) :]
            out[spec.name + item.id[len(item.task) :]] = context + item.continuations[item.gold]  # "<task>/..." ids
    return out
