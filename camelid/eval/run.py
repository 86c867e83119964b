"""`camelid eval`: benchmarks, perplexity and sample answers for a model, a run, or a run's base model.

    camelid eval runs/sft eval.tasks=[mmlu,arc_easy=data/ARC-V1-Feb2018/ARC-Easy] eval.limit=500
    camelid eval runs/sft --before eval.tasks=[mmlu]         # the run's base model, for the before/after report
    camelid eval smollm2-135m-instruct eval.tasks=[mc_jsonl=exam.jsonl] eval.k_shot=5 --out evals/base
    camelid eval my-reward-model eval.preference=[dpo_en_demo]        # a reward model: pairwise accuracy

A run writes RUN/eval/<label>.json (label "after" for the run, "before" for its base), anything else
OUT/eval/<label>.json; per-item predictions go next to it as <label>.<task>.jsonl. `camelid report RUN` draws them.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import yaml

from camelid.config import Config, EvalConfig
from camelid.eval.mc import ItemScore, score_items
from camelid.data.formats import load_source
from camelid.eval.ppl import perplexity, reward_accuracy
from camelid.eval.tasks import TASKS, load_task, with_fewshot
from camelid.utils import CamelidError, log, write_json


def task_specs(specs: list[str]) -> list[tuple[str, str | None]]:
    """"mmlu" → (mmlu, None): the catalog copy or the default location; "mmlu=DIR" → a local copy."""
    return [(s.split("=", 1)[0], s.split("=", 1)[1]) if "=" in s else (s, None) for s in specs]


def summarize(scores: list[ItemScore], k_shot: int) -> dict:
    def metrics(rows: list[ItemScore]) -> dict:
        n = len(rows)
        return {"acc": sum(r.pred() == r.gold for r in rows) / n,
                "acc_norm_char": sum(r.pred("char") == r.gold for r in rows) / n,
                "acc_norm_token": sum(r.pred("token") == r.gold for r in rows) / n, "n": n}

    out = {**metrics(scores), "k_shot": k_shot}
    subjects = sorted({s.subject for s in scores if s.subject})
    if subjects:
        out["subjects"] = {sub: metrics([s for s in scores if s.subject == sub]) for sub in subjects}
        out["acc_macro"] = sum(v["acc"] for v in out["subjects"].values()) / len(subjects)
    return out


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise CamelidError(f"eval.samples: {p} does not exist")
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
    from camelid.serve.engine import Engine
    from camelid.serve.sampling import SamplingParams

    ids = [prompt_ids(tok, [{"role": "user", "content": p}]) for p in prompts]
    room = sum(len(x) + max_new_tokens + 16 for x in ids)  # the cache this batch needs, not the 2 GiB default
    engine = Engine(model, tok, EngineConfig(kv_cache_tokens=room, max_model_len=max(map(len, ids)) + max_new_tokens))
    outs = engine.generate(ids, SamplingParams(max_tokens=max_new_tokens, temperature=0, repetition_penalty=1.1))
    return [{"prompt": p, "output": o.text.strip()} for p, o in zip(prompts, outs)]


def evaluate(model, tok, cfg: EvalConfig, label: str, model_name: str, out_dir: Path | None = None) -> dict:
    result = {"label": label, "model": model_name,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tasks": {}, "perplexity": {}, "samples": [], "reward": {}}
    for spec in cfg.preference:
        pairs, _ = load_source(spec, "preference", "fail", cfg.limit or None)
        result["reward"][spec] = reward_accuracy(model, tok, pairs)
    for name, path in task_specs(cfg.tasks):
        items, pool = load_task(name, path, limit=cfg.limit)
        if cfg.k_shot:
            # first_n where lm-eval uses it (MMLU, C-Eval, CMMLU), else a seeded draw per item
            sampler = TASKS[items[0].task]["fewshot_sampler"] if items else "random"
            items = [with_fewshot(it, pool, cfg.k_shot, cfg.seed, sampler=sampler) for it in items]
        scores = score_items(model, tok, items, cfg.batch_tokens, desc=f"{label}: {name}")
        result["tasks"][name] = summarize(scores, cfg.k_shot)
        if out_dir is not None:
            with open(out_dir / f"{label}.{name}.jsonl", "w", encoding="utf-8") as f:
                for s in scores:
                    f.write(json.dumps({"id": s.id, "gold": s.gold, "pred": s.pred(), "pred_norm_char": s.pred("char"),
                                        "loglik": s.loglik}) + "\n")
    for f in cfg.perplexity:
        result["perplexity"][Path(f).name] = perplexity(model, tok, f, cfg.ppl_window, cfg.ppl_stride)
    if cfg.samples:
        result["samples"] = samples(model, tok, read_prompts(cfg.samples), cfg.max_new_tokens)
    return result


def table(result: dict) -> str:
    lines = [f"{result['label']} ({result['model']})"]
    for name, t in result["tasks"].items():
        macro = f"  macro {t['acc_macro']:.4f}" if "acc_macro" in t else ""
        lines.append(f"  {name:16} acc {t['acc']:.4f}  acc_norm(char) {t['acc_norm_char']:.4f}  "
                     f"acc_norm(token) {t['acc_norm_token']:.4f}  n={t['n']} k={t['k_shot']}{macro}")
    for name, p in result["perplexity"].items():
        lines.append(f"  {name:16} perplexity {p['ppl']:.3f} over {p['tokens']} tokens")
    for name, r in result.get("reward", {}).items():
        lines.append(f"  {name:16} reward accuracy {r['accuracy']:.4f}  mean margin {r['mean_margin']:.4f}  n={r['n']}")
    if result["samples"]:
        lines.append(f"  {len(result['samples'])} sample answers saved")
    return "\n".join(lines)


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
    folder.mkdir(parents=True, exist_ok=True)
    if is_reward_model(model_path):
        if e.tasks or e.perplexity or e.samples:
            raise CamelidError(f"{model_path} is a reward model (sequence classification): it takes only eval.preference")
        model, tok = load_reward_model(model_path, cfg.model.dtype, cfg.model.trust_remote_code)
    elif e.preference:
        raise CamelidError(f"eval.preference needs a reward model (a ...ForSequenceClassification folder); {model_path} "
                           "is a language model")
    else:
        model, tok = load_for_inference(model_path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    log.info(f"evaluating {model_path} as '{label}'")
    result = evaluate(model, tok, e, label, str(model_path), folder)
    dest = folder / f"{label}.json"
    if dest.is_file():  # add to what an earlier call measured (other tasks, files) instead of erasing it
        earlier = json.loads(dest.read_text(encoding="utf-8"))
        for key in ("tasks", "perplexity", "reward"):
            result[key] = {**earlier.get(key, {}), **result[key]}
        result["samples"] = result["samples"] or earlier.get("samples", [])
    write_json(dest, result)
    print(table(result))
    print(f"written to {dest}")
    return dest
