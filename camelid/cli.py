"""The `camelid` command: a thin table of verbs over `main(cfg)` functions.

    camelid sft CONFIG.yaml [section.key=value ...]
    camelid pt CONFIG.yaml [overrides]
    camelid rm CONFIG.yaml [overrides]       reward model from preference pairs
    camelid dpo CONFIG.yaml [overrides]      DPO / IPO on preference pairs
    camelid ppo CONFIG.yaml [overrides]      PPO (RLHF) against a reward model
    camelid data CONFIG.yaml [overrides]     show rendered examples with their loss mask, and counts
    camelid export RUN_DIR OUT_DIR           merge a LoRA run into a plain HF model folder
    camelid eval MODEL_OR_RUN [--before] [--out DIR] [eval.tasks=[mmlu,...] ...]   benchmarks, perplexity, samples
    camelid report RUN [RUN ...] [--out DIR]   HTML page: loss curves, scores before/after, samples side by side
    camelid chat MODEL_OR_RUN [overrides]
    camelid serve MODEL_OR_RUN [overrides]     OpenAI-compatible API (127.0.0.1:8000 unless serve.host/port)
    camelid vllm RUN_OR_MODEL [NAME]         check vLLM can load it and print the exact `vllm serve` command
    camelid pull NAME | --list               fetch a catalog model or dataset for offline use
    camelid tok train|extend|report ...      train a tokenizer; extend a model's vocabulary (resized embeddings)
    camelid clean [CONFIG.yaml] INPUT... [--out DIR] [clean.key=value ...]   dedup, filter, decontaminate, mask PII
    camelid kb add|rm|ls|search|ask KB ...   knowledge bases: ingest documents, retrieve, answer with citations
    camelid quickstart [overrides]           real LoRA fine-tuning of SmolLM2 on bilingual data, on CPU
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys

from camelid.config import Config, load_config
from camelid.utils import CamelidError, setup_logging


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is a YAML file unless it is an override (has '=')."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _pop_option(args: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` from args (in place) and return VALUE, or None when the flag is absent."""
    if flag not in args:
        return None
    i = args.index(flag)
    if i + 1 >= len(args):
        raise CamelidError(f"{flag} needs a value")
    value = args[i + 1]
    del args[i:i + 2]
    return value


def _config_and_positional(args: list[str]):
    """For verbs whose arguments mix one optional CONFIG.yaml, key=value overrides and plain arguments:
    the loaded config and the plain arguments, in order."""
    config = next((a for a in args if "=" not in a and a.endswith((".yaml", ".yml"))), None)
    return load_config(config, [a for a in args if "=" in a]), [a for a in args if "=" not in a and a != config]


