"""The `camelid` command: a thin table of verbs (VERBS, below) over `main(cfg)` functions.

`camelid` alone lists the verbs; `camelid VERB --help` prints one verb's usage and every config key it reads, with
type, default and description; `camelid config VERB` prints those keys as a commented YAML file to start from.

Every verb reads its arguments by one convention (`parse`):

    camelid VERB [ARG ...] [--flag [VALUE] ...] [CONFIG.yaml] [section.key=value ...]

- `-h` / `--help` anywhere prints the verb's help and runs nothing (no model called "--help" gets loaded).
- `section.key=value` (a dotted key, or `method=...`) overrides the config, after the file, in order, with YAML
  values (`lora.target=[q_proj,v_proj]`). A key of a section the verb does not read is warned about.
- CONFIG: for pt, sft, rm, dpo, ppo and data, the first plain argument (a file, or a shipped config's name such as
  `sft_lora`); for the other verbs that read config, any argument ending in .yaml / .yml. At most one.
- `--flag` or `--flag VALUE` (also `--flag=VALUE`): only the flags the verb's usage lists; anything else starting
  with `-` is an error naming it.
- Everything else is a plain argument, in order. After `--` every argument is plain, e.g. a question that starts
  with "-" or contains "=" (`camelid kb ask handbook -- "-x=1?" model.name=...` is all plain after `--`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import yaml

from camelid.allocator import use_fast_allocator
from camelid.config import SECTIONS, Config, field_docs, load_config, type_name, validate
from camelid.utils import CamelidError, log, setup_logging


@dataclass
class Args:
    """One verb's command line, parsed (see the module docstring)."""

    verb: str
    plain: list[str] = field(default_factory=list)
    flags: dict[str, str | bool] = field(default_factory=dict)
    config: str | None = None
    overrides: list[str] = field(default_factory=list)

    def load(self) -> Config:
        return load_config(self.config, self.overrides)

    def usage_error(self) -> CamelidError:
        return CamelidError(f"usage: {VERBS[self.verb].usage}")


@dataclass(frozen=True)
class Verb:
    run: Callable[[Args], None]
    usage: str  # every form of the command, after "usage: "
    about: str  # one line, in `camelid`'s listing
    flags: dict[str, tuple[str, str]] = field(default_factory=dict)  # --flag: (VALUE's name or "" for a switch, help)
    config: Literal["first", "yaml", "none"] = "yaml"  # where CONFIG sits (see the module docstring)


# A dotted key then `=`: `train.lr=1e-4`, `method=full`. A plain argument may hold `=` too, but not after such a key.
_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)*=")


def parse(verb: str, argv: list[str]) -> Args:
    """Split a verb's arguments by the convention in the module docstring."""
    spec, a = VERBS[verb], Args(verb)
    literal: list[str] = []  # plain arguments after `--`: never a CONFIG
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if arg == "--":
            literal = argv[i:]
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg.partition("=")
            if name not in spec.flags:
                raise CamelidError(f"unknown option '{name}'\nusage: {spec.usage}")
            if not spec.flags[name][0]:
                if eq:
                    raise CamelidError(f"{name} takes no value\nusage: {spec.usage}")
                a.flags[name] = True
                continue
            if not eq:
                if i >= len(argv):
                    raise CamelidError(f"{name} needs a value\nusage: {spec.usage}")
                value, i = argv[i], i + 1
            a.flags[name] = value
        elif _OVERRIDE.match(arg):
            a.overrides.append(arg)
        else:
            a.plain.append(arg)
    if spec.config == "first":
        if len(a.plain) > 1:
            raise CamelidError(f"one CONFIG at most, got {', '.join(a.plain)}\nusage: {spec.usage}")
        a.config = a.plain.pop() if a.plain else None
    elif spec.config == "yaml":
        files = [p for p in a.plain if p.endswith((".yaml", ".yml"))]
        if len(files) > 1:
            raise CamelidError(f"one CONFIG.yaml at most, got {', '.join(files)}\nusage: {spec.usage}")
        if files:
            a.config = files[0]
            a.plain.remove(files[0])
    a.plain += literal
    if verb in SECTIONS:  # `camelid config VERB` checks against VERB's sections instead
        _check_override_sections(verb, a.overrides)
    return a


