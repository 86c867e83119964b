"""The recipe part of `camelid report`: given a recipe's folder (the one holding lineage.json), the stages as a picture
(what reads what, state, wall time), and the chain's numbers side by side — every eval stage in recipe order, so
the base model's column stands beside the finished model's, with the tokenizer's tokens per character from a
`tok extend` stage. Stages' own training curves come from the usual per-run sections, which this module feeds.

lineage.json is read as plain JSON (not through camelid.recipe, which sits above this layer).
"""

from __future__ import annotations

import json
from pathlib import Path

from camelid.eval.report import _delta_td, _e, _figure, _img, _mpl_text, _num, _table, _td

_STATE_COLORS = {"done": "#dafbe1", "failed": "#ffebe9", "running": "#fff8c5"}


def stage_runs(folder: Path, lineage: dict) -> list[Path]:
    """The training stages, in recipe order, for the per-run sections (curves; eval stages are in the chain table)."""
    out = []
    for name, st in lineage["stages"].items():
        path = folder / name  # the runner puts stage NAME in FOLDER/NAME; lineage's "output" is cwd-relative
        if st.get("verb") in ("pt", "sft", "rm", "dpo", "ppo") and (path / "metrics.jsonl").is_file():
            out.append(path)
    return out


def _results(stage: Path, verb: str | None) -> list[Path]:
    """Where a stage's evaluation is: an eval stage of a model writes STAGE/eval/model.json, of a run folder
    STAGE/after.json; a training stage with eval.after_training writes STAGE/eval/after.json."""
    if verb == "eval":
        return sorted((stage / "eval").glob("*.json")) + [
            p for p in sorted(stage.glob("*.json")) if p.name != "stage.json"
        ]
    return [stage / "eval" / "after.json"] if verb in ("pt", "sft", "rm", "dpo", "ppo") else []


def _minutes(seconds) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _figure_lineage(stages: dict[str, dict], path: Path) -> None:
    """Stages top to bottom as boxes (color = state), an arrow from each stage to every stage that reads it."""
    from matplotlib.patches import FancyBboxPatch

    names = list(stages)
    n = len(names)
    fig = _figure(width=8.0, height=0.62 * n + 0.6)
    ax = fig.add_subplot()
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, n - 0.4)
    ax.axis("off")
    y = {name: n - 1 - i for i, name in enumerate(names)}
    for name, st in stages.items():
        state = st.get("state", "not run")
        ax.add_patch(
            FancyBboxPatch(
                (0.3, y[name] - 0.3),
                6.2,
                0.6,
                boxstyle="round,pad=0.02",
                fc=_STATE_COLORS.get(state, "#f6f8fa"),
                ec="#57606a",
            )
        )
        ax.text(0.5, y[name] + 0.08, _mpl_text(f"{name}  ({st.get('verb', '?')})"), fontsize=10, weight="bold")
        ax.text(0.5, y[name] - 0.2, _mpl_text(f"{state} · {_minutes(st.get('seconds'))}"), fontsize=8, color="#57606a")
    for name, st in stages.items():
        for src in st.get("reads", []):
            if src in y:
                gap = y[src] - y[name]
                ax.annotate(
                    "",
                    xy=(6.5, y[name]),
                    xytext=(6.5, y[src]),
                    arrowprops={
                        "arrowstyle": "->",
                        "color": "#0969da",
                        "connectionstyle": f"arc3,rad={-0.25 - 0.05 * min(gap, 6)}",
                    },
                )
    fig.savefig(path, format="png")


def lineage_section(folder: Path, lineage: dict, out: Path) -> str:
    stages = lineage["stages"]
    _figure_lineage(stages, out / "lineage.png")
    rows = []
    for name, st in stages.items():
        metrics = ", ".join(f"{k}={v}" for k, v in (st.get("metrics") or {}).items())
        rows.append(
            [
                _td(name, "key"),
                _td(st.get("verb", "?")),
                _td(st.get("state", "not run"), {"done": "good", "failed": "bad"}.get(st.get("state"), "")),
                _td(_minutes(st.get("seconds"))),
                _td(", ".join(st.get("reads", [])) or "—"),
                _td(
                    metrics or st.get("error") or (f"exit code {st['exit_code']}" if "exit_code" in st else "—"), "text"
                ),
            ]
        )
    total = sum(st.get("seconds") or 0 for st in stages.values())
    return (
        f"<h2>Recipe {_e(Path(lineage.get('recipe', folder)).name)}</h2>\n"
        f'<p class="meta">{_e(folder)}: {len(stages)} stages, {_minutes(total)} of stage time; '
        f"camelid {_e(lineage.get('camelid', '?'))}</p>\n"
        + _img("lineage.png", "the recipe's stages and what each reads", "arrows: which stage reads which")
        + _table(["stage", "verb", "state", "time", "reads", "headline"], rows, "config")
        + _chain_table(folder, stages)
    )


