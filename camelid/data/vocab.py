"""Add a domain tokenizer's vocabulary to a base tokenizer, keeping every old id (`camelid tok extend`).

Bases are BPE tokenizers, which nearly every open LLM uses, in either spelling:
- byte-level BPE (GPT-2, SmolLM, Llama-3, Qwen): tokens are byte strings in GPT-2's byte-to-unicode alphabet and
  a merge list says which adjacent pair joins first;
- SentencePiece BPE (Llama 1/2, Mistral v0.1, Baichuan, Yi): ▁ marks spaces, and SentencePiece joins whichever
  adjacent pair makes the best-scored piece. Its tokenizer.model is extended too (the Chinese-LLaMA merge: new
  pieces appended to the model proto), and the HF merges are generated from the pieces the way SentencePiece
  reads them, so both segment alike.

A token that is in the vocabulary but that no chain of merges builds is never produced. So each new token is
appended with what builds it from the pieces the tokenizer (base + tokens added before it) cuts its text into,
ranked after every existing merge: the base's merges always run first, so text without new tokens is segmented as
before, and ids below the base's size never move. Where the base cuts a new token's bytes in a way the domain's
own chain cannot continue from, the missing step becomes an intermediate token. Every new token is then checked
to come out of its own text in the real tokenizer.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from camelid.data.tokenizer import (
    B2U,
    SAMPLES,
    SPM_CONTROL,
    SPM_NORMAL,
    SPM_USER,
    is_byte_level,
    round_trips,
    spm_proto,
    tokens_per_char,
)
from camelid.utils import CamelidError, log


@dataclass
class Extension:
    tokenizer: object  # the extended HF fast tokenizer (same class, specials and chat template as the base)
    proto: bytes | None  # the extended tokenizer.model, for SentencePiece bases
    first_id: int  # ids from here on are new
    stats: dict = field(default_factory=dict)


def extend(base_tok, domain: list[bytes], max_added: int = 0, base_proto: bytes | None = None) -> Extension:
    """`base_tok` with the tokens of `domain` (the bytes each stands for, most useful first; see
    `tokenizer.vocabulary`) that it lacks appended. `base_proto`: the base's tokenizer.model, if it has one."""
    spec = json.loads(base_tok.backend_tokenizer.to_str())
    m = spec["model"]
    if m["type"] != "BPE":
        raise CamelidError(
            f"the base tokenizer is {m['type']}; extension supports BPE bases (byte-level like "
            "GPT-2, SmolLM, Llama-3, Qwen, or SentencePiece BPE like Llama 1/2, Mistral)"
        )
    if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix"):
        raise CamelidError("BPE with a continuing-subword prefix or end-of-word suffix is not supported")
    byte_level = is_byte_level(spec)
    if not byte_level and "▁" not in json.dumps(
        [spec.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")], ensure_ascii=False
    ):
        raise CamelidError("the base BPE tokenizer is neither byte-level nor SentencePiece-style (▁ for spaces)")
    first = len(base_tok)
    vocab = dict(m["vocab"])
    if max(vocab.values()) >= first:
        raise CamelidError(f"the base tokenizer's vocabulary has ids up to {max(vocab.values())} but {first} tokens")
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    builder = _Builder(
        vocab,
        [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in m["merges"]],
        first,
        byte_level,
        specials,
    )

    targets, skipped, present = [], Counter(), 0
    for b in domain:
        s, why = _spell(b, byte_level, base_tok)
        if s is None:
            skipped[why] += 1
        elif s in vocab:
            present += 1
        else:
            targets.append(s)
    wanted = set(targets)
    added = []
    for s in targets:
        if max_added and len(vocab) - first >= max_added:
            skipped["over tok.max_added"] += len(targets) - len(added)
            break
        if s not in vocab and not builder.build(s, wanted):
            skipped["would spell a special token"] += 1
            continue
        added.append(s)

    backend = _backend(spec, builder)
    missing = [s for s in added if _pieces(backend, s) != [s]]
    for _ in range(3):  # the simulation follows the HF BPE model; this only catches a divergence from it
        if not missing:
            break
        for s in missing:
            builder.build(s, wanted, seg=_pieces(backend, s))
        backend = _backend(spec, builder)
        missing = [s for s in added if _pieces(backend, s) != [s]]
    tok = _wrap(base_tok, backend)
    proto = _extend_proto(base_proto, builder.pieces_from(first), first, base_tok) if base_proto else None
    stats = {
        "base_vocab": first,
        "domain_tokens": len(domain),
        "already_in_base": present,
        "skipped": dict(skipped.most_common()),
        "added_domain_tokens": len(added),
        "intermediate_tokens": len(vocab) - first - len(set(added)),
        "new_vocab": len(tok),
        "never_produced": len(missing),
        "spelling": "byte-level BPE" if byte_level else "SentencePiece BPE",
    }
    if missing:
        log.warning(f"{len(missing)} added tokens are not produced from their own text (e.g. {missing[:3]})")
    return Extension(tok, proto, first, stats)


def _spell(b: bytes, byte_level: bool, base_tok) -> tuple[str | None, str]:
    """(the base model's spelling of these bytes, or None and why it cannot take them)."""
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text):
        return None, "control characters"
    if not byte_level:
        if text is None:
            return None, "not whole UTF-8 characters (SentencePiece pieces are)"
        return text.replace(" ", "▁"), ""
    spelled = "".join(B2U[x] for x in b)
    if text is not None:  # (bytes that are not whole characters lie inside one pre-token: nothing to check)
        bt = base_tok.backend_tokenizer
        if bt.normalizer is not None and bt.normalizer.normalize_str(text) != text:
            return None, "changed by the base's normalizer"
        pre = bt.pre_tokenizer.pre_tokenize_str(text) if bt.pre_tokenizer is not None else [(spelled, None)]
        if len(pre) != 1 or pre[0][0] != spelled:
            return None, "split apart by the base's pre-tokenizer"
    return spelled, ""


