"""`camelid eval`: benchmarks, perplexity and sample answers for a model, a run, or a run's base model.

    camelid eval runs/sft eval.tasks=[mmlu,arc_easy=data/ARC-V1-Feb2018/ARC-Easy] eval.limit=500
    camelid eval runs/sft --before eval.tasks=[mmlu]         # the run's base model, for the before/after report
    camelid eval smollm2-135m-instruct eval.tasks=[mc_jsonl=exam.jsonl] eval.k_shot=5 --out evals/base
    camelid eval my-reward-model eval.preference=[dpo_en_demo]        # a reward model: pairwise accuracy

A run writes RUN/eval/<label>.json (label "after" for the run, "before" for its base), anything else
OUT/eval/<label>.json; per-item predictions go next to it as <label>.<name>.jsonl. `camelid report RUN` draws them.
Results are named as `tasks.task_specs` says (mc_jsonl=law.jsonl → mc_jsonl_law; NAME:LABEL=PATH → LABEL), and a
later call adds to the file: it replaces only what it measures again, and refuses to put another file's scores
under a name the file already holds.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import yaml

from camelid.config import Config, EvalConfig
from camelid.data.formats import load_source
from camelid.eval.items import MCItem
from camelid.eval.mc import ItemScore, score_items
from camelid.eval.ppl import perplexity, reward_accuracy
from camelid.eval.tasks import TASKS, TaskSpec, load_task, task_specs, with_fewshot
from camelid.hub import local_file
from camelid.utils import CamelidError, log, write_json

Loaded = list[tuple[TaskSpec, list[MCItem], list[MCItem]]]  # each task with its items and few-shot pool


def summarize(scores: list[ItemScore], k_shot: int) -> dict:
    def metrics(rows: list[ItemScore]) -> dict:
        n = len(rows)
        return {
            "acc": sum(r.pred() == r.gold for r in rows) / n,
            "acc_norm": sum(r.pred("char") == r.gold for r in rows) / n,
            "acc_norm_token": sum(r.pred("token") == r.gold for r in rows) / n,
            "n": n,
        }

    out = {**metrics(scores), "k_shot": k_shot}
    if any(s.rechecked for s in scores):  # eval.bf16_margin: how many near-ties were scored again in float32
        out["rechecked_float32"] = sum(s.rechecked for s in scores)
    subjects = sorted({s.subject for s in scores if s.subject})
    if subjects:
        out["subjects"] = {sub: metrics([s for s in scores if s.subject == sub]) for sub in subjects}
        out["acc_macro"] = sum(v["acc"] for v in out["subjects"].values()) / len(subjects)
    return out


def read_prompts(path: str) -> list[str]:
    p = local_file(path, "eval.samples")
    if not p.is_file():
        raise CamelidError(f"eval.samples: {p} is not a file")
    if p.suffix == ".txt":
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        text = rec.get("prompt") or rec.get("instruction") or rec.get("question")
        if not isinstance(text, str):
            raise CamelidError(f"{p}:{n}: field 'prompt': expected a string (or 'instruction' / 'question')")
        prompts.append(text + ("\n" + rec["input"] if rec.get("input") else ""))
    return prompts


def samples(model, tok, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy answers through the serving engine (batched), with the model's chat template."""
    from camelid.config import EngineConfig
    from camelid.data.templates import prompt_ids
    from camelid.engine import Engine, SamplingParams

    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in prompts]
    room = sum(len(x) + max_new_tokens + 16 for x in ids)  # the cache this batch needs, not the 2 GiB default
    engine = Engine(model, tok, EngineConfig(kv_cache_tokens=room, max_model_len=max(map(len, ids)) + max_new_tokens))
    outs = engine.generate(ids, SamplingParams(max_tokens=max_new_tokens, temperature=0, repetition_penalty=1.1))
    return [{"prompt": p, "output": o.text.strip()} for p, o in zip(prompts, outs)]


def source(spec: TaskSpec) -> str | None:
    """Where a task's files were read from, as results record it: an absolute path, or None for the default."""
    return str(Path(spec.path).expanduser().resolve()) if spec.path else None


def load_tasks(specs: list[TaskSpec], limit: int) -> Loaded:
    return [(spec, *load_task(spec.task, spec.path, limit=limit)) for spec in specs]


def evaluate(
    model, tok, cfg: EvalConfig, label: str, model_name: str, out_dir: Path | None = None, tasks: Loaded | None = None
) -> dict:
    """Everything `cfg` asks for, on one model; `tasks` are cfg.tasks already loaded (else they load here)."""
    result = {
        "label": label,
        "model": model_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tasks": {},
        "perplexity": {},
        "samples": [],
        "reward": {},
    }
    for spec in cfg.preference:
        pairs, _ = load_source(spec, "preference", "fail", cfg.limit or None)
        result["reward"][spec] = reward_accuracy(model, tok, pairs)
    for spec, items, pool in load_tasks(task_specs(cfg.tasks), cfg.limit) if tasks is None else tasks:
        name = spec.name
        if cfg.k_shot:
            # first_n where lm-eval uses it (MMLU, C-Eval, CMMLU), else a seeded draw per item
            sampler = TASKS[items[0].task]["fewshot_sampler"] if items else "random"
            items = [with_fewshot(it, pool, cfg.k_shot, cfg.seed, sampler=sampler) for it in items]
        scores = score_items(model, tok, items, cfg.batch_tokens, desc=f"{label}: {name}", bf16_margin=cfg.bf16_margin)
        result["tasks"][name] = {**summarize(scores, cfg.k_shot), "task": spec.task, "source": source(spec)}
        if out_dir is not None:
            with open(out_dir / f"{label}.{name}.jsonl", "w", encoding="utf-8") as f:
                for s in scores:
                    f.write(
                        json.dumps(
                            {
                                "id": s.id,
                                "gold": s.gold,
                                "pred": s.pred(),
                                "pred_norm": s.pred("char"),
                                "loglik": s.loglik,
                            }
                        )
                        + "\n"
                    )
    for f in cfg.perplexity:
        result["perplexity"][Path(f).name] = perplexity(
            model, tok, local_file(f, "eval.perplexity"), cfg.ppl_window, cfg.ppl_stride, max_chars=cfg.ppl_max_chars
        )
    if cfg.samples:
        result["samples"] = samples(model, tok, read_prompts(cfg.samples), cfg.max_new_tokens)
    return result


