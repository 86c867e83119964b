"""The run report: one offline HTML page showing what a fine-tuning run did, for one run or several side by side.

    write_report([Path("runs/a"), Path("runs/b")], Path("runs/a/report"))   # → runs/a/report/index.html
    camelid report runs/a runs/b [--out DIR]

It reads only what a run folder already holds: config.yaml, metrics.jsonl (training and eval loss), and the
`camelid eval` results in eval/<label>.json. It writes index.html with PNG figures beside it. The page has no
scripts and loads nothing remote, so it opens the same from a laptop, a zip file or a CI artifact. Every number
in a figure is also in a table, so nobody has to read values off a plot.

Eval results are compared in the label order before, <other labels, sorted>, after. The Δ column is the last
label minus the first, normally after − before. A missing piece becomes a note that says how to produce it,
never an error: a report is most often opened while a run is still incomplete.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from camelid.rundir import AFTER, ALIGNMENT_CURVES, BEFORE, Run, is_num, load_run, read_lineage, smooth
from camelid.utils import CamelidError

# Each results section and the `camelid eval` option that produces it, with an example value for hints when the
# run's config.yaml does not name one itself.
_EVAL_OPTIONS = {
    "tasks": ("benchmark scores", "eval.tasks", "[mmlu,arc_easy]"),
    "perplexity": ("perplexity", "eval.perplexity", "[FILE.txt]"),
    "samples": ("sample generations", "eval.samples", "PROMPTS.jsonl"),
}
SCORES = ("acc", "acc_norm", "acc_norm_token")
# Results written before acc_norm followed lm-eval (per character of the choice without its leading space) carry
# acc_norm_char instead, which counted that space; shown as its own row, never as acc_norm.
_OLD_SCORES = ("acc_norm_char",)


def _cfg(config: dict, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# ---------------------------------------------------------------------------------------------
# numbers


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if is_num(x)]
    return sum(xs) / len(xs) if xs else None


def _score(entry: Any, key: str) -> float | None:
    value = entry.get(key) if isinstance(entry, dict) else None
    return float(value) if is_num(value) else None


def _section(result: dict, key: str) -> dict:
    """A results section ("tasks", "perplexity") as a dict, whatever the file holds."""
    value = result.get(key)
    return value if isinstance(value, dict) else {}


def _union(dicts: list[dict]) -> list[str]:
    """The keys of several dicts, in first-seen order."""
    return list(dict.fromkeys(k for d in dicts for k in d))


# ---------------------------------------------------------------------------------------------
# figures (matplotlib's object API: no pyplot, so no global backend switch or figure registry in the caller)


def _figure(width: float = 8.0, height: float = 4.2):
    from matplotlib.figure import Figure  # a bare Figure saves through the Agg canvas; no display needed

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _mpl_text(s: str) -> str:
    return s.replace("$", r"\$")  # a '$' in a folder name would otherwise start mathtext


def _line_figure(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, smoothed: bool) -> list[str]:
    """One line per run, saved as PNG. Returns the legend labels, which become the image's alt text."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        color = f"C{i % 10}"  # fixed per run position, so a run keeps its color in every figure
        xs, ys = zip(*points)
        if smoothed:
            ax.plot(xs, ys, color=color, alpha=0.3, linewidth=1)  # raw steps, faint and left out of the legend
            ax.plot(xs, smooth(list(ys)), color=color, linewidth=2, label=_mpl_text(name))
        else:
            ax.plot(xs, ys, "o-", color=color, markersize=4, label=_mpl_text(name))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    labels = ax.get_legend_handles_labels()[1]
    fig.savefig(path, format="png")
    return labels