class _Builder:
    """The growing vocabulary and merges, with a BPE that segments one word exactly as the HF model will."""

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], first: int, byte_level: bool, specials: set[str]
    ):
        self.vocab, self.merges, self.first, self.byte_level = vocab, merges, first, byte_level
        self.n_base_merges, self.next_id = len(merges), first
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        # SentencePiece joins normal pieces only: never specials or <0x..> byte pieces
        self.mergeable = {t for t in vocab if t not in specials and not (t.startswith("<0x") and t.endswith(">"))}

    def segment(self, s: str) -> list[str]:
        seg = list(s)
        while len(seg) > 1:
            if self.byte_level:  # the lowest-ranked merge of an adjacent pair, leftmost first
                cands = [(self.ranks[p], i) for i, p in enumerate(zip(seg, seg[1:])) if p in self.ranks]
            else:  # SentencePiece: the adjacent pair making the best (lowest-id) piece, leftmost first
                cands = [
                    (self.vocab[a + b], i) for i, (a, b) in enumerate(zip(seg, seg[1:])) if a + b in self.mergeable
                ]
            if not cands:
                break
            _, i = min(cands)
            seg[i : i + 2] = [seg[i] + seg[i + 1]]
        return seg

    def add_token(self, s: str) -> None:
        self.vocab[s] = self.next_id
        self.next_id += 1
        self.mergeable.add(s)

    def build(self, s: str, wanted: set[str], seg: list[str] | None = None) -> bool:
        """Make segmenting `s` give `s`: join adjacent pieces until one is left, each join a merge (and a new
        token where the joined string is not one yet). The newest merge ranks last, so it only fires where every
        older merge has run: each join shortens the segmentation by at least one piece."""
        for c in s:  # a character the base lacks (SentencePiece bases; byte-level ones have all 256)
            if c not in self.vocab:
                self.add_token(c)
        seg = seg or self.segment(s)
        while len(seg) > 1:
            # Prefer joins that are tokens anyway (domain tokens, existing ones), so intermediates are rare.
            joins = [a + b for a, b in zip(seg, seg[1:])]
            i = next((k for k, j in enumerate(joins) if j in wanted or j in self.mergeable), 0)
            piece = joins[i]
            if piece in self.vocab and piece not in self.mergeable:
                return False  # it would spell a special token: never build one from text
            if piece not in self.vocab:
                self.add_token(piece)
            if self.byte_level and (seg[i], seg[i + 1]) not in self.ranks:
                self.ranks[(seg[i], seg[i + 1])] = len(self.merges)
                self.merges.append((seg[i], seg[i + 1]))
            seg = self.segment(s)
        return True

    def pieces_from(self, first: int) -> list[str]:
        return sorted((t for t, i in self.vocab.items() if i >= first), key=self.vocab.get)

    def all_merges(self) -> list[tuple[str, str]]:
        if self.byte_level:
            return self.merges
        # SentencePiece reads merges off the pieces: every split of a piece into two mergeable pieces, ranked by the
        # piece's id. The base's own list stays as it is; appended: splits of new pieces, and of old pieces into a
        # new part (ranked first: old pieces score higher).
        new = {t for t, i in self.vocab.items() if i >= self.first}
        extra = []
        for p in self.mergeable:
            idx = self.vocab[p]
            for k in range(1, len(p)):
                left, right = p[:k], p[k:]
                if (
                    left in self.mergeable
                    and right in self.mergeable
                    and (idx >= self.first or left in new or right in new)
                ):
                    extra.append((idx, k, (left, right)))
        have = set(self.merges[: self.n_base_merges])
        return self.merges[: self.n_base_merges] + [pair for _, _, pair in sorted(extra) if pair not in have]


def _backend(spec: dict, builder: _Builder):
    from tokenizers import Tokenizer

    spec = dict(spec, model=dict(spec["model"], vocab=builder.vocab, merges=[list(p) for p in builder.all_merges()]))
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def _pieces(backend, s: str) -> list[str]:
    return [t.value for t in backend.model.tokenize(s)]


