"""One shard of `camelid clean`, in a worker: normalize, judge each document by the rules that need no other
document, mask PII, and write what the merge needs. Dedup, which needs every shard, is the merge's (clean.py).

    stats = clean_shard(ShardContext(cfg.clean, benchmarks, ppl), (shard, work_dir), report)

A document's fate here is one `state`: it passes every per-document rule (0), it is a bad record (-1), or the
k-th rule of `rules()` removed it. The merge then applies the order of the rules: `empty` first, then exact
dedup, then the rest, then near dedup, so the result is the one a single pass over the corpus in input order gives
for any number of shards. A document that only a later rule removes still has its digest taken: an exact copy
of it further on is an `exact_dup`, as in one pass.

Written into the shard's folder (built beside it and renamed in when complete, so a resumed run trusts any
folder it finds):

    meta.npy         per document: local line, input bytes, digest, state, bytes written if kept
    removed.jsonl    per removed document, in order: [rule, detail, first 200 characters]
    kept.txt         per passing document, in order: its output line (a .txt line, or the .jsonl record)
    passing.jsonl    per passing document: [first 200 characters, {PII kind: count}]
    signatures.npy   per passing document: its MinHash signature (uint32), when clean.near_dedup
    bands.npy        and its LSH band keys (uint64)
    stats.json       documents, bytes, lines, seconds per rule
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camelid.config import CleanConfig
from camelid.data import quality as Q
from camelid.data.dedup import BenchmarkIndex, MinHasher, digest
from camelid.data.ngram_lm import CharNgramLM
from camelid.data.pii import mask_pii
from camelid.data.readers import DataError
from camelid.data.shards import Shard, line_count, line_offset, read_docs, resolve_input
from camelid.utils import CamelidError, log, require, write_json

CHUNK_DOCS, CHUNK_BYTES = 1000, 8 << 20
SNIPPET = 200
META = np.dtype([("line", "<i8"), ("size", "<i8"), ("digest", "<u8"), ("state", "i1"), ("out_bytes", "<i8")])
PASSES, BAD_RECORD = 0, -1


class PerplexityFilter:
    """Per-character perplexity under a char n-gram LM of the reference. The threshold is clean.ppl_max, or else
    the clean.ppl_quantile of the perplexities of held-out reference documents (every 10th; their paragraphs when
    fewer than 20), taken separately for Chinese (Han share >= 0.5) and other text, since a Chinese character
    carries far more surprise than a letter (held-out per-char perplexity ~65 on People's Daily, ~5 on
    Shakespeare). A script the held-out reference has no text of gets no threshold: its documents are kept."""

    def __init__(self, c: CleanConfig, normalizer: Callable[[str], str]):
        train, held, n = [], [], 0
        for spec in c.ppl_reference:
            path, field = resolve_input(spec, c.text_field)
            for _, _, _, text in read_docs(Shard(0, spec, str(path), field, 0, -1)):
                if isinstance(text, DataError):
                    raise text
                n += 1
                (held if n % 10 == 0 else train).append(normalizer(text))
        if len(train) + len(held) < 10:
            raise CamelidError(f"clean.ppl_reference has {len(train) + len(held)} documents; give at least 10")
        t0 = time.time()
        self.lm = CharNgramLM.train(train, order=c.ppl_order)
        self.min_units = c.ppl_min_units
        self.thresholds = {}
        for g in ("zh", "other"):
            mine = [t for t in held if self._group(t) == g]
            if len(mine) < 20:  # a few long documents (books): their paragraphs make a distribution
                mine = [p for t in mine for p in t.split("\n\n")]
            mine = [t for t in mine if Q.unit_count(t) >= self.min_units]
            if c.ppl_max or not mine:
                # no held-out text of this script: the reference says nothing about it, so it is not judged
                self.thresholds[g] = c.ppl_max or float("inf")
                continue
            self.thresholds[g] = float(np.quantile(self.lm.perplexities(mine), c.ppl_quantile))
        log.info(
            f"perplexity LM: {sum(map(len, train)) / 1e6:.1f}M reference characters, order {c.ppl_order}, "
            f"trained in {time.time() - t0:.1f} s; thresholds "
            + ", ".join(f"{g} {v:.1f}" for g, v in self.thresholds.items())
        )

    @staticmethod
    def _group(text: str) -> str:
        counts = Q.script_counts(text)
        return "zh" if counts["zh"] >= 0.5 * max(1, sum(counts.values())) else "other"

    def __call__(self, texts: list[str]) -> list[str | None]:
        judged = [i for i, t in enumerate(texts) if Q.unit_count(t) >= self.min_units]
        reasons: list[str | None] = [None] * len(texts)
        for i, ppl in zip(judged, self.lm.perplexities([texts[i] for i in judged])):
            limit = self.thresholds[self._group(texts[i])]
            if ppl > limit:
                reasons[i] = f"perplexity {ppl:.1f} > {limit:.1f}"
        return reasons


@dataclass
class ShardContext:
    """What every shard's worker shares: the settings and the indexes built once at the start."""

    c: CleanConfig
    benchmarks: BenchmarkIndex | None
    ppl: PerplexityFilter | None