def _bar_figure(accs: dict[str, dict[str, float | None]], tasks: list[str], path: Path) -> None:
    """Grouped bars: one group per task, one bar per eval label (accs: label → task → acc)."""
    fig = _figure(width=min(16.0, max(6.0, 1.3 * len(tasks) + 2)))
    ax = fig.add_subplot()
    width = 0.8 / len(accs)
    for j, (label, by_task) in enumerate(accs.items()):
        values = [by_task.get(t) for t in tasks]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(tasks))]
        # Colors name labels, not runs: gray base model, blue trained model in every run's chart.
        color = {BEFORE: "#9aa0a6", AFTER: "#0969da"}.get(label, f"C{j + 1}")
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=_mpl_text(label), color=color)
        ax.bar_label(bars, labels=[f"{v:.3f}" if v is not None else "" for v in values], fontsize=8)
    ax.set_xticks(range(len(tasks)), [_mpl_text(t) for t in tasks], rotation=30 if len(tasks) > 5 else 0)
    top = max([v for by_task in accs.values() for v in by_task.values() if v is not None] + [1.0])
    ax.set_ylim(0, top * 1.12)  # head room for the value labels
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------------------------------
# HTML pieces. Everything that comes from a file goes through _e.


def _e(x: Any) -> str:
    return html.escape(str(x))


def _td(text: Any, cls: str = "") -> str:
    return f'<td class="{cls}">{_e(text)}</td>' if cls else f"<td>{_e(text)}</td>"


def _num(x: float | None, spec: str = ".4f") -> str:
    return format(x, spec) if is_num(x) else "—"