def _check_override_sections(verb: str, overrides: list[str]) -> None:
    """A verb that reads no config refuses overrides; one that does warns about a section it would ignore."""
    read = SECTIONS.get(verb, ())
    if overrides and not read:
        raise CamelidError(
            f"camelid {verb} reads no config keys, so '{overrides[0]}' means nothing to it\nusage: {VERBS[verb].usage}"
        )
    for item in overrides:
        section = item.split("=", 1)[0].split(".")[0]
        if section not in read and section in {f.name for f in dataclasses.fields(Config)}:  # unknown: load fails
            log.warning(
                f"camelid {verb} does not read {section}.*: '{item}' changes nothing (it reads {', '.join(read)})"
            )


# ---------------------------------------------------------------------------------------------
# help, generated from the config dataclasses


def key_rows(verb: str) -> list[tuple[str, list[tuple[str, str, str, object]]]]:
    """(section, [(key, type, description, default), ...]) for each section `verb` reads; the top-level `method`
    comes as section ''."""
    defaults, out = Config(), []
    for name in SECTIONS[verb]:
        owner, keys = (Config, ["method"]) if name == "method" else (type(getattr(defaults, name)), None)
        obj = defaults if name == "method" else getattr(defaults, name)
        docs, types = field_docs(owner), typing.get_type_hints(owner)
        keys = keys or [f.name for f in dataclasses.fields(owner)]
        out.append(
            (
                "" if name == "method" else name,
                [(k, type_name(types[k]), docs.get(k, ""), getattr(obj, k)) for k in keys],
            )
        )
    return out


def _yaml_value(value) -> str:
    """One value as typed on the command line and in YAML, as load_config reads it back: true, [a, b], '', -.inf."""
    if isinstance(value, str) and not value.isprintable():  # a newline, a tab: one line, escaped (JSON is YAML)
        return json.dumps(value, ensure_ascii=False)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.removesuffix("...\n").strip()


def help_text(verb: str) -> str:
    spec = VERBS[verb]
    lines = [f"usage: {spec.usage}", "", spec.about]
    if spec.flags:
        lines += ["", "options:"] + [f"  {f + (' ' + m if m else ''):14}  {h}" for f, (m, h) in spec.flags.items()]
    if verb not in SECTIONS:  # `config`: VERB's keys are in `camelid VERB --help`
        return "\n".join(lines)
    groups = [
        [(f"{section}.{k}" if section else k, t, d, _yaml_value(v)) for k, t, d, v in rows]
        for section, rows in key_rows(verb)
    ]
    if not groups:
        return "\n".join(lines + ["", f"camelid {verb} reads no config keys."])
    lines += [
        "",
        "config keys (section.key=default  type: what it does): a CONFIG.yaml sets them, section.key=value",
        f"overrides them, `camelid config {verb}` writes them all to a file to start from",
    ]
    width = min(44, max(len(f"{k}={v}") for group in groups for k, _, _, v in group))
    for group in groups:
        lines.append("")
        lines += [f"  {k + '=' + v:{width}}  {t}" + (f": {d}" if d else "") for k, t, d, v in group]
    return "\n".join(lines)


def config_yaml(verb: str, cfg: Config | None = None) -> str:
    """The keys `verb` reads as a YAML file with a comment per key (type and description) that load_config accepts
    back; values from `cfg`, defaults otherwise."""
    cfg = cfg or Config()
    out = [f"# camelid {verb}: every config key it reads (`camelid {verb} --help` says the same)"]
    for section, rows in key_rows(verb):
        owner = getattr(cfg, section) if section else cfg
        pairs = [(f"{'  ' if section else ''}{k}: {_yaml_value(getattr(owner, k))}", t, d) for k, t, d, _ in rows]
        width = max(len(kv) for kv, _, _ in pairs)
        out += ["", f"{section}:"] if section else [""]
        out += [f"{kv:{width}}  # {t}" + (f"; {d}" if d else "") for kv, t, d in pairs]
    if not key_rows(verb):
        out.append(f"# (camelid {verb} reads no config keys)")
    return "\n".join(out) + "\n"


