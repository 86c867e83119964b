"""Reading a run folder (see camelid/train/run.py for what a training stage writes there) and a recipe folder
(lineage.json, see camelid/recipe/runner.py): one place that knows the files, for the HTML report and the web UI.

A run's state comes from status.json, which the training stage writes as it starts ("running", with its pid) and
ends ("finished" or "failed", with the error); a run whose process is gone while status.json still says running was
killed, and reads as "stopped". Folders written before status.json existed read as "finished" when they hold
summary.json, else "stopped".
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from camelid.utils import CamelidError, write_json

BEFORE, AFTER = "before", "after"
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Run:
    path: Path
    name: str  # the folder name: the run's label in every figure and table
    config: dict = field(default_factory=dict)  # config.yaml as plain YAML
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), one per step
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss), one per step
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # ALIGNMENT_CURVES key → (step, value)
    results: dict[str, dict] = field(default_factory=dict)  # label → eval/<label>.json, in comparison order
    sources: list[str] = field(default_factory=list)  # the files read, for the header
    notes: list[str] = field(default_factory=list)  # files present that could not be used


def load_run(path: str | os.PathLike) -> Run:
    """Read everything the report shows from one run folder. Only a path that is no run folder at all fails."""
    path = Path(path)
    if not path.is_dir():
        raise CamelidError(f"{path} is not a folder; pass a run folder (the train.output_dir of a run)")
    if not any((path / f).exists() for f in ("metrics.jsonl", "config.yaml", "eval")):
        raise CamelidError(f"{path} has no metrics.jsonl, config.yaml or eval/: it is not a run folder")
    run = Run(path=path, name=path.name or path.resolve().name)
    _read_config(run)
    _read_metrics(run)
    _read_results(run)
    return run


def _read_config(run: Run) -> None:
    f = run.path / "config.yaml"
    if not f.exists():
        run.notes.append("config.yaml is missing, so the run's settings are unknown")
        return
    try:
        # Plain YAML, not load_config: a run written by an older camelid may carry keys the strict loader rejects.
        data = yaml.load(f.read_text(encoding="utf-8"), Loader=_YAML)
    except (OSError, ValueError, yaml.YAMLError) as e:
        run.notes.append(f"config.yaml could not be read ({e})")
        return
    run.config = data if isinstance(data, dict) else {}
    run.sources.append("config.yaml")


def _read_metrics(run: Run) -> None:
    f = run.path / "metrics.jsonl"
    if not f.exists():
        run.notes.append(
            "metrics.jsonl is missing: no losses to plot (camelid sft and camelid pt write it while training)"
        )
        return
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    curves: dict[str, dict[int, float]] = {}
    skipped = 0
    for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1  # a run that is still writing can leave half a line at the end
            continue
        if not isinstance(row, dict) or not is_num(row.get("step")):
            skipped += 1
            continue
        step = int(row["step"])
        # The last value per step wins: the final eval line repeats the last step's, and a resumed run
        # rewrote the steps after its checkpoint.
        if is_num(row.get("loss")):
            train[step] = float(row["loss"])
        if is_num(row.get("eval_loss")):
            evals[step] = float(row["eval_loss"])
        for key in ALIGNMENT_CURVES:
            if is_num(row.get(key)):
                curves.setdefault(key, {})[step] = float(row[key])
    run.train, run.evals = sorted(train.items()), sorted(evals.items())
    run.curves = {k: sorted(v.items()) for k, v in curves.items()}
    extra = f", {skipped} unreadable lines skipped" if skipped else ""
    run.sources.append(f"metrics.jsonl ({len(train)} training steps, {len(evals)} eval points{extra})")


def _read_results(run: Run) -> None:
    found: dict[str, dict] = {}
    for f in sorted((run.path / "eval").glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            run.notes.append(f"eval/{f.name} could not be read ({e}); left out")
            continue
        if not isinstance(data, dict):
            run.notes.append(f"eval/{f.name} is not a JSON object; left out")
            continue
        label = str(data.get("label") or f.stem)
        if label in found:
            run.notes.append(f"eval/{f.name} repeats the label '{label}'; left out")
            continue
        found[label] = data
        run.sources.append(f"eval/{f.name} (model {data.get('model', '?')}, {data.get('created', 'time unknown')})")
    run.results = {label: found[label] for label in sorted(found, key=label_order)}


def label_order(label: str) -> tuple[int, str]:
    return (0 if label == BEFORE else 2 if label == AFTER else 1, label)


ALIGNMENT_CURVES = {
    "score": "PPO: reward-model score of the rollouts",
    "kl": "PPO: KL to the reference (per answer)",
    "entropy": "PPO: policy entropy (per token)",
    "eval_accuracy": "rm / dpo: held-out pairwise accuracy",
    "eval_margin": "rm / dpo: held-out chosen − rejected reward margin",
}


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Debiased exponential moving average, TensorBoard's smoothing.

    The default weight remembers about a tenth of the series. A fixed 0.9 would flatten a 20-step run
    and hardly smooth a 10,000-step one."""
    n = len(values)
    if weight is None:
        weight = min(0.95, max(0.0, 1 - 10 / max(n, 1)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))  # the debiasing stops the start being pulled towards 0
    return out