def _delta_td(
    first: float | None, last: float | None, spec: str = ".4f", higher_is_better: bool = True, relative: bool = False
) -> str:
    """The change from first to last, green when it is an improvement and red when it is a regression."""
    if first is None or last is None:
        return _td("—")
    d = last - first
    text = format(d, "+" + spec)
    if relative and first:
        text += f" ({d / first:+.1%})"
    if float(format(d, spec)) == 0:  # rounds to zero: no color for noise the table cannot show
        return _td(text)
    return _td(text, "good" if (d > 0) == higher_is_better else "bad")


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """`head` is plain text; `rows` hold finished <td> cells."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _note(*parts: str) -> str:
    """A missing piece and how to produce it: text and commands alternate, e.g. ("Run ", "camelid eval X", ".")."""
    inner = "".join(f"<code>{_e(p)}</code>" if i % 2 else _e(p) for i, p in enumerate(parts))
    return f'<p class="note">{inner}</p>'


def _img(name: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_e(name)}" alt="{_e(alt)}">{cap}</figure>'


def _delta_head(labels: list[str]) -> str:
    return f"Δ ({labels[-1]} − {labels[0]})"


# ---------------------------------------------------------------------------------------------
# sections


def _header(runs: list[Run]) -> str:
    def steps(r: Run) -> str:
        max_steps, epochs = _cfg(r.config, "train.max_steps"), _cfg(r.config, "train.epochs")
        return f"{max_steps} (max_steps)" if max_steps else f"{epochs} epoch(s)" if epochs is not None else "—"

    def listing(x: Any) -> str:
        return ", ".join(map(str, x)) if isinstance(x, list) else "—" if x in (None, "") else str(x)

    rows_spec = [
        ("folder", lambda r: str(r.path)),
        ("model.name", lambda r: listing(_cfg(r.config, "model.name"))),
        ("method", lambda r: listing(_cfg(r.config, "method"))),
        ("train.lr", lambda r: listing(_cfg(r.config, "train.lr"))),
        ("steps", steps),
        ("last logged step", lambda r: str(r.train[-1][0]) if r.train else "—"),
        ("data.train", lambda r: listing(_cfg(r.config, "data.train"))),
    ]
    rows = [[_td(key, "key")] + [_td(get(r)) for r in runs] for key, get in rows_spec]
    # The files read are a list per run: one line each, so they stay readable side by side.
    rows.append([_td("files read", "key")] + ["<td>" + "<br>".join(map(_e, r.sources)) + "</td>" for r in runs])
    notes = "".join(_note(f"{r.name}: {n}") for r in runs for n in r.notes)
    made = datetime.now().isoformat(timespec="seconds")
    return (
        f'<h1>camelid report: {_e(", ".join(r.name for r in runs))}</h1>\n<p class="meta">generated {made}</p>\n'
        + _table([""] + [r.name for r in runs], rows, "config")
        + notes
    )


def _loss_section(runs: list[Run], out: Path) -> str:
    parts = ["<h2>Training loss</h2>"]
    if not any(r.train for r in runs):
        return "\n".join(
            parts
            + [
                _note(
                    "No training loss: no line of metrics.jsonl has a 'loss' yet; ",
                    "camelid sft CONFIG",
                    " and ",
                    "camelid pt CONFIG",
                    " write one per logged step while training.",
                )
            ]
        )
    legend = _line_figure({r.name: r.train for r in runs}, out / "loss.png", "training loss", smoothed=True)
    parts.append(
        _img(
            "loss.png",
            "training loss: " + ", ".join(legend),
            "faint: loss of every logged step; bold: smoothed (debiased moving average)",
        )
    )
    rows = []
    for r in runs:
        if not r.train:
            rows.append([_td(r.name)] + [_td("—")] * 5)
            continue
        losses = [loss for _, loss in r.train]
        best_step, best = min(r.train, key=lambda p: p[1])
        rows.append(
            [
                _td(r.name),
                _td(r.train[-1][0]),
                _td(_num(losses[0])),
                _td(_num(losses[-1])),
                _td(_num(smooth(losses)[-1])),
                _td(f"{_num(best)} (step {best_step})"),
            ]
        )
    parts.append(_table(["run", "last step", "first loss", "final loss", "final smoothed", "lowest"], rows))
    return "\n".join(parts)


# What rm / dpo / ppo runs log beyond a loss, each drawn as its own figure when a run has it.


def _alignment_section(runs: list[Run], out: Path) -> str:
    keys = [k for k in ALIGNMENT_CURVES if any(r.curves.get(k) for r in runs)]
    if not keys:
        return ""
    parts = ["<h2>Alignment</h2>"]
    for key in keys:
        legend = _line_figure(
            {r.name: r.curves.get(key, []) for r in runs}, out / f"{key}.png", key, smoothed=not key.startswith("eval_")
        )
        parts.append(_img(f"{key}.png", f"{key}: " + ", ".join(legend), ALIGNMENT_CURVES[key]))
    return "\n".join(parts)


def _eval_loss_section(runs: list[Run], out: Path) -> str:
    parts = ["<h2>Eval loss</h2>"]
    hint = (
        "metrics.jsonl has no eval_loss. Eval loss is logged when the config sets data.eval (files) or "
        "data.eval_split > 0: at step 0, every train.eval_every steps and at the end."
    )
    if not any(r.evals for r in runs):
        return "\n".join(parts + [_note("No eval loss in any run: " + hint)])
    legend = _line_figure({r.name: r.evals for r in runs}, out / "eval_loss.png", "eval loss", smoothed=False)
    parts.append(_img("eval_loss.png", "eval loss: " + ", ".join(legend), "loss on the held-out eval set"))
    rows = []
    for r in runs:
        if not r.evals:
            rows.append([_td(r.name), _td(0)] + [_td("—")] * 4)
            continue
        best_step, best = min(r.evals, key=lambda p: p[1])
        first, last = r.evals[0][1], r.evals[-1][1]
        rows.append(
            [
                _td(r.name),
                _td(len(r.evals)),
                _td(f"{_num(first)} (step {r.evals[0][0]})"),
                _td(f"{_num(last)} (step {r.evals[-1][0]})"),
                _delta_td(first, last, higher_is_better=False),
                _td(f"{_num(best)} (step {best_step})"),
            ]
        )
    parts.append(_table(["run", "evals", "first", "final", "Δ (final − first)", "best"], rows))
    parts += [_note(f"{r.name}: " + hint) for r in runs if not r.evals]
    return "\n".join(parts)


def eval_command(run: Run, section: str, before: bool) -> str:
    """The `camelid eval` command that adds `section` ("tasks", "perplexity", "samples") to the run's results.
    It reuses what the run's own config asks for (eval.tasks etc.), so the hint can be pasted as it is."""
    _, key, example = _EVAL_OPTIONS[section]
    value = _cfg(run.config, key)
    if isinstance(value, list):
        value = "[" + ",".join(map(str, value)) + "]" if value else None
    return f"camelid eval {run.path}{' --before' if before else ''} {key}={value or example}"