def cmd_train(stage: str, a: Args) -> None:
    cfg = a.load()
    if cfg.eval.after_training and cfg.eval.tasks:
        from camelid.eval.tasks import task_specs

        task_specs(cfg.eval.tasks)  # two tasks reported under one name: refused now, not after training
    try:
        importlib.import_module(f"camelid.train.{stage}").main(cfg)
    except BaseException as error:
        from camelid.train.run import failed

        failed(cfg, error)
        raise
    e = cfg.eval
    if not e.after_training:
        return
    from camelid.eval.run import main as evaluate

    if stage == "rm" and e.preference:  # a reward model has no causal base to compare with: the run only
        evaluate(cfg, cfg.train.output_dir)
    elif e.tasks or e.perplexity or e.samples:
        # the base first, then the run: RUN/eval/before.json and after.json, which `camelid report` compares
        evaluate(cfg, cfg.train.output_dir, before=True)
        evaluate(cfg, cfg.train.output_dir)


def cmd_data(a: Args) -> None:
    from camelid import hub
    from camelid.data.preview import preview
    from camelid.data.templates import marked
    from camelid.model import load_tokenizer

    cfg = validate(a.load(), "data")
    for spec in cfg.data.train:  # a typo fails here, with the closest names, before the tokenizer loads
        hub.check_data_source(spec)
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    p = preview(tok, cfg.data.train, cfg.data)
    for st in p.stats:
        cut = {k.replace("_", " "): n for k, n in st.get("trimmed", {}).items() if n}
        print(
            f"{st['source']}: read {st['read']}, kept {st['kept']}, skipped {st['skipped']} {st['reasons'] or ''}"
            + (f"; dropped from cut chats: {cut}" if cut else "")
        )
    print(
        f"{p.what}; tokens p50={p.p50} max={p.longest}; "
        f"{p.supervised:.0%} of tokens supervised; dropped: {p.dropped or 'none'}"
    )
    for label, runs in p.examples:
        print("-" * 60 + (f" {label}" if label else "") + "\n" + marked(runs) + "\n" + "-" * 60)
    print("[[...]] marks the tokens the loss is computed on")


def cmd_export(a: Args) -> None:
    from camelid.model import is_reward_model, merge_adapter
    from camelid.serve.vllm import vllm_command

    if len(a.plain) != 2:
        raise a.usage_error()
    out = merge_adapter(a.plain[0], a.plain[1], a.flags.get("--dtype", "auto"))
    if is_reward_model(out):
        print(f"merged reward model written to {out} (loads with AutoModelForSequenceClassification.from_pretrained)")
        return
    print(
        f"merged model written to {out} (loads with AutoModelForCausalLM.from_pretrained)\nserve it with vLLM: "
        f"{vllm_command(out)}"
    )


def cmd_eval(a: Args) -> None:
    from camelid.eval.run import main

    if len(a.plain) != 1:
        raise a.usage_error()
    main(validate(a.load(), "eval"), a.plain[0], before=bool(a.flags.get("--before")), out=a.flags.get("--out"))


def cmd_report(a: Args) -> None:
    from camelid.eval.report import main

    if not a.plain:
        raise a.usage_error()
    main(a.plain, a.flags.get("--out"))


def cmd_chat(a: Args) -> None:
    from camelid.serve.chat import main

    if len(a.plain) != 1:
        raise a.usage_error()
    main(validate(a.load(), "chat"), a.plain[0])


def cmd_serve(a: Args) -> None:
    from camelid.serve.server import main

    if len(a.plain) != 1:
        raise a.usage_error()
    main(validate(a.load(), "serve"), a.plain[0])


def cmd_vllm(a: Args) -> None:
    from camelid.serve.vllm import vllm_command

    if len(a.plain) not in (1, 2):
        raise a.usage_error()
    print(vllm_command(a.plain[0], a.plain[1] if len(a.plain) > 1 else None))


def cmd_pull(a: Args) -> None:
    from camelid import hub

    if not a.plain or a.flags.get("--list"):
        print("\n".join(hub.catalog_listing()))
        return
    for name in a.plain:
        print(hub.pull(name))


def cmd_tok(a: Args) -> None:
    from camelid.train import tok

    if not a.plain or a.plain[0] not in ("train", "extend", "report"):
        raise a.usage_error()
    sub, positional, out, cfg = a.plain[0], a.plain[1:], a.flags.get("--out"), a.load()
    if sub == "train" and out:
        cfg.tok.train += positional
        tok.train(cfg, out)
    elif sub == "extend" and out and 1 <= len(positional) <= 2:
        tok.extend_main(cfg, positional[0], positional[1] if len(positional) == 2 else None, out)
    elif sub == "report" and positional:
        tok.report_main(cfg, positional)
    else:
        raise a.usage_error()


