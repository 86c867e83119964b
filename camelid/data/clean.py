"""`camelid clean`: a streaming cleaning pipeline for text corpora of any size (.txt, .jsonl, .json, .csv, .parquet).

    camelid clean corpus.jsonl notes.txt --out runs/clean [clean.languages=[zh] clean.pii=[email,phone] ...]
    camelid clean peoples_daily_1998 shakespeare --out runs/pd clean.ppl_reference=[ref.txt] clean.decontaminate=[mmlu]
    camelid clean clean.yaml                       # a config file whose `clean:` section lists the inputs

A document is a line of a .txt file, or the `clean.text_field` of a record. Each is normalized (NFKC, so full-width
ASCII becomes half-width; optionally Traditional → Simplified; invisible characters and extra blank lines go), then
meets the rules of `rules()` in order; the first that fires removes it:

    empty             nothing left after normalization
    exact_dup         the same normalized text seen before (8-byte BLAKE2b digests)
    length            fewer than clean.min_units units (a CJK character or a word) or more than clean.max_units
    symbols, digits   too large a share of symbols / digits among the non-space characters
    repeated_lines    too many lines repeat an earlier line (Gopher); repeated_ngrams: too many repeated n-grams
    language          too small a share of units in the scripts of clean.languages (zh: Han, en: Latin)
    benchmark         shares an n-gram (13 words, 25 CJK characters) with a question of clean.decontaminate
    perplexity        a character n-gram LM trained on clean.ppl_reference finds it too surprising (gibberish)
    near_dup          MinHash-LSH: Jaccard similarity of character shingles >= clean.near_dedup_threshold
                      with a document kept earlier (it is last because it is the costliest)

What survives has e-mails, phone numbers, ID and bank-card numbers masked (clean.pii) and is written to the output
folder, which is built beside its final name and renamed into place at the end (a crash leaves no half-written
corpus under that name):

    <input name>      the kept documents, in the input's format: .txt lines, or .jsonl records with their other
                      fields kept (.json/.csv/.parquet inputs are written as .jsonl)
    removed.jsonl     one line per removed document: source, line, rule, detail, the text's first 200 characters
    summary.md/.json  documents and MB removed per rule, PII masked per kind, MB/s; the table is printed too

Memory stays bounded on any corpus size: documents stream through in chunks (<= 1000 documents or 8 MB); what
grows is the dedup state (~150 bytes per distinct document, ~2-3 KB per kept document for near-dup; dedup.py),
plus the reference LM and the benchmark n-grams, fixed at the start.

The benchmark questions come from camelid.eval (`camelid clean` loads them and passes them to `main`), since
camelid.data may not import the layer above it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camelid import hub
from camelid.config import CleanConfig, Config, validate
from camelid.data import quality as Q
from camelid.data.dedup import BenchmarkIndex, ExactDedup, NearDedup
from camelid.data.ngram_lm import CharNgramLM
from camelid.data.pii import mask_pii
from camelid.data.readers import DataError, raw_records, type_name
from camelid.utils import CamelidError, atomic_dir, log, require, write_json

CHUNK_DOCS, CHUNK_BYTES = 1000, 8 << 20
SNIPPET = 200


@dataclass
class Doc:
    source: str  # the input as the user named it
    line: int
    text: str  # normalized
    record: dict | None  # the whole record (jsonl etc.), None for .txt
    size: int  # UTF-8 bytes of the original text

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# --------------------------------------------------------------------------------------------- inputs


def resolve_input(spec: str, text_field: str) -> tuple[Path, str]:
    """(file, text field) for a file, or for a catalog text corpus (e.g. peoples_daily_1998) pulled if needed."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p, text_field
    hit = None if p.suffix else hub.resolve_dataset(spec)
    if hit is None:
        raise CamelidError(f"clean: input '{spec}' is not a file" + ("" if p.suffix else " nor a catalog dataset"))
    folder, name = hit
    entry = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))[name]
    columns = entry.get("columns") or {}
    if set(columns) != {"prompt"}:
        raise CamelidError(f"clean: catalog dataset '{name}' is not a plain text corpus; give its file instead")
    return folder / entry["file_name"], columns["prompt"]


def _stream_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text, bytes) of a .txt/.jsonl file, read as bytes so progress counts real MB."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, n, None, f"not UTF-8 (byte {e.start} of the line)") from None
            yield n, text.rstrip("\r\n"), len(raw)