def _missing_note(run: Run, labels: list[str], section: str) -> str:
    """What to run when no eval label has `section`, or only one side of the before/after comparison does."""
    what = _EVAL_OPTIONS[section][0]
    cmd_before, cmd_after = eval_command(run, section, before=True), eval_command(run, section, before=False)
    if not run.results:
        return _note(
            f"No {what}: {run.path}/eval/ holds no results yet. Run ",
            cmd_before,
            " to score the base model and ",
            cmd_after,
            " to score the trained one. With eval.* set in the training config, sft and pt do both when training ends.",
        )
    if not labels:
        files = ", ".join(f"eval/{lb}.json" for lb in run.results)
        return _note(f"No {what} in {files}. Run ", cmd_before, " and ", cmd_after, " to add them.")
    if BEFORE not in labels:
        return _note(
            f"No {what} for the base model ('before'), so there is nothing to compare against. Run ",
            cmd_before,
            " to add them.",
        )
    if AFTER not in labels:
        return _note(f"No {what} for the trained model ('after'). Run ", cmd_after, " to add them.")
    return ""


def _labels_with(run: Run, key: str) -> list[str]:
    """The labels whose results have a non-empty `key` section of the schema's type (samples: list, else dict)."""
    kind = list if key == "samples" else dict
    return [label for label, res in run.results.items() if isinstance(res.get(key), kind) and res[key]]


def _benchmark_section(runs: list[Run], out: Path) -> str:
    parts = ["<h2>Benchmarks</h2>"]
    if len(runs) > 1:
        parts.append(_benchmark_overview(runs))
    for i, r in enumerate(runs):
        parts.append(f"<h3>{_e(r.name)}</h3>")
        parts.append(_run_benchmarks(r, out, f"benchmarks-{i + 1}.png"))
    return "\n".join(parts)


def _benchmark_overview(runs: list[Run]) -> str:
    """acc per task with every run side by side: each run's first and last label and the change."""
    tasks = _union([_section(res, "tasks") for r in runs for res in r.results.values()])
    if not tasks:
        return ""
    head, rows = ["task"], []
    for r in runs:
        labels = _labels_with(r, "tasks")
        head += (
            [f"{r.name}: {labels[0]}", f"{r.name}: {labels[-1]}", f"{r.name}: Δ"]
            if len(labels) > 1
            else [f"{r.name}: {labels[0] if labels else 'acc'}", f"{r.name}: Δ"]
        )
    for task in tasks:
        row = [_td(task)]
        for r in runs:
            labels = _labels_with(r, "tasks")
            accs = [_score(_section(r.results[lb], "tasks").get(task), "acc") for lb in labels] or [None]
            row += [_td(_num(accs[0]))] + ([_td(_num(accs[-1]))] if len(labels) > 1 else [])
            row.append(_delta_td(accs[0], accs[-1]) if len(labels) > 1 else _td("—"))
        rows.append(row)
    return "<p>acc of every run, side by side:</p>\n" + _table(head, rows)


def _run_benchmarks(run: Run, out: Path, png: str) -> str:
    labels = _labels_with(run, "tasks")
    missing = _missing_note(run, labels, "tasks")
    if not labels:
        return missing
    by_label = {lb: _section(run.results[lb], "tasks") for lb in labels}
    tasks = _union(list(by_label.values()))
    accs = {lb: {t: _score(by_label[lb].get(t), "acc") for t in tasks} for lb in labels}
    _bar_figure(accs, tasks, out / png)
    parts = [_img(png, f"benchmark acc of {run.name}: " + ", ".join(labels)), missing]
    for task in tasks:
        entries = [by_label[lb].get(task) for lb in labels]
        parts.append(_task_table(task, labels, entries))
    return "\n".join(p for p in parts if p)