def rules(ctx: ShardContext) -> list[tuple[str, Callable, bool]]:
    """(name, rule, batched): a rule takes a text and says why it goes (or None); a batched one takes a chunk's."""
    c, index = ctx.c, ctx.benchmarks
    table: list[tuple[str, Callable, bool]] = [
        ("empty", lambda t: None if t else "nothing left", False),
        ("length", lambda t: Q.length(t, c.min_units, c.max_units), False),
        ("symbols", lambda t: Q.symbol_heavy(t, c.max_symbol_share), False),
        ("digits", lambda t: Q.digit_heavy(t, c.max_digit_share), False),
        ("repeated_lines", lambda t: Q.repeated_lines(t, c.max_repeated_line_share), False),
        ("repeated_ngrams", lambda t: Q.repeated_ngrams(t, c.repeat_ngram, c.max_repeated_ngram_share), False),
    ]
    if c.languages:
        table.append(("language", lambda t: Q.language(t, c.languages, c.min_language_share), False))
    if index is not None:
        table.append(("benchmark", index, False))
    if ctx.ppl is not None:
        table.append(("perplexity", ctx.ppl, True))
    return table


def normalizer(c: CleanConfig) -> Callable[[str], str]:
    t2s = require("opencc", "clean").OpenCC("t2s").convert if c.t2s else None
    return lambda text: Q.normalize(text, nfkc=c.nfkc, t2s=t2s)


def clean_shard(ctx: ShardContext, job: tuple[Shard, str], report: Callable[[int], None]) -> dict:
    """Clean one shard into work/shard-NNNNN/; returns its stats."""
    shard, work = job
    final = Path(work) / f"shard-{shard.index:05d}"
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stats = _clean_into(ctx, shard, tmp, report)
    except DataError as e:  # name the file's line, not the shard's
        shutil.rmtree(tmp, ignore_errors=True)
        if shard.start == 0 or e.line is None:
            raise
        raise DataError(e.path, e.line + line_offset(shard), e.field, e.reason) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)
    return stats


