"""`camelid quickstart`: real LoRA fine-tuning of a real small model, offline, on CPU, in minutes.

SmolLM2-135M-Instruct (from the offline catalog) learns from LLaMA-Factory's real bilingual demo
instructions (alpaca zh + en). It prints the model's answers to held-out prompts before and after,
and the eval loss before and after. Everything lands in runs/quickstart (camelid/configs/quickstart.yaml
holds the recipe; any key can be overridden: `camelid quickstart train.max_steps=20`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from camelid.config import SHIPPED_CONFIGS, load_config
from camelid.data.formats import load_source
from camelid.engine import Engine, SamplingParams
from camelid.serve.chat import answers
from camelid.train import sft
from camelid.utils import CamelidError

RECIPE = SHIPPED_CONFIGS / "quickstart.yaml"


def _held_out(n_each: int = 2) -> list[str]:
    """Prompts from the end of each demo file; the recipe trains on the first records only."""
    prompts = []
    for name in ("alpaca_zh_demo", "alpaca_en_demo"):
        records, _ = load_source(name, "messages")
        short = [r for r in records[-100:] if len(r["messages"][-2]["content"]) < 120]
        prompts += [r["messages"][-2]["content"] for r in short[:n_each]]
    return prompts


def _answers(model_path: str, prompts: list[str]) -> list[str]:
    # Greedy, with the same mild repetition penalty `camelid chat` uses: small models loop without it.
    params = SamplingParams(max_tokens=80, temperature=0, repetition_penalty=1.1)
    return answers(Engine.load(model_path), [[{"role": "user", "content": p}] for p in prompts], params)


def main(overrides: list[str] | None = None) -> dict:
    cfg = load_config(RECIPE, overrides or [])
    if not 0 < cfg.data.max_samples <= 900:
        raise CamelidError("quickstart asks held-out prompts from the last 100 records: keep data.max_samples <= 900")
    started = time.time()
    prompts = _held_out()
    print(f"\n== before fine-tuning ({cfg.model.name}) ==")
    before = _answers(cfg.model.name, prompts)
    metrics = sft.main(cfg)
    final = Path(cfg.train.output_dir) / "final"
    after = _answers(str(final), prompts)
    lines = [json.loads(x) for x in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [x["eval_loss"] for x in lines if "eval_loss" in x]
    print("\n== answers to held-out prompts: before → after ==")
    for p, b, a in zip(prompts, before, after):
        print(f"\nQ: {p}\n  before: {b[:300]}\n  after:  {a[:300]}")
    print(
        f"\neval loss {evals[0]:.4f} → {evals[-1]:.4f} (perplexity {2.718281828 ** evals[0]:.1f} → {2.718281828 ** evals[-1]:.1f})"
    )
    print(f"done in {time.time() - started:.0f} s; adapter + tokenizer in {final}")
    out = cfg.train.output_dir
    print(
        f"next: camelid chat {out}  |  camelid serve {out} (then http://127.0.0.1:8000/ui/)  |  "
        f"camelid export {out} runs/quickstart-merged"
    )
    return metrics | {"eval_before": evals[0], "eval_after": evals[-1]}