def _task_table(task: str, labels: list[str], entries: list[Any]) -> str:
    """acc, acc_norm and acc_norm_token for each label, then the per-subject acc if the task has subjects."""
    head = ["score"] + labels + ([_delta_head(labels)] if len(labels) > 1 else [])
    rows = []
    old = [k for k in _OLD_SCORES if any(isinstance(e, dict) and k in e for e in entries)]
    for key in SCORES + tuple(old):
        values = [_score(e, key) for e in entries]
        delta = [_delta_td(values[0], values[-1])] if len(labels) > 1 else []
        rows.append([_td(key)] + [_td(_num(v)) for v in values] + delta)
    parts = [f"<h4>{_e(task)}</h4>", f'<p class="meta">{_e(_sizes(labels, entries))}</p>', _table(head, rows)]
    if old:
        parts.append(
            '<p class="meta">acc_norm_char comes from results written by an older camelid, whose '
            "per-character normalization counted the space before each choice; run camelid eval again for "
            "acc_norm as lm-evaluation-harness defines it.</p>"
        )
    subjects = [
        e.get("subjects") if isinstance(e, dict) and isinstance(e.get("subjects"), dict) else {} for e in entries
    ]
    if any(subjects):
        parts.append(_subject_table(labels, subjects))
    return "\n".join(parts)


def _sizes(labels: list[str], entries: list[Any]) -> str:
    """n and k-shot of a task; spelled out per label when they differ, since then the scores are not comparable."""

    def of(key: str) -> list[Any]:
        return [e.get(key) if isinstance(e, dict) else None for e in entries]

    out = []
    for key in ("n", "k_shot"):
        values = of(key)
        if len(set(map(str, values))) == 1:
            out.append(f"{key} = {values[0] if values[0] is not None else '?'}")
        else:  # e.g. a --limit on one side only
            out.append(
                f"{key}: " + ", ".join(f"{lb} {v}" for lb, v in zip(labels, values)) + " (differ: not comparable)"
            )
    return "; ".join(out)


def _subject_table(labels: list[str], subjects: list[dict]) -> str:
    """acc per subject, biggest gain first, with the macro average (every subject counts once) on top."""
    names = _union(subjects)
    compare = len(labels) > 1

    def acc(i: int, name: str) -> float | None:
        return _score(subjects[i].get(name), "acc")

    def delta(name: str) -> float | None:
        first, last = acc(0, name), acc(len(labels) - 1, name)
        return last - first if compare and first is not None and last is not None else None

    # Subjects without a delta go last; ties keep name order so the table is stable between reports.
    names.sort(key=lambda n: (delta(n) is None, -(delta(n) or 0.0), n))
    macro = [_mean([acc(i, n) for n in names]) for i in range(len(labels))]
    rows = [
        [_td("macro average", "key")]
        + [_td(_num(m), "key") for m in macro]
        + ([_delta_td(macro[0], macro[-1])] if compare else [])
        + [_td(f"{len(names)} subjects", "key")]
    ]
    for name in names:
        n = next((s[name].get("n") for s in reversed(subjects) if isinstance(s.get(name), dict)), None)
        rows.append(
            [_td(name)]
            + [_td(_num(acc(i, name))) for i in range(len(labels))]
            + ([_delta_td(acc(0, name), acc(len(labels) - 1, name))] if compare else [])
            + [_td(n if n is not None else "—")]
        )
    head = ["subject"] + [f"acc {lb}" for lb in labels] + ([_delta_head(labels)] if compare else []) + ["n"]
    return (
        f"<details><summary>{len(names)} subjects (acc, biggest gain first)</summary>\n"
        + _table(head, rows)
        + "\n</details>"
    )


def _perplexity_section(runs: list[Run]) -> str:
    parts = ["<h2>Perplexity</h2>"]
    for r in runs:
        parts.append(f"<h3>{_e(r.name)}</h3>")
        labels = _labels_with(r, "perplexity")
        missing = _missing_note(r, labels, "perplexity")
        if not labels:
            parts.append(missing)
            continue
        by_label = {lb: _section(r.results[lb], "perplexity") for lb in labels}
        compare = len(labels) > 1
        rows = []
        for name in _union(list(by_label.values())):
            ppl = [_score(by_label[lb].get(name), "ppl") for lb in labels]
            tokens = next(
                (
                    by_label[lb][name].get("tokens")
                    for lb in reversed(labels)
                    if isinstance(by_label[lb].get(name), dict)
                ),
                None,
            )
            rows.append(
                [_td(name)]
                + [_td(_num(p, ".3f")) for p in ppl]
                + ([_delta_td(ppl[0], ppl[-1], ".3f", higher_is_better=False, relative=True)] if compare else [])
                + [_td(tokens if tokens is not None else "—")]
            )
        head = ["file"] + [f"ppl {lb}" for lb in labels] + ([_delta_head(labels)] if compare else []) + ["tokens"]
        parts += [_table(head, rows), missing]
    return "\n".join(p for p in parts if p)