def read_docs(path: Path, source: str, text_field: str) -> Iterator[tuple[int, int, dict | None, str | DataError]]:
    """(line, bytes, record or None, text or the DataError of a bad record) for each document of one input."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for n, text, size in _stream_lines(path):
            if text.strip():
                yield n, size, None, text
            # blank lines separate nothing in a line-per-document file: skipped, as readers.py does
        return
    if suffix == ".jsonl":
        for n, line, size in _stream_lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, size, None, DataError(source, n, None, f"bad JSON: {e.msg} (column {e.colno})")
                continue
            yield n, size, rec, _text_of(rec, source, n, text_field)
        return
    for n, rec in raw_records(path):  # .json/.csv/.parquet: no byte offsets; progress jumps per file
        yield (
            n,
            0,
            rec if isinstance(rec, dict) else None,
            rec if isinstance(rec, DataError) else _text_of(rec, source, n, text_field),
        )


def _text_of(rec, source: str, line: int, field: str) -> str | DataError:
    if not isinstance(rec, dict):
        return DataError(source, line, None, f"expected a JSON object (one record), got {type_name(rec)}")
    value = rec.get(field)
    if value is None:
        return DataError(
            source,
            line,
            field,
            f"missing (set clean.text_field to the field holding the text; "
            f"this record has {', '.join(sorted(rec)) or 'no fields'})",
        )
    if not isinstance(value, str):
        return DataError(source, line, field, f"expected a string, got {type_name(value)}")
    return value


def output_name(path: Path, taken: set[str]) -> str:
    name = path.name if path.suffix.lower() in (".txt", ".jsonl") else path.stem + ".jsonl"
    if name in taken or name in ("removed.jsonl", "summary.json", "summary.md"):
        raise CamelidError(
            f"clean: two inputs (or an input and an output file) would both be written as {name}; rename one"
        )
    taken.add(name)
    return name


# -------------------------------------------------------------------------------------------- rules


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
            for _, _, _, text in read_docs(path, spec, field):
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
            mine = [t for t in mine if len(Q.units(t)) >= self.min_units]
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
        judged = [i for i, t in enumerate(texts) if len(Q.units(t)) >= self.min_units]
        reasons: list[str | None] = [None] * len(texts)
        for i, ppl in zip(judged, self.lm.perplexities([texts[i] for i in judged])):
            limit = self.thresholds[self._group(texts[i])]
            if ppl > limit:
                reasons[i] = f"perplexity {ppl:.1f} > {limit:.1f}"
        return reasons


Rule = Callable[[Doc], "str | None"]


def rules(
    c: CleanConfig, benchmarks: BenchmarkIndex | None, ppl: PerplexityFilter | None
) -> list[tuple[str, Rule | Callable[[list[str]], list[str | None]], bool]]:
    """(name, rule, batched) in the order documents meet them. A batched rule takes the chunk's texts at once."""
    table: list[tuple[str, Callable, bool]] = [("empty", lambda d: None if d.text else "nothing left", False)]
    if c.exact_dedup:
        exact = ExactDedup()
        table.append(("exact_dup", lambda d: exact(d.text, d.where), False))
    table += [
        ("length", lambda d: Q.length(d.text, c.min_units, c.max_units), False),
        ("symbols", lambda d: Q.symbol_heavy(d.text, c.max_symbol_share), False),
        ("digits", lambda d: Q.digit_heavy(d.text, c.max_digit_share), False),
        ("repeated_lines", lambda d: Q.repeated_lines(d.text, c.max_repeated_line_share), False),
        ("repeated_ngrams", lambda d: Q.repeated_ngrams(d.text, c.repeat_ngram, c.max_repeated_ngram_share), False),
    ]
    if c.languages:
        table.append(("language", lambda d: Q.language(d.text, c.languages, c.min_language_share), False))
    if benchmarks is not None:
        table.append(("benchmark", lambda d: benchmarks(d.text), False))
    if ppl is not None:
        table.append(("perplexity", ppl, True))
    if c.near_dedup:
        near = NearDedup(c.near_dedup_threshold, c.minhash_perm, c.shingle)
        table.append(("near_dup", lambda d: near(d.text, d.where), False))
    return table