def _chain_table(folder: Path, stages: dict[str, dict]) -> str:
    """Every eval stage's numbers side by side in recipe order, the first (the base) against the last."""
    evals: dict[str, dict] = {}
    for name, st in stages.items():
        for f in _results(folder / name, st.get("verb")):
            try:
                evals[name] = json.loads(f.read_text(encoding="utf-8"))
                break
            except (OSError, ValueError):
                continue
    tok_rows = []
    for name, st in stages.items():
        rep = folder / name / "tok_report.json"
        if st.get("verb") == "tok extend" and rep.is_file():
            for text, r in json.loads(rep.read_text(encoding="utf-8")).get("tokens_per_char", {}).items():
                before, after = r.get("tokens_per_char_before"), r.get("tokens_per_char_after")
                tok_rows.append(
                    [_td(f"{text} ({name})", "key"), _td(_num(before, ".3f")), _td(_num(after, ".3f"))]
                    + [_delta_td(before, after, ".3f", higher_is_better=False, relative=True)]
                )
    tok_table = (
        "<h3>Tokens per character</h3>\n" + _table(["text", "base tokenizer", "extended", "Δ"], tok_rows)
        if tok_rows
        else ""
    )
    cols = list(evals)
    if not cols:
        return tok_table
    rows: list[list[str]] = []
    metrics: dict[str, tuple[str, str, str, bool | None]] = {}  # label → (section, item, key, higher is better)
    for result in evals.values():
        for task in result.get("tasks") or {}:
            metrics[f"{task} accuracy"] = ("tasks", task, "acc", True)
        for text in result.get("perplexity") or {}:
            metrics[f"{text} bits per character"] = ("perplexity", text, "bits_per_char", False)
            metrics[f"{text} perplexity per token"] = ("perplexity", text, "ppl", None)  # no colour: see the note
    for label, (section, item, key, higher) in metrics.items():
        values = [((evals[c].get(section) or {}).get(item) or {}).get(key) for c in cols]
        values = [v if isinstance(v, int | float) else None for v in values]
        rows.append(
            [_td(label, "key")]
            + [_td(_num(v, ".4f")) for v in values]
            + [
                _delta_td(values[0], values[-1], ".4f", higher_is_better=higher, relative=True)
                if higher is not None
                else _td(_num(values[-1] - values[0], "+.4f") if None not in (values[0], values[-1]) else "—")
            ]
        )
    samples = _chain_samples(evals)
    note = (
        '<p class="meta">Perplexity per token does not compare across tokenizers (a vocabulary extension cuts text '
        "into fewer tokens); bits per character does.</p>"
    )
    return (
        "<h2>The chain: first against last</h2>\n"
        + tok_table
        + "<h3>Evaluations, in recipe order</h3>\n"
        + _table(["measure"] + cols + [f"Δ ({cols[-1]} − {cols[0]})"], rows)
        + note
        + samples
    )


def _chain_samples(evals: dict[str, dict]) -> str:
    prompts: dict[str, dict[str, str]] = {}
    for stage, result in evals.items():
        for s in result.get("samples") or []:
            if isinstance(s, dict):
                prompts.setdefault(str(s.get("prompt", "")), {})[stage] = str(s.get("output", ""))
    if not prompts:
        return ""
    cols = list(evals)
    rows = [[_td(p, "text")] + [_td(out.get(c, "—"), "text") for c in cols] for p, out in prompts.items()]
    return "<h3>Sample answers</h3>\n" + _table(["prompt"] + cols, rows, "samples")