def _samples_section(runs: list[Run]) -> str:
    parts = ["<h2>Sample generations</h2>"]
    for r in runs:
        parts.append(f"<h3>{_e(r.name)}</h3>")
        labels = _labels_with(r, "samples")
        missing = _missing_note(r, labels, "samples")
        if not labels:
            parts.append(missing)
            continue
        rows = [
            [_td(prompt, "text")] + [_td(outputs.get(lb, "—"), "text") for lb in labels]
            for prompt, outputs in _align_samples(r, labels)
        ]
        parts += [_table(["prompt"] + labels, rows, "samples"), missing]
    return "\n".join(p for p in parts if p)


def _align_samples(run: Run, labels: list[str]) -> list[tuple[str, dict[str, str]]]:
    """One row per prompt with every label's output, matched by prompt text (the k-th repeat to the k-th)."""
    rows: dict[tuple[str, int], dict[str, str]] = {}
    for lb in labels:
        seen: dict[str, int] = {}
        for s in run.results[lb]["samples"]:
            if not isinstance(s, dict):
                continue
            prompt = str(s.get("prompt", ""))
            k = seen[prompt] = seen.get(prompt, -1) + 1
            rows.setdefault((prompt, k), {})[lb] = str(s.get("output", ""))
    return [(prompt, outputs) for (prompt, _), outputs in rows.items()]


# ---------------------------------------------------------------------------------------------
# the page


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: right; vertical-align: top; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
td.key { font-weight: 600; text-align: left; }
table.config td { text-align: left; }
td.good { color: #1a7f37; font-weight: 600; } td.bad { color: #cf222e; font-weight: 600; }
table.samples td.text { text-align: left; white-space: pre-wrap; font-family: ui-monospace, monospace;
                        max-width: 28em; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption, .meta { color: #59636e; font-size: .85em; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .4em .8em; }
code { background: #f6f8fa; padding: .1em .3em; }
"""


def _unique_names(runs: list[Run]) -> None:
    """Folder names label the runs; two runs both called `final` would merge, so those fall back to the path."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.path)
    seen: dict[str, int] = {}
    for r in runs:  # the same folder given twice
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} #{seen[r.name]}"


def write_report(runs: list[Path], out: Path) -> Path:
    """Write out/index.html and its PNG figures for run folders and recipe folders (holding lineage.json: their
    stages as a picture and the chain's numbers, then each stage's own sections); returns the index.html path."""
    from camelid.eval import report_recipe

    if not runs:
        raise CamelidError("no run folder given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipes, paths = [], []
    for r in runs:
        lineage = read_lineage(Path(r))
        if lineage is None:
            paths.append(Path(r))
            continue
        recipes.append(report_recipe.lineage_section(Path(r), lineage, out))
        paths += report_recipe.stage_runs(Path(r), lineage)
    loaded = [load_run(r) for r in paths]
    _unique_names(loaded)
    body = recipes + (
        [
            _header(loaded),
            _loss_section(loaded, out),
            _eval_loss_section(loaded, out),
            _alignment_section(loaded, out),
            _benchmark_section(loaded, out),
            _perplexity_section(loaded),
            _samples_section(loaded),
        ]
        if loaded
        else []
    )
    title = "camelid report: " + ", ".join(
        [Path(r).name for r in runs if Path(r) not in paths] + [r.name for r in loaded]
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    index = out / "index.html"
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a browser left open on the report never reloads half a page
    return index


def main(runs: list[str | Path], out: str | Path | None = None) -> Path:
    """`camelid report RUN [RUN ...] [--out DIR]` (the command line is parsed in camelid/cli.py, as every verb's):
    writes index.html (default under the first run's report/) and prints its path."""
    if not runs:
        raise CamelidError("camelid report needs at least one run folder")
    paths = [Path(r) for r in runs]
    page = write_report(paths, Path(out) if out else paths[0] / "report")
    print(page)
    return page
