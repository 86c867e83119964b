"""The `camelid tok` verbs: train a tokenizer, extend a base model's vocabulary with it, report tokens per character.

    camelid tok train CORPUS... --out DIR [tok.kind=spm_bpe tok.vocab_size=20000 ...]
    camelid tok extend BASE [DOMAIN_TOKENIZER] --out DIR [tok.train=[CORPUS] tok.eval=[HELD_OUT] ...]
    camelid tok report TOKENIZER... tok.eval=[TEXT ...]

`extend` is the one command of the Chinese-LLaMA recipe before pretraining: the base's tokenizer (a model
folder, catalog name or HF id) grows by the vocabulary of DOMAIN_TOKENIZER, or of a tokenizer trained here on
`tok.train` that fits the base (SentencePiece BPE for SentencePiece bases; byte-level BPE with the base's own
pre-tokenizer otherwise). It checks that every old token keeps its id and that text round-trips, resizes the
model's embeddings and head with each new row the mean of its old pieces' rows, and writes one folder that
`camelid pt` trains (configs/pt_vocab_stage1.yaml, then pt_vocab_stage2.yaml):

    DIR/  config.json model.safetensors ...   the resized model (when BASE is a model and tok.resize_model)
          tokenizer.json tokenizer_config.json [tokenizer.model]   the extended tokenizer, same chat template
          camelid_vocab.json                 first_new_id (where `embedding.new_rows_only` starts), counts
          tok_report.json                    checks and tokens per character before/after
          domain_tokenizer/                  the tokenizer trained on tok.train, when one was
"""

from __future__ import annotations

from pathlib import Path

from camelid import hub
from camelid.config import Config, TokConfig, validate
from camelid.data.tokenizer import (
    corpus_lines,
    save_tokenizer,
    split_lines,
    tokens_per_char,
    train_tokenizer,
    vocabulary,
)
from camelid.data.vocab import extend, format_report, report, verify
from camelid.model import VOCAB_INFO, load_tokenizer, resize_embeddings
from camelid.utils import CamelidError, atomic_dir, log, write_json


def train(cfg: Config, out: str) -> Path:
    """Train `cfg.tok.kind` on `tok.train` (holding out `tok.eval_split` of the lines when `tok.eval` is empty)
    and save it as an HF folder; prints tokens per character on the held-out text."""
    validate(cfg, "tok")
    t = cfg.tok
    if not t.train:
        raise CamelidError("give the corpus: camelid tok train CORPUS... --out DIR (or tok.train=[...])")
    lines, held = split_lines(corpus_lines(t.train, t.max_lines, t.seed), 0 if t.eval else t.eval_split, t.seed)
    tok, proto = train_tokenizer(lines, t)
    with atomic_dir(out) as tmp:
        save_tokenizer(tok, tmp, proto)
    for name, texts in _eval_sources(t, held).items():
        print(f"{name}: {tokens_per_char(tok, texts):.3f} tokens per character ({sum(map(len, texts)):,} characters)")
    print(f"tokenizer written to {out} ({len(tok):,} tokens)")
    return Path(out)


def extend_main(cfg: Config, base: str, domain: str | None, out: str) -> dict:
    validate(cfg, "tok")
    t = cfg.tok
    src = hub.model_folder(base)
    base_tok = load_tokenizer(src, trust_remote_code=cfg.model.trust_remote_code, as_saved=True)
    base_proto = Path(src, "tokenizer.model").read_bytes() if Path(src, "tokenizer.model").is_file() else None

    held, domain_tok, domain_proto = [], None, None
    if domain:
        words = vocabulary(domain)
    elif t.train:
        lines, held = split_lines(corpus_lines(t.train, t.max_lines, t.seed), 0 if t.eval else t.eval_split, t.seed)
        kind = t.kind if t.kind != "auto" else "spm_bpe" if base_proto else "bpe"
        domain_tok, domain_proto = train_tokenizer(lines, t, kind, like=base_tok)
        words = vocabulary(domain_tok)
    else:
        raise CamelidError("give a DOMAIN_TOKENIZER folder/file, or tok.train=[CORPUS ...] to train one here")

    ext = extend(base_tok, words, t.max_added, base_proto)
    sources = _eval_sources(t, held)
    checks = verify(base_tok, ext.tokenizer, [x for texts in sources.values() for x in texts[:500]])
    rep = report(base_tok, ext.tokenizer, sources)

    is_model = not Path(src).is_dir() or Path(src, "config.json").is_file()
    with atomic_dir(out) as tmp:
        save_tokenizer(ext.tokenizer, tmp, ext.proto)
        if domain_tok is not None:
            save_tokenizer(domain_tok, tmp / "domain_tokenizer", domain_proto)
        if is_model and t.resize_model:
            from transformers import AutoModelForCausalLM

            log.info(f"resizing {src}'s embeddings to {len(ext.tokenizer):,} rows")
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype="auto", trust_remote_code=cfg.model.trust_remote_code
            )
            resize_embeddings(model, base_tok, ext.tokenizer)
            model.save_pretrained(str(tmp))
        info = {
            "base": base,
            "base_path": src,
            "domain": domain or t.train,
            "first_new_id": ext.first_id,
            "vocab_size": len(ext.tokenizer),
            "model_resized": is_model and t.resize_model,
            **ext.stats,
        }
        write_json(tmp / VOCAB_INFO, info)
        write_json(tmp / "tok_report.json", {"extension": ext.stats, "checks": checks, **rep})
    print(format_report(ext.stats, checks, rep))
    what = "model and tokenizer" if info["model_resized"] else "tokenizer"
    print(f"extended {what} written to {out}; next: camelid pt configs/pt_vocab_stage1.yaml model.name={out}")
    return info | {"checks": checks, **rep}


def report_main(cfg: Config, tokenizers: list[str]) -> dict:
    """Tokens per character of each tokenizer on the built-in samples and `tok.eval`."""
    validate(cfg, "tok")
    sources = _eval_sources(cfg.tok, [])
    from camelid.data.tokenizer import SAMPLES

    rows = {name: [text] for name, text in SAMPLES.items()} | sources
    table = {}
    print(f"{'text':<24}{'chars':>10}" + "".join(f"{Path(n).name[-22:]:>24}" for n in tokenizers))
    toks = [load_tokenizer(n, trust_remote_code=cfg.model.trust_remote_code, as_saved=True) for n in tokenizers]
    for name, texts in rows.items():
        table[name] = {n: tokens_per_char(tok, texts) for n, tok in zip(tokenizers, toks)}
        print(f"{name:<24}{sum(map(len, texts)):>10,}" + "".join(f"{v:>24.3f}" for v in table[name].values()))
    print("(tokens per character; lower is shorter)")
    return table


def _eval_sources(t: TokConfig, held: list[str]) -> dict[str, list[str]]:
    """Named lists of held-out lines: each of tok.eval, else the lines held out of tok.train."""
    if t.eval:
        return {spec: corpus_lines([spec]) for spec in t.eval}
    return {f"held-out {'+'.join(t.train)}"[:40]: held} if held else {}
