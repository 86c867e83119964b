"""/v1/runs: the run and recipe folders under serve.runs_root, read-only, for the web UI — state, losses and eval
curves (read again on every request, so a run that is training shows its newest steps), eval results before and
after, the HTML report, and what `camelid data` shows of the run's training data with the supervised tokens marked.

Only folders inside serve.runs_root are ever read: a path is resolved (links included) and refused unless it stays
inside the root, so neither "../" nor a symlink planted in the root reaches other files.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from camelid.rundir import find_runs, is_num, is_run, load_run, read_lineage, read_status, run_state, smooth
from camelid.serve.protocol import ApiError, clip
from camelid.serve.runtime import Api
from camelid.utils import CamelidError

REPORT_FILES = (".html", ".png")  # what `camelid report` writes; nothing else in report/ is served
SKIP_KEYS = {"subjects", "n", "k_shot", "samples", "label", "model", "created"}


def root(api: Api) -> Path:
    return Path(api.cfg.runs_root).expanduser().resolve()


def folder(api: Api, rel: str) -> Path:
    """RUNS_ROOT/rel if it is a run or recipe folder inside the root; a 404 (never a hint of what is outside)."""
    base = root(api)
    path = (base / rel).resolve()
    if not path.is_relative_to(base) or path == base or not path.is_dir():
        raise ApiError(404, f"no run folder '{clip(rel)}' under serve.runs_root", param="path", code="run_not_found")
    if not (is_run(path) or (path / "lineage.json").is_file()):
        raise ApiError(404, f"'{clip(rel)}' is not a run or recipe folder", param="path", code="run_not_found")
    return path


def listing(api: Api) -> dict:
    base = root(api)
    return {"object": "list", "root": api.cfg.runs_root, "data": find_runs(base) if base.is_dir() else []}


def flat_results(result: dict) -> dict[str, float]:
    """An eval/<label>.json as 'section task metric' → number (benchmark scores, perplexity, reward): the rows of
    a before/after table."""
    out = {}
    for section, entries in result.items():
        if section in SKIP_KEYS or not isinstance(entries, dict):
            continue
        for task, value in entries.items():
            if is_num(value):
                out[f"{section} {task}"] = value
            elif isinstance(value, dict):
                for metric, v in value.items():
                    if metric not in SKIP_KEYS and is_num(v):
                        out[f"{section} {task} {metric}"] = v
    return out


def detail(api: Api, rel: str) -> dict:
    path = folder(api, rel)
    lineage = read_lineage(path)
    if lineage is not None:
        stages = []
        for name, st in lineage["stages"].items():
            sub = path / name
            stages.append(
                {
                    "name": name,
                    "verb": st.get("verb"),
                    "state": st.get("state", "not run"),
                    "seconds": st.get("seconds"),
                    "metrics": st.get("metrics") or {},
                    "path": f"{rel}/{name}" if sub.is_dir() and is_run(sub) else None,
                }
            )
        return {"object": "recipe", "path": rel, "recipe": lineage.get("recipe"), "stages": stages}
    run = load_run(path)
    model = run.config.get("model")
    status = read_status(path)
    return {
        "object": "run",
        "path": rel,
        **run_state(path, status),
        "stage": status.get("stage"),  # runs written before status.json: unknown
        "method": run.config.get("method"),
        "model": model.get("name") if isinstance(model, dict) else None,
        "config": run.config,
        "loss": run.train,
        "loss_smoothed": [[step, v] for (step, _), v in zip(run.train, smooth([v for _, v in run.train]))],
        "eval_loss": run.evals,
        "curves": run.curves,
        "results": {label: flat_results(r) for label, r in run.results.items()},
        "notes": run.notes,
        "report": (path / "report" / "index.html").is_file(),
    }


async def report(api: Api, rel: str, name: str) -> Path:
    """A file of the run's HTML report; index.html is (re)written by `camelid report` when missing or older than
    what the run has written since. It runs as its own process: the report is the eval package's, a sibling."""
    path = folder(api, rel)
    if not name.endswith(REPORT_FILES) or "/" in name or name.startswith("."):
        raise ApiError(404, f"no report file '{clip(name)}'", code="not_found")
    page = path / "report" / "index.html"
    if name == "index.html" and _stale(path, page):
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "camelid", "report", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ApiError(500, f"camelid report failed: {clip(why, 300)}", "server_error", code="report_failed")
    f = (path / "report" / name).resolve()
    if not f.is_relative_to(path.resolve()) or not f.is_file():
        raise ApiError(404, f"no report file '{clip(name)}'", code="not_found")
    return f


def _stale(run: Path, page: Path) -> bool:
    if not page.is_file():
        return True
    written = page.stat().st_mtime
    inputs = [run / "metrics.jsonl", run / "config.yaml", run / "lineage.json", *run.glob("eval/*.json")]
    return any(f.is_file() and f.stat().st_mtime > written for f in inputs)


def data_preview(api: Api, rel: str) -> dict:
    """`camelid data` for the run's config.yaml: sources read, lengths, supervised share and the first examples as
    (text, supervised) runs. The tokenizer is the run's own (final/) when it has one."""
    from camelid.config import load_config
    from camelid.data.preview import preview
    from camelid.model import load_tokenizer

    path = folder(api, rel)
    if not (path / "config.yaml").is_file():
        raise ApiError(404, f"'{clip(rel)}' has no config.yaml to preview", code="not_found")
    try:
        cfg = load_config(path / "config.yaml")
        if not cfg.data.train:
            raise CamelidError("its config has no data.train")
        tokenizer_from = path / "final" if (path / "final" / "tokenizer_config.json").is_file() else cfg.model.name
        # never the config's trust_remote_code: a page view must not run code a run folder names
        tok = load_tokenizer(tokenizer_from, cfg.model.template)
        p = preview(tok, cfg.data.train, cfg.data)
    except CamelidError as e:
        raise ApiError(400, f"cannot preview the data of '{clip(rel)}': {e}", code="preview_failed") from None
    return {
        "object": "data.preview",
        "path": rel,
        "sources": p.stats,
        "what": p.what,
        "tokens_p50": p.p50,
        "tokens_max": p.longest,
        "supervised": p.supervised,
        "dropped": p.dropped,
        "examples": [{"label": label, "spans": runs} for label, runs in p.examples],
    }