def cmd_clean(a: Args) -> None:
    from camelid.data.clean import main
    from camelid.eval.contamination import benchmark_items

    cfg = a.load()
    cfg.clean.inputs += a.plain
    cfg.clean.out = a.flags.get("--out") or cfg.clean.out
    if not cfg.clean.inputs:
        raise a.usage_error()
    # The benchmark questions are loaded up here: camelid.data may not import camelid.eval.
    main(cfg, benchmark_items(cfg.clean.decontaminate) if cfg.clean.decontaminate else None)


def cmd_kb(a: Args) -> None:
    from camelid.rag.store import KnowledgeBase, kb_folder, kb_root, list_kbs

    if not a.plain or a.plain[0] not in ("add", "rm", "ls", "search", "ask", "distill"):
        raise a.usage_error()
    sub, rest = a.plain[0], a.plain[1:]
    if sub == "distill":
        _distill(a, rest)
        return
    cfg = validate(a.load(), "kb")
    if sub == "ls" and not rest:
        names = list_kbs(cfg.rag)
        if not names:
            print(f"no knowledge bases under {kb_root(cfg.rag)}")
        for name in names:
            kb = KnowledgeBase.open(kb_folder(name, cfg.rag))
            docs = kb.documents()
            print(f"{name:30} {len(docs):6} documents {sum(d['chunks'] for d in docs):8} chunks  {kb.encoder_line()}")
            kb.close()
        return
    if not rest or (sub in ("add", "rm") and len(rest) < 2) or (sub in ("search", "ask") and len(rest) != 2):
        raise a.usage_error()
    folder = kb_folder(rest[0], cfg.rag)
    if sub == "add":
        from pathlib import Path

        from camelid.hub import catalog_file

        # a catalog text (peoples_daily_1998_heldout) by name, when no local path has that name
        files = [f if Path(f).exists() else str(catalog_file(f) or f) for f in rest[1:]]
        report = KnowledgeBase.open(folder, create=cfg.rag).add(files, cfg.rag)
        for what in ("added", "replaced", "unchanged"):
            names = getattr(report, what)
            if names:
                print(f"{what} {len(names)}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        print(f"{report.chunks} new chunks in {report.seconds:.1f}s; knowledge base at {folder}")
        if report.failed:
            raise CamelidError(f"{len(report.failed)} file(s) not added: " + "; ".join(report.failed.values()))
        return
    kb = KnowledgeBase.open(folder)
    if sub == "rm":
        print("\n".join(f"removed {n}" for n in kb.remove(rest[1:])))
    elif sub == "ls":
        print(kb.encoder_line())
        for d in kb.documents():
            print(f"{d['name']:50} {d['chunks']:6} chunks {d['bytes']:10,} bytes  sha256 {d['sha256'][:12]}")
    elif sub == "search":
        from camelid.rag.prompt import citations
        from camelid.rag.retrieve import search

        hits = citations(search(kb, rest[1], cfg.rag))
        for c in hits:
            sim = "" if c["similarity"] is None else f" cos={c['similarity']:.3f}"
            print(
                f"[{c['index']}] {c['label']}  (rrf={c['score']:.4f}{sim} terms={c['term_share']:.2f})\n"
                f"    {c['text'][:300]}"
            )
        if not hits:
            print("nothing relevant found")
    else:
        from camelid.rag.answer import ask_main

        result = ask_main(cfg, rest[0], rest[1])
        print(result["answer"])
        for c in result["citations"]:
            print(f"  [{c['index']}]{' *' if c['cited'] else ''} {c['label']}")


def _distill(a: Args, rest: list[str]) -> None:
    from camelid.hub import resolve_model
    from camelid.static_encoder import distill

    if len(rest) != 2:
        raise a.usage_error()
    teacher, out = rest
    record = distill(resolve_model(teacher, kind="encoder"), out)
    print(
        f"{record['vocabulary']:,} token vectors ({record['dims']}-d, {record['probabilities']} weights) in "
        f"{record['seconds']} s: {out}\n"
        f"use it with rag.embedding_model={out} when creating a knowledge base. Its cosines are not the teacher's: "
        f"set rag.min_similarity from your own questions (benchmarks/rag_retrieval.py "
        f"--encoder {out} prints a calibration)"
    )


def cmd_quickstart(a: Args) -> None:
    from camelid.quickstart import main

    if a.plain:
        raise a.usage_error()
    main(a.overrides)


def cmd_run(a: Args) -> None:
    from camelid.recipe import describe, load_recipe, plan, run, status_table

    if not a.config or a.plain:
        raise a.usage_error()
    recipe = load_recipe(a.config, a.overrides)  # every stage checked before the first one runs
    if a.flags.get("--status"):
        print(status_table(recipe))
        return
    forced = [n for n in str(a.flags.get("--force", "")).split(",") if n]
    steps = plan(recipe, forced, a.flags.get("--from"), a.flags.get("--only"))
    print(describe(recipe, steps))
    if not a.flags.get("--dry-run"):
        run(recipe, steps)


def cmd_config(a: Args) -> None:
    verbs = [v for v in VERBS if v in SECTIONS]
    if len(a.plain) != 1 or a.plain[0] not in verbs:
        raise CamelidError(f"usage: {VERBS['config'].usage}\nVERB: one of {', '.join(verbs)}")
    _check_override_sections(a.plain[0], a.overrides)
    print(config_yaml(a.plain[0], a.load()), end="")


_TRAIN_USAGE = "camelid {} [CONFIG] [section.key=value ...]"
_OUT = {"--out": ("DIR", "where the output goes")}
VERBS: dict[str, Verb] = {
    "pt": Verb(
        lambda a: cmd_train("pt", a), _TRAIN_USAGE.format("pt"), "continued pretraining on plain text", config="first"
    ),
    "sft": Verb(
        lambda a: cmd_train("sft", a),
        _TRAIN_USAGE.format("sft"),
        "supervised fine-tuning on chats, the loss on the assistant's turns",
        config="first",
    ),
    "rm": Verb(
        lambda a: cmd_train("rm", a), _TRAIN_USAGE.format("rm"), "a reward model from preference pairs", config="first"
    ),
    "dpo": Verb(
        lambda a: cmd_train("dpo", a),
        _TRAIN_USAGE.format("dpo"),
        "DPO / IPO / cDPO on preference pairs",
        config="first",
    ),
    "ppo": Verb(
        lambda a: cmd_train("ppo", a), _TRAIN_USAGE.format("ppo"), "PPO (RLHF) against a reward model", config="first"
    ),
    "data": Verb(
        cmd_data,
        _TRAIN_USAGE.format("data"),
        "show rendered examples with their loss mask, and counts: what a training stage would see",
        config="first",
    ),
    "export": Verb(
        cmd_export,
        "camelid export RUN_DIR OUT_DIR [--dtype auto|float32|bfloat16|float16]",
        "merge a LoRA run into a plain HF model folder (transformers and vLLM load it)",
        {"--dtype": ("DTYPE", "dtype of the merged weights; default auto (the base's own)")},
        config="none",
    ),
    "eval": Verb(
        cmd_eval,
        "camelid eval MODEL_OR_RUN [--before] [--out DIR] [CONFIG.yaml] [eval.tasks=[mmlu] eval.limit=200 ...]",
        "benchmarks, perplexity, samples",
        {
            "--before": ("", "evaluate the run's base model (RUN/eval/before.json)"),
            "--out": ("DIR", "where results go; default RUN/eval, or eval-MODEL/eval"),
        },
    ),
    "report": Verb(
        cmd_report,
        "camelid report RUN [RUN ...] [--out DIR]",
        "an offline HTML page: loss curves, scores before/after, samples side by side",
        {"--out": ("DIR", "default: the first RUN's report/")},
        config="none",
    ),
    "chat": Verb(
        cmd_chat,
        "camelid chat MODEL_OR_RUN [CONFIG.yaml] [chat.temperature=0.7 ...]",
        "chat in the terminal (/reset clears the history, /exit leaves)",
    ),
    "serve": Verb(
        cmd_serve,
        "camelid serve MODEL_OR_RUN [CONFIG.yaml] [serve.port=8000 engine.max_running=64 ...]",
        "an OpenAI-compatible API for many users (127.0.0.1:8000 unless serve.host / serve.port)",
    ),
    "vllm": Verb(
        cmd_vllm,
        "camelid vllm RUN_OR_MODEL [SERVED_NAME]",
        "check vLLM can load it and print the exact `vllm serve` command",
        config="none",
    ),
    "pull": Verb(
        cmd_pull,
        "camelid pull NAME... | --list",
        "fetch a catalog model or dataset for offline use",
        {"--list": ("", "list the catalog")},
        config="none",
    ),
    "tok": Verb(
        cmd_tok,
        "camelid tok train CORPUS... --out DIR [tok.kind=spm_bpe tok.vocab_size=20000 ...]\n"
        "       camelid tok extend BASE [DOMAIN_TOKENIZER] --out DIR [tok.train=[CORPUS] tok.eval=[HELD_OUT] ...]\n"
        "       camelid tok report TOKENIZER... [tok.eval=[TEXT ...]]",
        "train a tokenizer; extend a model's vocabulary (tokenizer + resized embeddings); compare tokenizers",
        _OUT,
    ),
    "clean": Verb(
        cmd_clean,
        "camelid clean [CONFIG.yaml] INPUT... [--out DIR] [clean.key=value ...]",
        "clean a corpus: normalize, dedup, quality filters, decontaminate, mask PII",
        _OUT,
    ),
    "kb": Verb(
        cmd_kb,
        "camelid kb add KB PATH... [rag.embedding_model=... rag.chunk_tokens=200 ...]\n"
        "       camelid kb rm KB NAME...      remove documents (a folder name removes all under it)\n"
        "       camelid kb ls [KB]            knowledge bases, or the documents of one\n"
        "       camelid kb search KB QUESTION [rag.retriever=bm25|dense|hybrid rag.top_k=5]\n"
        "       camelid kb ask KB QUESTION model.name=MODEL_OR_RUN [rag.*]\n"
        "       camelid kb distill ENCODER OUT   a static encoder (a vector per token: ~20x faster) from ENCODER\n"
        "(KB: a name under rag.root, default $CAMELID_HOME/kb, or a folder; a CONFIG.yaml may come among the "
        "arguments, e.g. configs/kb_hybrid.yaml)",
        "knowledge bases: ingest documents, retrieve, answer with citations",
    ),
    "quickstart": Verb(
        cmd_quickstart,
        "camelid quickstart [section.key=value ...]",
        "real LoRA fine-tuning of SmolLM2 on bilingual data, on CPU (overrides change its "
        "recipe, configs/quickstart.yaml)",
        config="none",
    ),
    "run": Verb(
        cmd_run,
        "camelid run RECIPE [--dry-run | --status] [--from STAGE | --only STAGE] [--force STAGE[,STAGE]] "
        "[section.key=value | STAGE.section.key=value ...]",
        "run a recipe: stages in order with lineage, skipping what is already made and resuming what was cut",
        {
            "--dry-run": ("", "print the plan (each stage: run, skip or resume, and why) and stop"),
            "--status": ("", "a table of the stages: state, wall time, headline metrics"),
            "--from": ("STAGE", "run STAGE and every stage after it again"),
            "--only": ("STAGE", "run STAGE alone (the stages it reads must have completed)"),
            "--force": ("STAGE", "run STAGE again (and so what reads it), even if its output is current"),
        },
        config="first",
    ),
    "config": Verb(
        cmd_config,
        "camelid config VERB [CONFIG.yaml] [section.key=value ...]",
        "print the keys VERB reads as a commented YAML file to start a config from",
    ),
}


def main(argv: list[str] | None = None) -> None:
    command_line, argv = argv is None, sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        print(
            "usage: camelid VERB [ARG ...] [--flag [VALUE] ...] [CONFIG.yaml] [section.key=value ...]\n\n"
            "verbs (`camelid VERB --help` for one):\n"
            + "\n".join(f"  {v:10}  {spec.about}" for v, spec in VERBS.items())
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown verb '{argv[0]}'; verbs: {', '.join(VERBS)}")
            sys.exit(2)
        return
    verb, args = argv[0], argv[1:]
    if any(x in ("-h", "--help") for x in args[: args.index("--") if "--" in args else len(args)]):
        print(help_text(verb))
        return
    setup_logging()
    try:
        if command_line:  # the `camelid` command (not main([...]) from Python): re-run on tcmalloc where installed
            use_fast_allocator()
        VERBS[verb].run(parse(verb, args))
    except CamelidError as e:
        print(f"camelid {verb}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted; the newest checkpoint (if any) resumes the run", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
