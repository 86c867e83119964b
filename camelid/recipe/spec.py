"""A recipe file, read and checked whole before any stage runs.

    # what it makes, how long it takes
    folder: runs/chat_lora          # where every stage's output goes (default: runs/<file name>)
    set:                            # keys for every stage whose verb reads that section
      model.name: smollm2-135m-instruct
    stages:                         # run in this order
      sft:                          # the stage's name; its output folder is FOLDER/sft
        verb: sft                   # pt sft rm dpo ppo eval export clean "tok extend" "kb add" serve
        config: sft_lora            # optional: a config file, or a shipped config's name
        set: {train.max_steps: 30}  # optional: keys for this stage, after the config file
        launch: zero3               # optional (training verbs): an accelerate config, run under `accelerate launch`
      eval:
        verb: eval
        args: ["${sft}"]            # plain arguments; ${NAME} is an earlier stage's output folder

`${NAME}` may stand anywhere in `args` and `set` values, also inside a longer string (`${tok}/tokenizer.json`).
`${recipe_dir}` is the folder the recipe file is in, for files shipped beside it (prompts, exams).
Every error (an unknown verb or key, a reference to a stage that is unknown or comes later, a config key that
fails validation in the fifth stage) is reported before the first stage runs, naming the stage and the key.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from camelid import hub
from camelid.config import SECTIONS, Config, ConfigError, find_config, load_config, validate
from camelid.utils import CamelidError

SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# verb → (argv words, what the runner adds so the output lands in the stage's folder)
VERBS: dict[str, tuple[list[str], str]] = {
    "pt": (["pt"], "output_dir"),
    "sft": (["sft"], "output_dir"),
    "rm": (["rm"], "output_dir"),
    "dpo": (["dpo"], "output_dir"),
    "ppo": (["ppo"], "output_dir"),
    "eval": (["eval"], "--out"),
    "export": (["export"], "last_arg"),
    "clean": (["clean"], "--out"),
    "tok extend": (["tok", "extend"], "--out"),
    "tok train": (["tok", "train"], "--out"),
    "kb add": (["kb", "add"], "first_arg"),
    "serve": (["serve"], ""),
}
TRAINING = ("pt", "sft", "rm", "dpo", "ppo")
STAGE_KEYS = ("verb", "config", "args", "set", "launch")
_REF = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][\w-]*")


@dataclass
class Stage:
    name: str
    verb: str
    folder: Path  # its output
    config: str | None = None
    args: list[str] = field(default_factory=list)
    keys: dict = field(default_factory=dict)  # recipe-wide `set` it reads, then its own
    launch: str | None = None
    needs: list[str] = field(default_factory=list)  # the earlier stages it refers to
    cfg: Config | None = None  # loaded and validated, for verbs that read config

    @property
    def section_verb(self) -> str:
        return self.verb.split()[0]

    def command(self) -> list[str]:
        """The `camelid ...` arguments that run this stage (the runner puts python -m or accelerate in front)."""
        words, out = VERBS[self.verb]
        args = list(self.args)
        if out == "first_arg":
            args = [str(self.folder), *args]
        elif out == "last_arg":
            args = [*args, str(self.folder)]
        argv = [*words, *([self.config] if self.config and self.section_verb in TRAINING else []), *args]
        if self.config and self.section_verb not in TRAINING:
            argv.append(str(find_config(self.config)))
        if out == "--out":
            argv += ["--out", str(self.folder)]
        if out == "output_dir":
            argv.append(f"train.output_dir={self.folder}")
        argv += [f"{k}={_cli_value(v)}" for k, v in self.keys.items()]
        return argv


@dataclass
class Recipe:
    path: Path
    folder: Path
    stages: dict[str, Stage]
    text: str  # the file as read: its hash is part of lineage.json

    def stage(self, name: str) -> Stage:
        if name not in self.stages:
            raise CamelidError(f"no stage '{name}' in {self.path}{_closest(name, self.stages)}")
        return self.stages[name]

    def downstream(self, name: str) -> list[str]:
        """`name` and every later stage that reads it, directly or through others, in recipe order."""
        hit = {name}
        for s in self.stages.values():
            if any(n in hit for n in s.needs):
                hit.add(s.name)
        return [n for n in self.stages if n in hit]


def _cli_value(v) -> str:
    """A YAML value as a command-line override reads it back (JSON is YAML; a plain string stays as written)."""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _closest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else f" (stages: {', '.join(names)})" if names else ""


def find_recipe(path: str) -> Path:
    """A recipe file by path, or a shipped one by name (`chat_lora`, `recipes/chat_lora.yaml`)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    if (SHIPPED_RECIPES / name).is_file():
        return SHIPPED_RECIPES / name
    shipped = sorted(x.stem for x in SHIPPED_RECIPES.glob("*.yaml"))
    close = difflib.get_close_matches(p.stem, shipped, n=3)
    raise CamelidError(f"recipe not found: {p} (shipped recipes: {', '.join(close or shipped)})")


