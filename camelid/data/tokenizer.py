"""Train a tokenizer on a corpus, read any tokenizer's vocabulary as text, and measure tokenizers on text.

Kinds (one visible dict, `TRAINERS`):
- spm_bpe      SentencePiece BPE, as Llama's and Chinese-LLaMA's were made: byte fallback, digits split,
               whitespace kept as written (identity normalization), a dummy prefix;
- spm_unigram  SentencePiece unigram, same options;
- bpe          byte-level BPE (HF tokenizers), GPT-2 / SmolLM2 style. Given a base tokenizer (`like`), it is
               trained with the base's own normalizer and pre-tokenizer, so each token it learns is a piece the
               base's pre-tokenizer can hand to the BPE model in one piece;
- wordpiece    WordPiece (BERT style), for encoders. Not reproducible run to run: the tokenizers library numbers
               its ##-tokens in hash-map order, which breaks ties between equally frequent merges differently
               (huggingface/tokenizers#1794, open at tokenizers 0.23).

A trained tokenizer is saved as an HF folder (tokenizer.json + tokenizer_config.json), SentencePiece kinds with
their tokenizer.model beside it. Training is deterministic for a given corpus and config (wordpiece aside); `tok.seed`
picks the `tok.max_lines` sample and the held-out lines.
"""

from __future__ import annotations

import io
import json
import random
import re
import time
from pathlib import Path

from camelid.data.formats import load_source
from camelid.utils import CamelidError, log, require

# The held-out round-trip sample every extension is checked on: the kinds of text a bilingual chat model meets.
SAMPLES = {
    "zh": "人工智能是计算机科学、心理学、哲学等学科融合的交叉学科。１９９８年１月，新华社记者报道：经济稳步增长。",
    "en": "The quick brown fox jumps over the lazy dog. Fine-tuning adapts a pretrained model to a new domain.",
    "code": 'def mean(xs: list[float]) -> float:\n    """Average."""\n    return sum(xs) / max(len(xs), 1)  # 0.0 if empty\n',
    "emoji": "好的👍 let's go 🚀🎉 — naïve café, Ωmega ✓ 😀😀",
}

SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER, SPM_UNUSED, SPM_BYTE = 1, 2, 3, 4, 5, 6  # ModelProto.SentencePiece.Type
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


# ---------------------------------------------------------------------------------------------
# corpus


def corpus_lines(specs: list[str], max_lines: int = 0, seed: int = 0) -> list[str]:
    """The non-empty lines of every text record of `specs` (files, FOLDER@ENTRY, catalog datasets), in order;
    a seeded sample of `max_lines` of them when set. Lines, not documents: SentencePiece treats each input as a
    sentence and skips over-long ones, and a whole play or article would be one."""
    lines = []
    for spec in specs:
        records, _ = load_source(spec, "text")
        lines += [line for rec in records for line in rec["text"].splitlines() if line.strip()]
    if not lines:
        raise CamelidError(f"no text in {', '.join(specs) or 'the corpus (give tok.train)'}")
    if max_lines and len(lines) > max_lines:
        keep = sorted(random.Random(seed).sample(range(len(lines)), max_lines))
        lines = [lines[i] for i in keep]
    return lines