def read_lineage(folder: Path) -> dict | None:
    f = folder / "lineage.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CamelidError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise CamelidError(f"{f}: no 'stages' mapping; is this a recipe folder?")
    return data


# ---------------------------------------------------------------------------------------------
# state


def write_status(run_dir: Path, state: str, **extra) -> None:
    """status.json: 'running' (with pid and host), 'finished', 'failed' (with the error) or 'stopped'."""
    stage = read_status(run_dir).get("stage")  # written once, at the start; kept through the later states
    data = {"state": state, "time": time.time(), **({"stage": stage} if stage else {}), **extra}
    if state == "running":
        data |= {"pid": os.getpid(), "host": socket.gethostname()}
    write_json(run_dir / "status.json", data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_status(run_dir: Path) -> dict:
    try:
        st = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return st if isinstance(st, dict) else {}


def run_state(run_dir: Path, status: dict | None = None) -> dict:
    """{"state": running | finished | failed | stopped, and "error" when it failed or stopped}; `status` is
    status.json when the caller has read it already."""
    st = read_status(run_dir) if status is None else status
    if st.get("state") not in ("running", "finished", "failed", "stopped"):
        return {"state": "finished" if (run_dir / "summary.json").is_file() else "stopped"}
    if st["state"] == "running":
        # A pid is only meaningful on the host that wrote it; another host's run is taken at its word.
        here = st.get("host") == socket.gethostname()
        if here and isinstance(st.get("pid"), int) and not _alive(st["pid"]):
            return {"state": "stopped", "error": "the training process is gone (killed?) without finishing"}
    return {k: st[k] for k in ("state", "error") if k in st}


def is_run(path: Path) -> bool:
    return any((path / f).exists() for f in ("metrics.jsonl", "config.yaml", "status.json"))


def find_runs(root: Path, depth: int = 2) -> list[dict]:
    """Run folders and recipe folders under `root` (at most `depth` levels down; a recipe's stages are listed under
    it, not again at the top), newest first: {"path": relative POSIX path, "kind": "run" | "recipe", ...}."""
    out = []

    def walk(folder: Path, level: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for p in children:
            if p.is_symlink():  # a link could lead outside the root the UI was given
                continue
            rel = p.relative_to(root).as_posix()
            if (p / "lineage.json").is_file():
                out.append({"path": rel, "kind": "recipe", "updated": _mtime(p / "lineage.json")})
            elif is_run(p):
                status = read_status(p)
                out.append(
                    {"path": rel, "kind": "run", "updated": _mtime(p), **_brief(p, status), **run_state(p, status)}
                )
            elif level < depth:
                walk(p, level + 1)

    walk(root, 1)
    return sorted(out, key=lambda r: -r["updated"])


def _brief(run_dir: Path, status: dict) -> dict:
    """The stage, method and model a run list shows, from status.json and config.yaml (None where unknown)."""
    try:
        # libyaml's loader when present: the web UI lists runs while the same CPU generates (~6x less time)
        config = yaml.load((run_dir / "config.yaml").read_text(encoding="utf-8"), Loader=_YAML)
    except (OSError, ValueError, yaml.YAMLError):
        config = None
    config = config if isinstance(config, dict) else {}
    model = config.get("model")
    return {
        "stage": status.get("stage"),
        "method": config.get("method"),
        "model": model.get("name") if isinstance(model, dict) else None,
    }


def _mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for f in ("metrics.jsonl", "status.json"):
        if (path / f).exists():
            newest = max(newest, (path / f).stat().st_mtime)
    return newest
