"""What a stage was made from, so a rerun can tell "already made" from "stale", and say why.

A stage's fingerprint is the sha256 of its inputs (`inputs`): the verb and the command's arguments, its fully
resolved config (the sections the verb reads), the content hash of every local file or folder it names (not its
mtime), the run id of every earlier stage it reads, and the camelid version. Each completed run of a stage gets a
fresh run id, so a stage that re-ran makes everything downstream of it stale, and nothing else.

Records: FOLDER/STAGE/stage.json (the stage's own: state, fingerprint, inputs, run id, seconds, metrics) and
FOLDER/lineage.json (the recipe file's hash and every stage's record, for people and `camelid run --status`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import camelid
from camelid.config import find_config, flatten, to_dict
from camelid.recipe.spec import TRAINING, Stage
from camelid.utils import sha256_file, write_json

RECORD = "stage.json"


class Hashes:
    """Content hashes of local files and folders, each computed once per run of the recipe."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def of(self, path: Path) -> str:
        key = str(path.resolve())
        if key not in self.seen:
            if path.is_file():
                self.seen[key] = sha256_file(path)
            else:  # a folder: names and contents of every file under it, in a fixed order
                h = hashlib.sha256()
                for f in sorted(x for x in path.rglob("*") if x.is_file()):
                    h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\0".encode())
                self.seen[key] = h.hexdigest()
        return self.seen[key]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def inputs(stage: Stage, upstream: dict[str, str], hashes: Hashes) -> dict:
    """Everything the stage's output depends on, as flat data: `upstream` maps each stage it reads to its run id."""
    config = flatten(to_dict(stage.cfg, stage.section_verb)) if stage.cfg is not None else {}
    if stage.verb in TRAINING:
        config.pop("train.output_dir", None)  # the stage's own folder, not an input
    made = str(stage.folder.parent)
    files = {}
    for s in _strings(stage.args) + _strings(config):
        name = s.split("@", 1)[0]  # FOLDER@ENTRY data sources read FOLDER
        p = Path(name).expanduser()
        if name and not name.startswith(made) and os.path.exists(p):
            files[name] = hashes.of(p)
    if stage.config:
        files[f"config:{stage.config}"] = hashes.of(find_config(stage.config))
    if stage.launch:
        files[f"launch:{stage.launch}"] = hashes.of(Path(stage.launch))
    return {
        "camelid": camelid.__version__,
        "verb": stage.verb,
        "args": stage.args,
        "config": config,
        "files": files,
        "upstream": {n: upstream[n] for n in stage.needs},
    }


def only_extends(stage: Stage, old: dict, new: dict) -> bool:
    """Whether a training stage's inputs differ only in keys that extend or watch the run (more steps, other eval or
    save cadence: RESUME_FREE), so its checkpoints stay valid and it continues instead of starting over."""
    from camelid.train.resume_rules import classify

    if stage.verb not in TRAINING or any(
        old.get(k) != new[k] for k in ("camelid", "verb", "args", "files", "upstream")
    ):
        return False
    oc, nc = old.get("config", {}), new["config"]
    changed = [k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k)]
    return bool(changed) and all(classify(k, stage.cfg, stage.verb) == "free" for k in changed)


def fingerprint(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def differences(old: dict, new: dict) -> list[str]:
    """Why a stage's inputs changed, in words: `train.lr 0.001 → 0.002`, `file data/x.jsonl changed`, ..."""
    why = []
    if old.get("camelid") != new["camelid"]:
        why.append(f"camelid {old.get('camelid')} → {new['camelid']}")
    if old.get("verb") != new["verb"] or old.get("args") != new["args"]:
        why.append(f"command {old.get('verb')} {old.get('args')} → {new['verb']} {new['args']}")
    oc, nc = old.get("config", {}), new["config"]
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k, "<unset>") != nc.get(k, "<unset>"):
            why.append(f"{k} {_short(oc.get(k, '<unset>'))} → {_short(nc.get(k, '<unset>'))}")
    of, nf = old.get("files", {}), new["files"]
    for k in sorted(set(of) | set(nf)):
        if of.get(k) != nf.get(k):
            why.append(f"{k} {'changed' if k in of and k in nf else 'added' if k in nf else 'no longer read'}")
    ou, nu = old.get("upstream", {}), new["upstream"]
    for k in sorted(set(ou) | set(nu)):
        if ou.get(k) != nu.get(k):
            why.append(f"stage {k} {'re-runs' if nu.get(k) == PENDING else 'was re-run'}")
    return why or ["inputs changed"]


PENDING = "pending"  # the run id of a stage that will run now: nothing downstream of it can be current


def _short(v) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read_record(stage: Stage) -> dict | None:
    try:
        return json.loads((stage.folder / RECORD).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(stage: Stage, record: dict) -> None:
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_json(stage.folder / RECORD, record)


def headline(stage: Stage) -> dict:
    """A stage's key numbers, from what the verb wrote: final train/eval loss, benchmark scores, perplexity."""
    out: dict = {}
    metrics = stage.folder / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
        for key in ("loss", "eval_loss", "reward", "score", "kl", "eval_accuracy"):
            seen = [r[key] for r in rows if key in r]
            if seen:
                out[key] = round(seen[-1], 4)
                if key == "eval_loss" and len(seen) > 1:
                    out["eval_loss_first"] = round(seen[0], 4)
    for f in sorted(stage.folder.rglob("*.json")) if stage.verb == "eval" else []:
        try:
            result = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        for task, scores in (result.get("tasks") or {}).items():
            for k in ("acc", "acc_norm"):
                if k in scores:
                    out[f"{f.stem}:{task}.{k}"] = round(scores[k], 4)
        for name, ppl in (result.get("perplexity") or {}).items():
            value = ppl.get("ppl") if isinstance(ppl, dict) else ppl
            if isinstance(value, int | float):
                out[f"{f.stem}:ppl.{name}"] = round(value, 3)
            if isinstance(ppl, dict) and "bits_per_char" in ppl:
                out[f"{f.stem}:bits_per_char.{name}"] = round(ppl["bits_per_char"], 4)
    report = stage.folder / "tok_report.json"
    if stage.verb == "tok extend" and report.is_file():
        for name, r in json.loads(report.read_text(encoding="utf-8")).get("tokens_per_char", {}).items():
            out[f"tokens_per_char.{name}"] = f"{r['tokens_per_char_before']} → {r['tokens_per_char_after']}"
    return out


def write_lineage(recipe, records: dict[str, dict | None]) -> None:
    recipe.folder.mkdir(parents=True, exist_ok=True)
    write_json(
        recipe.folder / "lineage.json",
        {
            "recipe": str(recipe.path),
            "recipe_sha256": hashlib.sha256(recipe.text.encode()).hexdigest(),
            "camelid": camelid.__version__,
            "stages": {
                name: {"verb": s.verb, "output": str(s.folder), "reads": s.needs}
                | (records.get(name) or {"state": "not run"})
                for name, s in recipe.stages.items()
            },
        },
    )