def _split_overrides(overrides: list[str], names: list[str]) -> tuple[dict, dict[str, dict]]:
    """`STAGE.section.key=value` is for one stage, `section.key=value` for all (values as on the command line)."""
    everywhere: dict = {}
    per_stage: dict[str, dict] = {n: {} for n in names}
    for item in overrides:
        key, _, raw = item.partition("=")
        parts = key.split(".")
        if parts[0] in per_stage and (len(parts) >= 3 or parts[1:] == ["method"]):
            per_stage[parts[0]][".".join(parts[1:])] = raw
        else:
            everywhere[key] = raw
    return everywhere, per_stage


def _section(key: str) -> str:
    return "method" if key == "method" else key.split(".")[0]


def _substitute(value, stage: str, earlier: dict[str, Path], later: list[str], needs: list[str], here: Path):
    """Replace ${NAME} by stage NAME's output folder, recording NAME in `needs`, and ${recipe_dir} by the folder the
    recipe file is in (for files shipped beside it)."""
    if isinstance(value, list):
        return [_substitute(v, stage, earlier, later, needs, here) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, stage, earlier, later, needs, here) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        ref = m.group(1).strip()
        if ref == "recipe_dir":
            return str(here)
        ref = ref.removeprefix("stages.").removesuffix(".output")  # ${stages.sft.output} reads the same
        if ref == stage:
            raise CamelidError(f"stage '{stage}': '${{{ref}}}' refers to the stage itself (a cycle)")
        if ref in later:
            raise CamelidError(
                f"stage '{stage}': '${{{ref}}}' refers to a later stage; a stage reads only stages above it"
            )
        if ref not in earlier:
            raise CamelidError(f"stage '{stage}': '${{{ref}}}' names no stage{_closest(ref, earlier)}")
        if ref not in needs:
            needs.append(ref)
        return str(earlier[ref])

    return _REF.sub(one, value)