def _clean_into(ctx: ShardContext, shard: Shard, out: Path, report: Callable[[int], None]) -> dict:
    c = ctx.c
    table, norm = rules(ctx), normalizer(c)
    hasher = MinHasher(c.near_dedup_threshold, c.minhash_perm, c.shingle) if c.near_dedup else None
    jsonl = not shard.path.lower().endswith(".txt")
    seconds: Counter = Counter()
    meta: list[tuple] = []
    signatures: list[np.ndarray] = []  # (passing documents of a chunk, minhash_perm) each
    stats = {"documents": 0, "bytes": 0, "lines": 0}

    with (
        open(out / "removed.jsonl", "w", encoding="utf-8") as removed,
        open(out / "kept.txt", "w", encoding="utf-8") as kept,
        open(out / "passing.jsonl", "w", encoding="utf-8") as passing,
    ):

        def flush(chunk: list[tuple[int, int, dict | None, str | DataError]]) -> None:
            # bad records keep their place in the chunk, so meta.npy and removed.jsonl stay in line order
            good = [i for i, doc in enumerate(chunk) if not isinstance(doc[3], DataError)]
            states, details = [BAD_RECORD] * len(chunk), [None] * len(chunk)
            for i, state, detail in zip(good, *_judge(table, [chunk[i][3] for i in good], seconds)):
                states[i], details[i] = state, detail
            t = time.perf_counter()
            for (line, size, record, text), state, detail in zip(chunk, states, details):
                if state == BAD_RECORD:
                    reason = text.reason if not text.field else f"field '{text.field}': {text.reason}"
                    removed.write(json.dumps(["bad_record", reason, ""]) + "\n")
                    meta.append((line, size, 0, BAD_RECORD, 0))
                    continue
                key = digest(text) if text else 0
                if state != PASSES:
                    removed.write(json.dumps([table[state - 1][0], detail, text[:SNIPPET]], ensure_ascii=False) + "\n")
                    meta.append((line, size, key, state, 0))
                    continue
                masked, found = mask_pii(text, c.pii) if c.pii else (text, None)
                if jsonl:
                    kept.write(json.dumps({**record, shard.field: masked}, ensure_ascii=False) + "\n")
                else:
                    kept.write(masked.replace("\n", " ") + "\n")  # a .txt document is one line
                passing.write(json.dumps([text[:SNIPPET], found or {}], ensure_ascii=False) + "\n")
                meta.append((line, size, key, state, len(masked.encode("utf-8"))))
            seconds["pii + write"] += time.perf_counter() - t
            if hasher is not None:
                t = time.perf_counter()
                signatures.append(hasher.signatures([doc[3] for doc, state in zip(chunk, states) if state == PASSES]))
                seconds["near_dup"] += time.perf_counter() - t

        chunk, chunk_bytes, read, reported = [], 0, 0, 0
        for line, size, record, text in read_docs(shard):
            stats["documents"] += 1
            read += size
            if isinstance(text, DataError):
                if c.on_error == "fail":
                    raise text
                chunk.append((line, size, None, text))
            else:
                t = time.perf_counter()
                # .jsonl output keeps the record's other fields; the masked text goes back into its field
                chunk.append((line, len(text.encode("utf-8")), record if jsonl else None, norm(text)))
                seconds["normalize"] += time.perf_counter() - t
            chunk_bytes += size
            if len(chunk) >= CHUNK_DOCS or chunk_bytes >= CHUNK_BYTES:
                flush(chunk)
                report(read - reported)
                chunk, chunk_bytes, reported = [], 0, read
        if chunk:
            flush(chunk)
    stats["bytes"] = shard.size
    report(stats["bytes"] - reported)  # .json/.csv/.parquet records carry no byte counts: the rest at once
    stats["lines"] = line_count(shard)
    np.save(out / "meta.npy", np.array(meta, dtype=META))
    if hasher is not None:
        sig = np.concatenate(signatures) if signatures else np.zeros((0, c.minhash_perm), np.uint32)
        np.save(out / "signatures.npy", sig)
        np.save(out / "bands.npy", hasher.band_keys(sig))
    stats["seconds"] = dict(seconds)
    write_json(out / "stats.json", stats)
    return stats


def _judge(table: list, texts: list[str], seconds: Counter) -> tuple[list[int], list[str | None]]:
    """Each text's state (0, or the number of the first rule removing it) and that rule's detail. Per-document
    rules (the table's first) run text by text, every rule on one text before the next text, so the units and
    script counts they share are computed once per text (the units' cache holds the last few texts); then
    each batched rule sees the texts still in at once."""
    states, details = [PASSES] * len(texts), [None] * len(texts)
    single = [(k, name, rule) for k, (name, rule, batched) in enumerate(table, 1) if not batched]
    assert all(batched for _, _, batched in table[len(single) :]), "per-document rules come before batched ones"
    clock = time.perf_counter
    for i, text in enumerate(texts):
        for k, name, rule in single:
            t = clock()
            reason = rule(text)
            seconds[name] += clock() - t
            if reason is not None:
                states[i], details[i] = k, reason
                break
    for k, (name, rule, _) in enumerate(table[len(single) :], len(single) + 1):
        live = [i for i, s in enumerate(states) if s == PASSES]
        t = clock()
        reasons = rule([texts[i] for i in live])
        seconds[name] += clock() - t
        for i, reason in zip(live, reasons):
            if reason is not None:
                states[i], details[i] = k, reason
    Q.forget_texts()
    return states, details