def _wrap(base_tok, backend):
    """The base's HF tokenizer class, specials and chat template around the extended backend: saved beside
    the base's files and loaded back the way any model folder is."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        base_tok.save_pretrained(tmp)
        backend.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer.model").unlink(missing_ok=True)  # the base's: would disagree with the json
        return AutoTokenizer.from_pretrained(tmp)


def _extend_proto(data: bytes, new_pieces: list[str], first: int, base_tok) -> bytes:
    """The Chinese-LLaMA merge: new pieces appended to the SentencePiece model, scored below every old piece
    in the order they were added (SentencePiece's own BPE order), so ids match the HF tokenizer's."""
    proto = spm_proto(data)
    pieces = [p.piece for p in proto.pieces]
    vocab = base_tok.get_vocab()
    if any(vocab.get(p) != i for i, p in enumerate(pieces) if proto.pieces[i].type == SPM_NORMAL):
        raise CamelidError("the base's tokenizer.model and its HF tokenizer number pieces differently")
    # Tokens the HF tokenizer added after the proto's pieces (e.g. a pad token) keep their ids: placeholders.
    by_id = {i: t for t, i in vocab.items()}
    for i in range(len(pieces), first):
        if i not in by_id:
            raise CamelidError(f"the base tokenizer has no token with id {i}: cannot line tokenizer.model up with it")
        p = proto.pieces.add()
        p.piece, p.score = by_id[i], 0.0
        p.type = SPM_CONTROL if by_id[i] in base_tok.all_special_tokens else SPM_USER
    low = min((p.score for p in proto.pieces if p.type == SPM_NORMAL), default=0.0)
    for k, piece in enumerate(new_pieces):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, low - 1.0 - k, SPM_NORMAL
    return proto.SerializeToString()


# ---------------------------------------------------------------------------------------------
# checks and the report


def verify(old_tok, new_tok, texts: list[str] | None = None) -> dict:
    """What must hold after an extension; raises if old ids moved or a round trip broke that worked before.
    `texts`: held-out text to check (beside the built-in zh / en / code / emoji sample)."""
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise CamelidError(f"{len(moved)} old tokens changed id (e.g. {moved[:5]})")
    sample = list(SAMPLES.values()) + list(texts or [])
    before, after = round_trips(old_tok, sample), round_trips(new_tok, sample)
    broken = [t for t, b, a in zip(sample, before, after) if b and not a]
    if broken:
        raise CamelidError(f"decode(encode(text)) no longer gives the text back, e.g. {broken[0][:80]!r}")
    return {
        "old_ids_kept": len(old_vocab),
        "round_trip_exact": sum(after),
        "round_trip_exact_before": sum(before),
        "round_trip_texts": len(sample),
    }


def report(old_tok, new_tok, sources: dict[str, list[str]]) -> dict:
    """Tokens per character before and after, on the built-in samples and each named list of texts; and how many
    of the new tokens the texts use."""
    rows = {name: [text] for name, text in SAMPLES.items()} | sources
    out = {}
    for name, texts in rows.items():
        before, after = tokens_per_char(old_tok, texts), tokens_per_char(new_tok, texts)
        out[name] = {
            "chars": sum(len(t) for t in texts),
            "tokens_per_char_before": round(before, 4),
            "tokens_per_char_after": round(after, 4),
            "fewer_tokens": round(before / after, 3),
        }
    first = len(old_tok)
    used = {
        i
        for texts in sources.values()
        for ids in new_tok(texts, add_special_tokens=False)["input_ids"]
        for i in ids
        if i >= first
    }
    return {"tokens_per_char": out, "new_tokens_used_by_eval_text": len(used)}


def format_report(stats: dict, checks: dict, rep: dict) -> str:
    lines = [
        f"vocabulary: {stats['base_vocab']:,} → {stats['new_vocab']:,} ({stats['spelling']}); "
        f"{stats['added_domain_tokens']:,} domain tokens added, {stats['intermediate_tokens']:,} intermediate, "
        f"{stats['already_in_base']:,} already in the base"
        + (f", skipped: {stats['skipped']}" if stats["skipped"] else ""),
        f"old ids kept: all {checks['old_ids_kept']:,}; round trips exact: {checks['round_trip_exact']}/"
        f"{checks['round_trip_texts']} (base: {checks['round_trip_exact_before']}); new tokens produced from their "
        f"own text: {stats['added_domain_tokens'] - stats['never_produced']:,}/{stats['added_domain_tokens']:,}",
        f"{'text':<32}{'chars':>10}{'tokens/char before':>20}{'after':>10}{'fewer tokens':>14}",
    ]
    for name, r in rep["tokens_per_char"].items():
        lines.append(
            f"{name[:31]:<32}{r['chars']:>10,}{r['tokens_per_char_before']:>20.3f}{r['tokens_per_char_after']:>10.3f}"
            f"{r['fewer_tokens']:>13.2f}x"
        )
    if rep["new_tokens_used_by_eval_text"]:
        lines.append(f"{rep['new_tokens_used_by_eval_text']:,} distinct new tokens appear in the held-out text")
    return "\n".join(lines)