def table(result: dict) -> str:
    lines = [f"{result['label']} ({result['model']})"]
    for name, t in result["tasks"].items():
        macro = f"  macro {t['acc_macro']:.4f}" if "acc_macro" in t else ""
        macro += f"  ({t['rechecked_float32']} near-ties rescored in float32)" if "rechecked_float32" in t else ""
        # an entry merged from an older results file has acc_norm_char, not acc_norm
        norm = f"acc_norm {t['acc_norm']:.4f}" if "acc_norm" in t else f"acc_norm_char (old) {t['acc_norm_char']:.4f}"
        lines.append(
            f"  {name:16} acc {t['acc']:.4f}  {norm}  "
            f"acc_norm(token) {t['acc_norm_token']:.4f}  n={t['n']} k={t['k_shot']}{macro}"
        )
    for name, p in result["perplexity"].items():
        per_char = f", {p['bits_per_char']:.4f} bits per character" if "bits_per_char" in p else ""
        lines.append(f"  {name:16} perplexity {p['ppl']:.3f} over {p['tokens']} tokens{per_char}")
    for name, r in result.get("reward", {}).items():
        lines.append(f"  {name:16} reward accuracy {r['accuracy']:.4f}  mean margin {r['mean_margin']:.4f}  n={r['n']}")
    if result["samples"]:
        lines.append(f"  {len(result['samples'])} sample answers saved")
    return "\n".join(lines)


def _check_same_sources(specs: list[TaskSpec], earlier: dict, dest: Path) -> None:
    """A name already in the results file must stand for the same files: scores of exams/b/law.jsonl must not
    replace those of exams/a/law.jsonl because both are mc_jsonl_law. Entries written before results recorded
    their source are not checked."""
    for spec in specs:
        old = earlier.get(spec.name)
        if isinstance(old, dict) and "source" in old and old["source"] != source(spec):
            raise CamelidError(
                f"{dest} already holds '{spec.name}' scored on {old['source'] or 'the default ' + spec.task}; this "
                f"call's '{spec.name}' is {source(spec) or 'the default ' + spec.task}. Give it a name of its own "
                f"({spec.task}:LABEL{'=' + spec.path if spec.path else ''}) or use another --out"
            )


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "final").is_dir()


def main(cfg: Config, target: str, before: bool = False, out: str | None = None) -> Path:
    from camelid.model import is_reward_model, load_for_inference, load_reward_model

    e = cfg.eval
    if not (e.tasks or e.perplexity or e.samples or e.preference):
        raise CamelidError("nothing to evaluate: set eval.tasks, eval.perplexity, eval.samples or eval.preference")
    path = Path(target)
    if is_run(path):
        label = "before" if before else "after"
        model_path = yaml.safe_load((path / "config.yaml").read_text())["model"]["name"] if before else str(path)
        folder = Path(out) if out else path / "eval"
    else:
        if before:
            raise CamelidError(f"--before needs a run folder (with config.yaml and final/); {target} is not one")
        label, model_path = "model", target
        folder = Path(out or f"eval-{path.name or target}") / "eval"
    dest = folder / f"{label}.json"
    earlier = json.loads(dest.read_text(encoding="utf-8")) if dest.is_file() else {}
    specs = task_specs(e.tasks)  # names checked, and the benchmarks read, before a model loads
    _check_same_sources(specs, earlier.get("tasks", {}), dest)
    tasks = load_tasks(specs, e.limit)
    folder.mkdir(parents=True, exist_ok=True)
    if is_reward_model(model_path):
        if e.tasks or e.perplexity or e.samples:
            raise CamelidError(
                f"{model_path} is a reward model (sequence classification): it takes only eval.preference"
            )
        model, tok = load_reward_model(model_path, cfg.model.dtype, cfg.model.trust_remote_code)
    elif e.preference:
        raise CamelidError(
            f"eval.preference needs a reward model (a ...ForSequenceClassification folder); {model_path} "
            "is a language model"
        )
    else:
        model, tok = load_for_inference(
            model_path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
    log.info(f"evaluating {model_path} as '{label}'")
    result = evaluate(model, tok, e, label, str(model_path), folder, tasks)
    if dest.is_file():  # add to what an earlier call measured (other tasks, files) instead of erasing it
        earlier = json.loads(dest.read_text(encoding="utf-8"))  # again: another call may have added to it meanwhile
        for key in ("tasks", "perplexity", "reward"):
            result[key] = {**earlier.get(key, {}), **result[key]}
        result["samples"] = result["samples"] or earlier.get("samples", [])
    write_json(dest, result)
    print(table(result))
    print(f"written to {dest}")
    return dest