def split_lines(lines: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded `fraction` of the lines held out, both in corpus order."""
    if fraction <= 0:
        return lines, []
    held = set(random.Random(seed).sample(range(len(lines)), max(1, int(len(lines) * fraction))))
    return [x for i, x in enumerate(lines) if i not in held], [x for i, x in enumerate(lines) if i in held]


# ---------------------------------------------------------------------------------------------
# training


def train_tokenizer(lines: list[str], tcfg, kind: str = "", like=None):
    """(HF fast tokenizer, SentencePiece model bytes or None) trained on `lines`; `kind` (default `tcfg.kind`,
    where auto means spm_bpe) names the trainer. `like`: a base tokenizer whose pre-tokenizer `bpe` reuses."""
    kind = kind or tcfg.kind
    kind = "spm_bpe" if kind == "auto" else kind
    if kind not in TRAINERS:  # config validation keeps this unreachable
        raise CamelidError(f"unknown tokenizer kind '{kind}'; choose one of {', '.join(TRAINERS)}")
    started = time.time()
    log.info(f"training a {kind} tokenizer of {tcfg.vocab_size:,} tokens on {len(lines):,} lines")
    tok, proto = TRAINERS[kind](lines, tcfg, like)
    log.info(f"trained {len(tok):,} tokens in {time.time() - started:.1f} s")
    return tok, proto


def _train_spm(lines: list[str], tcfg, model_type: str):
    spm = require("sentencepiece", "tok")
    spm.set_random_generator_seed(tcfg.seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type=model_type,
            vocab_size=tcfg.vocab_size,
            byte_fallback=tcfg.byte_fallback,
            split_digits=tcfg.split_digits,
            character_coverage=tcfg.character_coverage,
            num_threads=tcfg.threads,
            # Llama's settings: text as written (no NFKC, spaces kept), so decode(encode(x)) == x.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 16,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars"
        raise CamelidError(f"SentencePiece could not train: {e}") from None
    proto = buf.getvalue()
    return spm_to_hf(proto), proto


def _train_hf(lines: list[str], tcfg, like, wordpiece: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    digits = [pre_tokenizers.Digits(individual_digits=True)] if tcfg.split_digits else []
    if wordpiece:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=False)  # also puts every CJK character apart
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), *digits])
        tk.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=tcfg.vocab_size, min_frequency=tcfg.min_frequency, special_tokens=specials, show_progress=True
        )
    else:
        specials = ["<|endoftext|>"]
        tk = Tokenizer(models.BPE())
        if like is not None and is_byte_level(json.loads(like.backend_tokenizer.to_str())):
            tk.normalizer = like.backend_tokenizer.normalizer
            tk.pre_tokenizer = like.backend_tokenizer.pre_tokenizer
        else:
            tk.pre_tokenizer = pre_tokenizers.Sequence([*digits, pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=tcfg.vocab_size,
            min_frequency=tcfg.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=True,
        )
    tk.train_from_iterator(lines, trainer, length=len(lines))
    from transformers import PreTrainedTokenizerFast

    names = (
        {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
        if wordpiece
        else {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, **names), None


TRAINERS = {
    "spm_bpe": lambda lines, tcfg, like: _train_spm(lines, tcfg, "bpe"),
    "spm_unigram": lambda lines, tcfg, like: _train_spm(lines, tcfg, "unigram"),
    "bpe": lambda lines, tcfg, like: _train_hf(lines, tcfg, like, wordpiece=False),
    "wordpiece": lambda lines, tcfg, like: _train_hf(lines, tcfg, like, wordpiece=True),
}


# ---------------------------------------------------------------------------------------------
# SentencePiece → HF


def spm_proto(data: bytes):
    pb = require("sentencepiece.sentencepiece_model_pb2", "tok")
    proto = pb.ModelProto()
    proto.ParseFromString(data)
    return proto


def spm_merges(pieces: list[str], mergeable: set[str], start: int = 0) -> list[tuple[str, str]]:
    """BPE merges that make the HF BPE model segment as SentencePiece BPE does: SentencePiece joins any two
    adjacent pieces whose concatenation is a piece, best-scored (= lowest id) result first; so each piece gets
    one merge per split into two mergeable pieces, ranked by the piece's id. `start`: only pieces from that id."""
    ids = {p: i for i, p in enumerate(pieces)}
    out = []
    for p in pieces[start:]:
        if p not in mergeable:
            continue
        out += [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in mergeable and p[k:] in mergeable]
    # stable: by the result's id, then (as transformers' converter) shorter left parts first
    return sorted(out, key=lambda lr: (ids[lr[0] + lr[1]], len(lr[0])))


def spm_to_hf(data: bytes):
    """A SentencePiece model as an HF fast tokenizer that segments, decodes and numbers tokens as it does:
    BPE (with merges from `spm_merges`) or unigram, byte fallback, ▁ for spaces, the dummy prefix."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    proto = spm_proto(data)
    pieces = [p.piece for p in proto.pieces]
    spec = proto.trainer_spec
    byte_fallback = any(p.type == SPM_BYTE for p in proto.pieces)
    unk = pieces[spec.unk_id]
    if spec.model_type == 2:  # BPE
        normal = {p.piece for p in proto.pieces if p.type == SPM_NORMAL}
        model = models.BPE(
            {p: i for i, p in enumerate(pieces)},
            spm_merges(pieces, normal),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    elif spec.model_type == 1:  # unigram
        model = models.Unigram(
            [(p.piece, p.score) for p in proto.pieces], unk_id=spec.unk_id, byte_fallback=byte_fallback
        )
    else:
        raise CamelidError(f"SentencePiece model type {spec.model_type} is not supported (BPE and unigram are)")
    tk = Tokenizer(model)
    prefix = proto.normalizer_spec.add_dummy_prefix
    # SentencePiece always prepends the dummy ▁, also to text that starts with a space (HF's Metaspace does not):
    # a normalizer that always prepends keeps leading spaces and the segmentation identical.
    charsmap = proto.normalizer_spec.precompiled_charsmap  # NFKC and the like, when it was trained with them
    steps = [normalizers.Precompiled(charsmap)] if charsmap else []
    steps += [normalizers.Prepend("▁")] if prefix else []
    tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    tk.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in proto.pieces
            if p.type in (SPM_CONTROL, SPM_UNKNOWN)
        ]
    )
    tk.add_tokens([AddedToken(p.piece, normalized=False) for p in proto.pieces if p.type == SPM_USER])
    names = {"unk_token": unk}
    for name, i in (("bos_token", spec.bos_id), ("eos_token", spec.eos_id), ("pad_token", spec.pad_id)):
        if 0 <= i < len(pieces):
            names[name] = pieces[i]
    return PreTrainedTokenizerFast(tokenizer_object=tk, **names)


def save_tokenizer(tok, out: Path, proto: bytes | None = None) -> None:
    tok.save_pretrained(str(out))
    if proto is not None:
        (Path(out) / "tokenizer.model").write_bytes(proto)


# ---------------------------------------------------------------------------------------------
# reading a tokenizer's vocabulary as text


def is_byte_level(spec: dict) -> bool:
    """Whether a tokenizer.json spells tokens in GPT-2's byte-to-unicode alphabet."""
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (byte-level BPE's alphabet)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


B2U = _bytes_to_unicode()
U2B = {c: b for b, c in B2U.items()}


def surface(token: str, spelling: str, prefix: str = "##") -> bytes | None:
    """The bytes a vocabulary entry stands for, or None for entries that are not text (byte-fallback pieces)."""
    if spelling == "byte_level":
        return bytes(U2B[c] for c in token) if all(c in U2B for c in token) else None
    if _BYTE_PIECE.match(token):
        return None
    if spelling == "wordpiece":
        return token.removeprefix(prefix).encode()
    return token.replace("▁", " ").encode()  # SentencePiece style


def vocabulary(path_or_tok) -> list[bytes]:
    """A tokenizer's learned tokens as the bytes they stand for, in its own order (most useful first: BPE merge
    order / SentencePiece score order); specials, byte-fallback pieces and duplicates left out.
    Takes a tokenizer folder, a tokenizer.json / tokenizer.model file, or a loaded HF fast tokenizer."""
    if not isinstance(path_or_tok, (str, Path)):
        return _json_vocabulary(json.loads(path_or_tok.backend_tokenizer.to_str()))
    p = Path(path_or_tok)
    model, js = (p / "tokenizer.model", p / "tokenizer.json") if p.is_dir() else (p, p)
    if model.suffix == ".model" and model.is_file():
        pieces = [x for x in spm_proto(model.read_bytes()).pieces if x.type == SPM_NORMAL]
        return _dedupe(surface(x.piece, "spm") for x in pieces)
    if js.suffix == ".json" and js.is_file():
        return _json_vocabulary(json.loads(js.read_text(encoding="utf-8")))
    raise CamelidError(f"{p}: no tokenizer.model or tokenizer.json to read a vocabulary from")


def _json_vocabulary(spec: dict) -> list[bytes]:
    m = spec["model"]
    kind = m["type"]
    if kind == "Unigram":
        order = [piece for piece, _ in m["vocab"]]
    elif kind in ("BPE", "WordPiece", "WordLevel"):
        order = sorted(m["vocab"], key=m["vocab"].get)
    else:
        raise CamelidError(f"cannot read the vocabulary of a {kind} tokenizer")
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    spelling = "byte_level" if is_byte_level(spec) else "wordpiece" if kind == "WordPiece" else "spm"
    prefix = m.get("continuing_subword_prefix") or "##"
    return _dedupe(surface(t, spelling, prefix) for t in order if t not in specials)


def _dedupe(items) -> list[bytes]:
    seen, out = set(), []
    for b in items:
        if b and b not in seen:
            seen.add(b)
            out.append(b)
    return out


# ---------------------------------------------------------------------------------------------
# measuring


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def tokens_per_char(tok, texts: list[str]) -> float:
    chars = sum(len(t) for t in texts)
    return count_tokens(tok, texts) / chars if chars else float("nan")


def round_trips(tok, texts: list[str]) -> list[bool]:
    """decode(encode(x)) == x for each text (specials neither added nor skipped)."""
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [tok.decode(i, clean_up_tokenization_spaces=False) == t for i, t in zip(ids, texts)]
