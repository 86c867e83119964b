"""Benchmark questions as text, for `camelid clean`'s decontamination (camelid.data cannot import camelid.eval).

    benchmark_items(["mmlu", "mc_jsonl=exam.jsonl"])   # {"mmlu/astronomy/0": "What is ...\\nA. ...\\nAnswer: B", ...}

Each item is the question as the model sees it, without the task's description (the same "The following are
multiple choice questions ..." line starts every MMLU context and would match everywhere), followed by its gold
answer; specs are eval.tasks' (NAME or NAME=PATH). The eval split is used, as `camelid eval` scores it.
"""

from __future__ import annotations

from camelid.eval.tasks import description, load_task


def benchmark_items(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    # NAME=PATH parsed as eval.run.task_specs does; not imported from there, which would load torch for nothing
    for name, path in (s.split("=", 1) if "=" in s else (s, None) for s in specs):
        items, _ = load_task(name, path)
        for item in items:
            context = item.contexts[item.gold]
            desc = description(item.task, item.subject)
            if desc and context.startswith(desc):
                context = context[len(desc):]
            out[item.id] = context + item.continuations[item.gold]
    return out