def load_recipe(path: str, overrides: list[str] | None = None) -> Recipe:
    p = find_recipe(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise CamelidError(f"{p}: not valid YAML: {e}") from e
    where = str(p)
    if not isinstance(data, dict) or set(data) - {"folder", "set", "stages"}:
        extra = sorted(set(data) - {"folder", "set", "stages"}) if isinstance(data, dict) else []
        raise CamelidError(
            f"{where}: a recipe has keys folder, set and stages" + (f"; unknown: {extra}" if extra else "")
        )
    stages_in = data.get("stages")
    if not isinstance(stages_in, dict) or not stages_in:
        raise CamelidError(f"{where}: 'stages' must map stage names to stages (verb, config, args, set)")
    names = list(stages_in)
    folder = Path(data.get("folder") or f"runs/{p.stem}")
    common = dict(data.get("set") or {})
    everywhere, per_stage = _split_overrides(overrides or [], names)
    common |= everywhere
    stages: dict[str, Stage] = {}
    for i, name in enumerate(names):
        stages[name] = _stage(name, stages_in[name], i, names, folder, common, per_stage[name], stages, p)
    return Recipe(p, folder, stages, text)


def _stage(name, spec, i, names, folder, common, cli_keys, earlier_stages, recipe: Path) -> Stage:
    at = f"{recipe}: stage '{name}'"
    if not _NAME.fullmatch(str(name)):
        raise CamelidError(f"{at}: a stage name is letters, digits, '_' and '-', starting with a letter")
    if name == "recipe_dir":
        raise CamelidError(f"{at}: '${{recipe_dir}}' means the recipe file's folder; name the stage otherwise")
    if not isinstance(spec, dict):
        raise CamelidError(f"{at}: a stage is a mapping with verb, and optionally config, args, set, launch")
    unknown = set(spec) - set(STAGE_KEYS)
    if unknown:
        raise CamelidError(f"{at}: unknown key(s) {sorted(unknown)}; a stage has {', '.join(STAGE_KEYS)}")
    verb = spec.get("verb")
    if verb not in VERBS:
        close = difflib.get_close_matches(str(verb), list(VERBS), n=3)
        raise CamelidError(
            f"{at}: verb '{verb}' is not one a recipe runs"
            + (f" (closest: {', '.join(close)})" if close else f" ({', '.join(VERBS)})")
        )
    if verb == "serve" and i != len(names) - 1:
        raise CamelidError(f"{at}: serve runs until stopped, so it can only be the last stage")
    args = spec.get("args") or []
    if not isinstance(args, list):
        raise CamelidError(f"{at}: args must be a list")
    own = spec.get("set") or {}
    if not isinstance(own, dict):
        raise CamelidError(f"{at}: set must map section.key to a value")
    earlier = {n: s.folder for n, s in earlier_stages.items()}
    later, needs = names[i + 1 :], []
    stage = Stage(name, verb, folder / name, spec.get("config"), [], {}, spec.get("launch"), needs)
    stage.args = [str(a) for a in _substitute(args, name, earlier, later, needs, recipe.parent)]
    read = SECTIONS.get(stage.section_verb, ())
    for key in own | cli_keys:
        if _section(key) not in read:
            raise CamelidError(
                f"{at}: key '{key}': camelid {verb} does not read {_section(key)}.*"
                + (f" (it reads {', '.join(read)})" if read else " (it reads no config keys)")
            )
    keys = {k: v for k, v in common.items() if _section(k) in read} | own | cli_keys
    stage.keys = _substitute(keys, name, earlier, later, needs, recipe.parent)
    if stage.launch:
        if verb not in TRAINING:
            raise CamelidError(f"{at}: launch applies to training verbs ({', '.join(TRAINING)}), not {verb}")
        try:
            stage.launch = str(find_config(stage.launch if "/" in stage.launch else f"accelerate/{stage.launch}"))
        except ConfigError as e:
            raise CamelidError(f"{at}: launch: {e}") from e
    if read:
        try:
            cfg = load_config(stage.config, [f"{k}={_cli_value(v)}" for k, v in stage.keys.items()])
            plain = [a for a in stage.args if not a.startswith("-")]
            if verb == "clean":  # as `camelid clean` and `camelid tok train` read their plain arguments
                cfg.clean.inputs += plain
            elif verb == "tok train":
                cfg.tok.train += plain
            stage.cfg = validate(cfg, stage.section_verb)
        except ConfigError as e:
            raise CamelidError(f"{at}: {e}") from e
        _check_inputs(stage, at)
    return stage


def _check_inputs(stage: Stage, at: str) -> None:
    """The models, data and files a stage names exist, unless an earlier stage makes them (a path under the recipe's
    folder): a typo in the last stage fails before the first one runs."""
    made = str(stage.folder.parent)

    def check(kind: str, value: str) -> None:
        if not value or value.startswith(made):
            return
        if kind == "data":
            hub.check_data_source(value)
        elif kind == "model":
            hub.resolve_model(value, pull_catalog=False)
        else:
            hub.local_file(value, "path", pull_catalog=False)

    cfg, verb = stage.cfg, stage.verb
    try:
        if verb in TRAINING:
            for spec in cfg.data.train + cfg.data.eval:
                check("data", spec)
            check("model", cfg.model.name)
            if verb == "ppo":
                check("model", cfg.ppo.reward_model)
        plain = [a for a in stage.args if not a.startswith("-")]
        if verb in ("eval", "serve", "tok extend") and plain:
            check("model", plain[0])
        for spec in (
            cfg.clean.inputs if verb == "clean" else cfg.tok.train + cfg.tok.eval if verb.startswith("tok") else []
        ):
            check("data", spec)
        if verb in ("export", "kb add"):
            for a in plain:
                check("path", a)
        if verb in ("eval", "pt", "sft"):
            for f in cfg.eval.perplexity + ([cfg.eval.samples] if cfg.eval.samples else []):
                if not f.startswith(made):
                    hub.local_file(f, "eval files", pull_catalog=False)
    except CamelidError as e:
        raise CamelidError(f"{at}: {e}") from e