def _keys(section: str) -> list[tuple[str, str]]:
    """(`section.key=default`, its comment) for each key of a config section, the comment read where it is declared."""
    def shown(value) -> str:  # as typed on the command line
        return value if isinstance(value, str) and value else repr(value)

    obj = getattr(Config(), section)
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*(?:#\s*(.*))?$", inspect.getsource(type(obj)), re.M))
    return [(f"{section}.{f.name}={shown(getattr(obj, f.name))}", comments.get(f.name, ""))
            for f in dataclasses.fields(obj)]


def _help(args: list[str], usage: str, sections: tuple[str, ...]) -> bool:
    """With -h/--help among a verb's arguments: print its usage and the keys it reads, and say so (the verb then
    does not run: no model called "--help" gets loaded)."""
    if not any(a in ("-h", "--help") for a in args):
        return False
    rows = [row for section in sections for row in _keys(section)]
    width = max(len(k) for k, _ in rows)
    print(usage + "\n\nkeys (section.key=value; the defaults shown):")
    print("\n".join(f"  {k:{width}}  {c}".rstrip() for k, c in rows))
    return True


def _no_options(args: list[str], usage: str) -> None:
    """What is left after a verb's own flags starts with its positional argument, never another option."""
    if args and args[0].startswith("-"):
        raise CamelidError(f"unknown option '{args[0]}'\n{usage}")


def cmd_train(stage: str, args: list[str]) -> None:
    path, overrides = _split_args(args)
    cfg = load_config(path, overrides)
    if cfg.eval.after_training and cfg.eval.tasks:
        from camelid.eval.tasks import task_specs

        task_specs(cfg.eval.tasks)  # two tasks reported under one name: refused now, not after training
    importlib.import_module(f"camelid.train.{stage}").main(cfg)
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


def _holds_pairs(spec: str) -> bool:
    """Whether a data source's first record is a preference pair (chosen/rejected)."""
    from camelid.data.formats import load_source

    try:
        load_source(spec, "preference", max_samples=1)
    except CamelidError:
        return False
    return True


def cmd_data(args: list[str]) -> None:
    from camelid import hub
    from camelid.data.loader import load_records, render_all, render_pairs
    from camelid.data.templates import show
    from camelid.model import load_tokenizer

    path, overrides = _split_args(args)
    cfg = load_config(path, overrides)
    if not cfg.data.train:
        raise CamelidError("data.train needs at least one source")
    for spec in cfg.data.train:  # a typo fails here, with the closest names, before the tokenizer loads
        hub.check_data_source(spec)
    tok = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    pairs = cfg.data.format == "preference" or _holds_pairs(cfg.data.train[0])
    records, stats = load_records(cfg.data.train, "preference" if pairs else "messages", cfg.data)
    for st in stats:
        cut = {k.replace("_", " "): n for k, n in st.get("trimmed", {}).items() if n}
        print(f"{st['source']}: read {st['read']}, kept {st['kept']}, skipped {st['skipped']} {st['reasons'] or ''}"
              + (f"; dropped from cut chats: {cut}" if cut else ""))
    if pairs:  # rm / dpo data: each side as the stage renders it, the final answer supervised
        rendered, dropped = render_pairs(tok, records, cfg.data)
        shown = [(f"{side} #{i}", getattr(p, side)) for i, p in enumerate(rendered[:2]) for side in ("chosen", "rejected")]
        rendered = [r for p in rendered for r in (p.chosen, p.rejected)]
        what = f"{len(rendered) // 2} preference pairs"
    else:
        rendered, dropped = render_all(tok, records, cfg.data)
        shown, what = [("", r) for r in rendered[:2]], f"{len(rendered)} chats"
    lengths = sorted(len(r.input_ids) for r in rendered)
    sup = sum(r.n_supervised for r in rendered) / max(1, sum(lengths))
    print(f"{what}; tokens p50={lengths[len(lengths) // 2]} max={lengths[-1]}; "
          f"{sup:.0%} of tokens supervised; dropped: {dropped or 'none'}")
    for label, r in shown:
        print("-" * 60 + (f" {label}" if label else "") + "\n" + show(tok, r) + "\n" + "-" * 60)
    print("[[...]] marks the tokens the loss is computed on")


def cmd_export(args: list[str]) -> None:
    from camelid.model import merge_adapter

    if len(args) < 2:
        raise CamelidError("usage: camelid export RUN_DIR OUT_DIR [dtype=bfloat16]")
    dtype = args[2].split("=", 1)[1] if len(args) > 2 else "auto"
    from camelid.model import is_reward_model
    from camelid.serve.vllm import vllm_command

    out = merge_adapter(args[0], args[1], dtype)
    if is_reward_model(out):
        print(f"merged reward model written to {out} (loads with AutoModelForSequenceClassification.from_pretrained)")
        return
    print(f"merged model written to {out} (loads with AutoModelForCausalLM.from_pretrained)\nserve it with vLLM: "
          f"{vllm_command(out)}")


EVAL_USAGE = "usage: camelid eval MODEL_OR_RUN [--before] [--out DIR] [eval.tasks=[mmlu] eval.limit=200 ...]"
CHAT_USAGE = "usage: camelid chat MODEL_OR_RUN [chat.temperature=0.7 ...]"
SERVE_USAGE = "usage: camelid serve MODEL_OR_RUN [serve.port=8000 engine.max_running=64 ...]"


def cmd_eval(args: list[str]) -> None:
    from camelid.eval.run import main

    if _help(args, EVAL_USAGE, ("eval",)):
        return
    before = "--before" in args
    args = [a for a in args if a != "--before"]
    out = _pop_option(args, "--out")
    _no_options(args, EVAL_USAGE)
    if not args or "=" in args[0]:
        raise CamelidError(EVAL_USAGE)
    main(load_config(None, args[1:]), args[0], before=before, out=out)


def cmd_report(args: list[str]) -> None:
    from camelid.eval.report import main

    main(args)


def cmd_chat(args: list[str]) -> None:
    from camelid.serve.chat import main

    if _help(args, CHAT_USAGE, ("chat", "engine")):
        return
    _no_options(args, CHAT_USAGE)
    if not args:
        raise CamelidError(CHAT_USAGE)
    main(load_config(None, args[1:]), args[0])


def cmd_serve(args: list[str]) -> None:
    from camelid.serve.server import main

    if _help(args, SERVE_USAGE, ("serve", "engine")):
        return
    _no_options(args, SERVE_USAGE)
    if not args or "=" in args[0]:
        raise CamelidError(SERVE_USAGE)
    main(load_config(None, args[1:]), args[0])


def cmd_vllm(args: list[str]) -> None:
    from camelid.serve.vllm import vllm_command

    if not args:
        raise CamelidError("usage: camelid vllm RUN_OR_MODEL [SERVED_NAME]")
    print(vllm_command(args[0], args[1] if len(args) > 1 else None))


def cmd_pull(args: list[str]) -> None:
    from camelid import hub

    if not args or args[0] == "--list":
        print("\n".join(hub.catalog_listing()))
        return
    for name in args:
        print(hub.pull(name))


TOK_USAGE = """usage: camelid tok train CORPUS... --out DIR [tok.kind=spm_bpe tok.vocab_size=20000 ...]
       camelid tok extend BASE [DOMAIN_TOKENIZER] --out DIR [tok.train=[CORPUS] tok.eval=[HELD_OUT] ...]
       camelid tok report TOKENIZER... [tok.eval=[TEXT ...]]
(a CONFIG.yaml may come first among the arguments; overrides are tok.* keys)"""


def cmd_tok(args: list[str]) -> None:
    from camelid.train import tok

    if not args or args[0] not in ("train", "extend", "report"):
        raise CamelidError(TOK_USAGE)
    sub, rest = args[0], args[1:]
    out = _pop_option(rest, "--out")
    cfg, positional = _config_and_positional(rest)
    if sub == "train" and out:
        cfg.tok.train += positional
        tok.train(cfg, out)
    elif sub == "extend" and out and 1 <= len(positional) <= 2:
        tok.extend_main(cfg, positional[0], positional[1] if len(positional) == 2 else None, out)
    elif sub == "report" and positional:
        tok.report_main(cfg, positional)
    else:
        raise CamelidError(TOK_USAGE)


def cmd_clean(args: list[str]) -> None:
    from camelid.data.clean import main
    from camelid.eval.contamination import benchmark_items

    args = list(args)
    out = _pop_option(args, "--out")
    cfg, inputs = _config_and_positional(args)
    cfg.clean.inputs += inputs
    cfg.clean.out = out or cfg.clean.out
    if not cfg.clean.inputs:
        raise CamelidError("usage: camelid clean [CONFIG.yaml] INPUT... [--out DIR] [clean.key=value ...]")
    # The benchmark questions are loaded up here: camelid.data may not import camelid.eval.
    main(cfg, benchmark_items(cfg.clean.decontaminate) if cfg.clean.decontaminate else None)


KB_USAGE = """usage: camelid kb add KB PATH... [rag.embedding_model=... rag.chunk_tokens=200 ...]   ingest files or folders
       camelid kb rm KB NAME...              remove documents (a folder name removes all under it)
       camelid kb ls [KB]                    knowledge bases, or the documents of one
       camelid kb search KB "QUESTION" [rag.retriever=bm25|dense|hybrid rag.top_k=5]
       camelid kb ask KB "QUESTION" model.name=MODEL_OR_RUN [rag.*]
(KB is a name under rag.root, default $CAMELID_HOME/kb, or a folder path; a CONFIG.yaml may come among the
arguments, e.g. configs/kb_hybrid.yaml)"""


def cmd_kb(args: list[str]) -> None:
    from camelid.config import validate
    from camelid.rag.store import KnowledgeBase, kb_folder, kb_root, list_kbs

    cfg, positional = _config_and_positional(args)
    if not positional or positional[0] not in ("add", "rm", "ls", "search", "ask"):
        raise CamelidError(KB_USAGE)
    sub, rest = positional[0], positional[1:]
    cfg = validate(cfg, "kb")
    if sub == "ls" and not rest:
        names = list_kbs(cfg.rag)
        print("\n".join(names) if names else f"no knowledge bases under {kb_root(cfg.rag)}")
        return
    if not rest or (sub in ("add", "rm") and len(rest) < 2) or (sub in ("search", "ask") and len(rest) != 2):
        raise CamelidError(KB_USAGE)
    folder = kb_folder(rest[0], cfg.rag)
    if sub == "add":
        report = KnowledgeBase.open(folder, create=cfg.rag).add(rest[1:], cfg.rag)
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
        for d in kb.documents():
            print(f"{d['name']:50} {d['chunks']:6} chunks {d['bytes']:10,} bytes  sha256 {d['sha256'][:12]}")
    elif sub == "search":
        from camelid.rag.prompt import citations
        from camelid.rag.retrieve import search

        hits = citations(search(kb, rest[1], cfg.rag))
        for c in hits:
            sim = "" if c["similarity"] is None else f" cos={c['similarity']:.3f}"
            print(f"[{c['index']}] {c['label']}  (rrf={c['score']:.4f}{sim} terms={c['term_share']:.2f})\n"
                  f"    {c['text'][:300]}")
        if not hits:
            print("nothing relevant found")
    else:
        from camelid.serve.kb import ask_main

        result = ask_main(cfg, rest[0], rest[1])
        print(result["answer"])
        for c in result["citations"]:
            print(f"  [{c['index']}]{' *' if c['cited'] else ''} {c['label']}")


def cmd_quickstart(args: list[str]) -> None:
    from camelid.quickstart import main

    main(args)


VERBS = {
    "pt": lambda a: cmd_train("pt", a),
    "sft": lambda a: cmd_train("sft", a),
    "rm": lambda a: cmd_train("rm", a),
    "dpo": lambda a: cmd_train("dpo", a),
    "ppo": lambda a: cmd_train("ppo", a),
    "data": cmd_data,
    "export": cmd_export,
    "eval": cmd_eval,
    "report": cmd_report,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "vllm": cmd_vllm,
    "pull": cmd_pull,
    "tok": cmd_tok,
    "clean": cmd_clean,
    "kb": cmd_kb,
    "quickstart": cmd_quickstart,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown verb '{argv[0]}'; verbs: {', '.join(VERBS)}")
            sys.exit(2)
        return
    setup_logging()
    try:
        VERBS[argv[0]](argv[1:])
    except CamelidError as e:
        print(f"camelid {argv[0]}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted; the newest checkpoint (if any) resumes the run", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