# --------------------------------------------------------------------------------------------- the run


def main(cfg: Config, benchmarks: dict[str, str] | None = None) -> dict:
    """Clean cfg.clean.inputs into cfg.clean.out. `benchmarks` maps item ids to the benchmark texts to decontaminate
    against (the CLI fills it from clean.decontaminate). Returns the summary."""
    from tqdm import tqdm

    c = validate(cfg, "clean").clean
    t_start = time.time()
    t2s = require("opencc", "clean").OpenCC("t2s").convert if c.t2s else None
    normalizer = lambda text: Q.normalize(text, nfkc=c.nfkc, t2s=t2s)  # noqa: E731
    inputs = [(spec, *resolve_input(spec, c.text_field)) for spec in c.inputs]
    index = BenchmarkIndex(benchmarks, c.decontam_ngram, c.decontam_ngram_zh) if benchmarks else None
    if index is not None and index.too_short:
        log.warning(
            f"{len(index.too_short)} of {len(index.names)} benchmark items are shorter than their n-gram "
            f"(clean.decontam_ngram/_zh) and cannot be checked, e.g. {index.too_short[0]}"
        )
    ppl = PerplexityFilter(c, normalizer) if c.ppl_reference else None
    table = rules(c, index, ppl)
    setup_s = time.time() - t_start

    removed: Counter = Counter()
    removed_bytes: Counter = Counter()
    pii: Counter = Counter()
    seconds: Counter = Counter()  # per rule: where the time goes
    stats = {"docs": 0, "kept": 0, "bytes_in": 0, "bytes_kept": 0}
    total = sum(path.stat().st_size for _, path, _ in inputs)
    t0 = time.time()
    with (
        atomic_dir(c.out) as tmp,
        open(tmp / "removed.jsonl", "w", encoding="utf-8") as rm_file,
        tqdm(total=total, unit="B", unit_scale=True, desc="clean", mininterval=1.0) as bar,
    ):

        def drop(doc: Doc, rule: str, detail: str) -> None:
            removed[rule] += 1
            removed_bytes[rule] += doc.size
            rm_file.write(
                json.dumps(
                    {
                        "source": doc.source,
                        "line": doc.line,
                        "rule": rule,
                        "detail": detail,
                        "text": doc.text[:SNIPPET],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )

        def flush(chunk: list[Doc], out, fmt: str, field: str) -> None:
            # Runs of per-document rules go document by document (a document's units stay cached from rule to
            # rule); a batched rule sees the chunk's survivors at once. Each document meets the rules in order.
            for batched, run in itertools.groupby(table, key=lambda entry: entry[2]):
                run = list(run)
                if not batched:
                    chunk = [d for d in chunk if _passes(d, run, drop, seconds)]
                    continue
                for name, rule, _ in run:
                    t = time.perf_counter()
                    reasons = rule([d.text for d in chunk])
                    seconds[name] += time.perf_counter() - t
                    for d, r in zip(chunk, reasons):
                        if r is not None:
                            drop(d, name, r)
                    chunk = [d for d, r in zip(chunk, reasons) if r is None]
            t = time.perf_counter()
            for d in chunk:
                text, found = mask_pii(d.text, c.pii) if c.pii else (d.text, None)
                if found:
                    pii.update(found)
                stats["kept"] += 1
                stats["bytes_kept"] += len(text.encode("utf-8"))
                if fmt == "txt":
                    out.write(text.replace("\n", " ") + "\n")  # a .txt document is one line
                else:
                    out.write(json.dumps({**d.record, field: text}, ensure_ascii=False) + "\n")
            seconds["pii + write"] += time.perf_counter() - t

        taken: set[str] = set()
        for spec, path, field in inputs:
            name = output_name(path, taken)
            fmt = "txt" if name.endswith(".txt") else "jsonl"
            chunk, chunk_bytes, read_bytes = [], 0, 0
            with open(tmp / name, "w", encoding="utf-8") as out:
                for line, size, record, text in read_docs(path, spec, field):
                    stats["docs"] += 1
                    read_bytes += size
                    bar.update(size)
                    if isinstance(text, DataError):
                        if c.on_error == "fail":
                            raise text
                        drop(
                            Doc(spec, line, "", record, size),
                            "bad_record",
                            text.reason if not text.field else f"field '{text.field}': {text.reason}",
                        )
                        continue
                    t = time.perf_counter()
                    chunk.append(Doc(spec, line, normalizer(text), record, len(text.encode("utf-8"))))
                    seconds["normalize"] += time.perf_counter() - t
                    chunk_bytes += size
                    if len(chunk) >= CHUNK_DOCS or chunk_bytes >= CHUNK_BYTES:
                        flush(chunk, out, fmt, field)
                        chunk, chunk_bytes = [], 0
                if chunk:
                    flush(chunk, out, fmt, field)
            bar.update(path.stat().st_size - read_bytes)  # .json/.csv/.parquet report no per-record bytes
            stats["bytes_in"] += path.stat().st_size
        summary = _summary(c, stats, removed, removed_bytes, pii, time.time() - t0, setup_s, ppl, index, seconds)
        write_json(tmp / "summary.json", summary)
        (tmp / "summary.md").write_text(summary_table(summary) + "\n", encoding="utf-8")
    print(summary_table(summary))
    print(f"kept corpus, removed.jsonl and summary in {c.out}")
    return summary


def _passes(doc: Doc, table: list, drop: Callable[[Doc, str, str], None], seconds: Counter) -> bool:
    for name, rule, _ in table:
        t = time.perf_counter()
        reason = rule(doc)
        seconds[name] += time.perf_counter() - t
        if reason is not None:
            drop(doc, name, reason)
            return False
    return True


def _summary(
    c: CleanConfig,
    stats: dict,
    removed: Counter,
    removed_bytes: Counter,
    pii: Counter,
    seconds: float,
    setup_s: float,
    ppl: PerplexityFilter | None,
    index: BenchmarkIndex | None,
    rule_s: Counter,
) -> dict:
    docs, mb = max(stats["docs"], 1), stats["bytes_in"] / 1e6
    return {
        "inputs": c.inputs,
        "out": c.out,
        "documents": stats["docs"],
        "kept": stats["kept"],
        "mb_in": round(mb, 3),
        "mb_kept": round(stats["bytes_kept"] / 1e6, 3),
        "seconds": round(seconds, 2),
        "setup_seconds": round(setup_s, 2),
        "mb_per_s": round(mb / seconds, 3) if seconds else None,
        "removed": {
            rule: {"documents": n, "share": round(n / docs, 4), "mb": round(removed_bytes[rule] / 1e6, 3)}
            for rule, n in removed.most_common()
        },
        "pii_masked": dict(pii.most_common()),
        "rule_seconds": {k: round(v, 2) for k, v in rule_s.most_common()},
        "perplexity_thresholds": ppl.thresholds if ppl else None,
        "benchmark_items": len(index.names) if index else 0,
        "benchmark_items_unchecked": len(index.too_short) if index else 0,
    }


def summary_table(s: dict) -> str:
    lines = [
        f"{s['documents']} documents ({s['mb_in']:.2f} MB) -> {s['kept']} kept ({s['mb_kept']:.2f} MB) in "
        f"{s['seconds']:.1f} s, {s['mb_per_s'] or 0:.2f} MB/s (+{s['setup_seconds']:.1f} s setup)",
        "",
        "| rule | documents removed | share of documents | MB removed |",
        "|---|---|---|---|",
    ]
    for rule, r in s["removed"].items():
        lines.append(f"| {rule} | {r['documents']} | {r['share']:.2%} | {r['mb']:.3f} |")
    kept_share = s["kept"] / max(s["documents"], 1)
    lines.append(f"| **kept** | {s['kept']} | {kept_share:.2%} | {s['mb_kept']:.3f} |")
    lines += ["", "seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in s["rule_seconds"].items())]
    if s["pii_masked"]:
        lines += ["", "PII masked: " + ", ".join(f"{k} {v}" for k, v in s["pii_masked"].items())]
    if s["perplexity_thresholds"]:
        lines += [
            "",
            "perplexity thresholds: " + ", ".join(f"{k} {v:.1f}" for k, v in s["perplexity_thresholds"].items()),
        ]
    if s["benchmark_items"]:
        lines += [
            "",
            f"decontaminated against {s['benchmark_items']} benchmark items "
            f"({s['benchmark_items_unchecked']} too short to check)",
        ]
    return "\n".join(lines)
