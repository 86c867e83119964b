"""`camelid run RECIPE.yaml`: plan which stages run, skip or resume, then run them in order, one process each.

Plan, stage by stage (`--dry-run` prints it and stops):
- skip    its folder holds a completed output whose fingerprint equals the one its inputs give now;
- resume  the same fingerprint, but the stage did not finish (killed, failed) and left checkpoints: the training
          loop continues from the newest one;
- run     no output yet, or its inputs changed (the plan says which: a key old → new, a file's content, an earlier
          stage that re-runs), or `--force` / `--from` asked. A stale output is removed first.

Each stage runs as `python -m camelid VERB ...` (under `accelerate launch` when it has `launch:`), so a stage that
fails or is killed never takes the recipe's own state with it: it is marked failed in lineage.json, its own error
is above, and every completed stage stays reusable. `serve`, if last, always runs (it never finishes).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from camelid.recipe.lineage import (
    PENDING,
    Hashes,
    differences,
    fingerprint,
    headline,
    inputs,
    only_extends,
    read_record,
    write_lineage,
    write_record,
)
from camelid.recipe.spec import Recipe, Stage
from camelid.utils import CamelidError


@dataclass
class Step:
    stage: Stage
    action: str  # run, resume, skip
    why: list[str]
    material: dict
    record: dict | None  # what the stage's folder says now

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.material)


def _has_checkpoint(stage: Stage) -> bool:
    return any(stage.folder.glob("checkpoint-*"))


def plan(recipe: Recipe, force: list[str] = (), start: str | None = None, only: str | None = None) -> list[Step]:
    for name in [*force, *([start] if start else []), *([only] if only else [])]:
        recipe.stage(name)  # an unknown name fails with the closest ones
    forced = set(force)
    if start:
        forced |= set(list(recipe.stages)[list(recipe.stages).index(start) :])
    hashes, run_ids, steps = Hashes(), {}, []
    for name, stage in recipe.stages.items():
        record = read_record(stage)
        material = inputs(stage, run_ids, hashes)
        done = record is not None and record.get("state") == "done"
        same = record is not None and record.get("fingerprint") == fingerprint(material)
        if only and name != only:
            action, why = "skip", ["--only " + only]
            if not done:
                action, why = "missing", ["not completed: run the recipe up to it first"]
        elif stage.verb == "serve":
            action, why = "run", ["serve always runs"]
        elif name in forced:
            action, why = "run", ["--force" if name in force else f"--from {start}"]
        elif done and same:
            action, why = "skip", [f"done {record.get('finished', '')}".strip()]
        elif record is None:
            action, why = "run", ["no output yet"]
        elif same and _has_checkpoint(stage):
            action, why = "resume", [f"{record.get('state')} after checkpoint; continues from it"]
        elif same:
            action, why = "run", [f"{record.get('state')} before its first checkpoint"]
        elif only_extends(stage, record.get("inputs", {}), material) and _has_checkpoint(stage):
            action, why = "resume", [*differences(record["inputs"], material), "only extends the run: it continues"]
        else:
            action, why = "run", differences(record.get("inputs", {}), material)
        run_ids[name] = record.get("run_id", "") if action in ("skip", "missing") and record else PENDING
        steps.append(Step(stage, action, why, material, record))
    missing = [s.stage.name for s in steps if s.action == "missing" and s.stage.name in recipe.stage(only).needs]
    if missing:
        raise CamelidError(f"--only {only} reads {', '.join(missing)}, which has not completed: run the recipe first")
    return steps


def describe(recipe: Recipe, steps: list[Step]) -> str:
    lines = [f"recipe {recipe.path} → {recipe.folder}"]
    for i, s in enumerate(steps, 1):
        lines.append(f"{i:2}. {s.stage.name:12} {s.stage.verb:10} {s.action:7} {'; '.join(s.why)}")
        if s.action in ("run", "resume"):
            lines.append(f"      $ {shlex.join(command(s.stage))}")
    return "\n".join(lines)


def command(stage: Stage) -> list[str]:
    argv = stage.command()
    if stage.launch:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            stage.launch,
            "-m",
            "camelid",
            *argv,
        ]
    return [sys.executable, "-m", "camelid", *argv]


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


@contextlib.contextmanager
def _only_runner(recipe: Recipe) -> Iterator[None]:
    """One `camelid run` per recipe folder at a time: two would delete and write each other's stages."""
    recipe.folder.mkdir(parents=True, exist_ok=True)
    with open(recipe.folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise CamelidError(
                f"another `camelid run` (pid {f.read().strip() or '?'}) is using {recipe.folder}"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield


def run(recipe: Recipe, steps: list[Step]) -> None:
    with _only_runner(recipe):
        _run(recipe, steps)


def _run(recipe: Recipe, steps: list[Step]) -> None:
    records = {s.stage.name: s.record for s in steps}
    write_lineage(recipe, records)
    run_ids = {s.stage.name: (s.record or {}).get("run_id", "") for s in steps}
    todo = [s for s in steps if s.action in ("run", "resume")]
    for n, step in enumerate(todo, 1):
        stage = step.stage
        material = inputs(stage, run_ids, Hashes())  # upstream run ids are known now
        if step.action == "run" and stage.folder.exists():
            shutil.rmtree(stage.folder)  # stale or forced: a fresh start, not a resume of other inputs' checkpoints
        record = {
            "state": "running",
            "fingerprint": fingerprint(material),
            "inputs": material,
            "command": shlex.join(command(stage)),
            "started": _now(),
        }
        write_record(stage, record)
        records[stage.name] = record
        write_lineage(recipe, records)
        print(
            f"\n== [{n}/{len(todo)}] {stage.name} ({stage.verb}, {step.action}) ==\n$ {record['command']}", flush=True
        )
        started = time.time()
        try:
            rc = subprocess.call(command(stage))
        except KeyboardInterrupt:
            rc = 130
        if stage.verb == "serve":  # it ran until stopped: nothing to record as made
            return
        record |= {"seconds": round(time.time() - started, 1), "finished": _now()}
        if rc != 0:
            record |= {"state": "failed", "exit_code": rc}
            write_record(stage, record)
            write_lineage(recipe, records)
            raise CamelidError(
                f"stage '{stage.name}' ({stage.verb}) failed with exit code {rc} (its own error is above); "
                f"completed stages are kept: `camelid run {recipe.path}` continues from here"
            )
        run_ids[stage.name] = uuid.uuid4().hex
        record |= {"state": "done", "run_id": run_ids[stage.name], "metrics": headline(stage)}
        write_record(stage, record)
        write_lineage(recipe, records)
    print("\n" + status_table(recipe))


def status_table(recipe: Recipe) -> str:
    """One line per stage: state (and whether the recipe now makes it stale), wall time, headline metrics."""
    steps = plan(recipe)
    rows = [("stage", "verb", "state", "time", "metrics")]
    for s in steps:
        rec = s.record or {}
        state = rec.get("state", "not run")
        if state == "done" and s.action != "skip":
            state = "stale: " + "; ".join(s.why)[:60]
        seconds = rec.get("seconds")
        metrics = ", ".join(f"{k}={v}" for k, v in (rec.get("metrics") or {}).items())
        rows.append((s.stage.name, s.stage.verb, state, f"{seconds:.0f}s" if seconds is not None else "", metrics))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)
