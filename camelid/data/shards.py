"""A corpus cut into shards that workers clean independently: whole files, and large .txt/.jsonl files in byte
ranges that start and end on line boundaries.

    shards = plan(inputs, shard_bytes)        # [Shard(index, source, path, field, start, end), ...] in input order
    for line, size, record, text in read_docs(shard): ...    # line numbers count from the shard's first line

A shard's documents are the ones whose lines start inside its range, so concatenating the shards of a file gives
the file's documents in order. Line numbers inside a shard are local: the shard's line count is recorded and
the merge adds the line counts of the shards before it (`line_offset`), so no worker has to read the file from
its beginning. .json/.csv/.parquet files have no byte offsets per record and are one shard each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from camelid import hub
from camelid.data.readers import DataError, raw_records, type_name
from camelid.utils import CamelidError

SPLITTABLE = (".txt", ".jsonl")


@dataclass(frozen=True)
class Shard:
    index: int  # position in the plan: the merge goes in this order
    source: str  # the input as the user named it
    path: str
    field: str  # the record field holding the text
    start: int  # byte range [start, end) of the file; end = -1: the whole file
    end: int

    @property
    def size(self) -> int:
        return (self.end if self.end >= 0 else Path(self.path).stat().st_size) - self.start


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


def plan(inputs: list[tuple[str, Path, str]], shard_bytes: int) -> list[Shard]:
    """Shards of (spec, file, field) inputs, each near `shard_bytes`; a cut moves forward to the next line start."""
    shards: list[Shard] = []
    for spec, path, field in inputs:
        size = path.stat().st_size
        if path.suffix.lower() not in SPLITTABLE or size <= shard_bytes:
            shards.append(Shard(len(shards), spec, str(path), field, 0, -1))
            continue
        cuts = [0]
        with open(path, "rb") as f:
            while cuts[-1] + shard_bytes < size:
                f.seek(cuts[-1] + shard_bytes - 1)
                f.readline()  # the cut lands after the newline ending the line that holds this byte
                if f.tell() >= size:
                    break
                cuts.append(f.tell())
        ends = cuts[1:] + [-1]
        shards += [Shard(len(shards) + i, spec, str(path), field, a, b) for i, (a, b) in enumerate(zip(cuts, ends))]
    return shards


def line_offset(shard: Shard) -> int:
    """Lines of the shard's file before its range: for an error message, which must name the file's own line."""
    return _newlines(shard.path, 0, shard.start)


def line_count(shard: Shard) -> int:
    """Lines in the shard's range (the last one may lack its newline): what the next shard's numbers start after."""
    end = shard.start + shard.size
    count = _newlines(shard.path, shard.start, end)
    if end > shard.start:
        with open(shard.path, "rb") as f:
            f.seek(end - 1)
            count += f.read(1) != b"\n"
    return count


def _newlines(path: str, start: int, end: int) -> int:
    count, left = 0, end - start
    with open(path, "rb") as f:
        f.seek(start)
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _lines(shard: Shard) -> Iterator[tuple[int, str, int]]:
    """(local line number, text, bytes) of a .txt/.jsonl shard, read as bytes so progress counts real MB."""
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        pos = shard.start
        for n, raw in enumerate(f, 1):
            if 0 <= shard.end <= pos:
                return
            pos += len(raw)
            try:
                text = raw.decode("utf-8-sig" if n == 1 and shard.start == 0 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(shard.source, n, None, f"not UTF-8 (byte {e.start} of the line)") from None
            yield n, text.rstrip("\r\n"), len(raw)


def read_docs(shard: Shard) -> Iterator[tuple[int, int, dict | None, str | DataError]]:
    """(local line, bytes, record or None, text or the DataError of a bad record) for each document of a shard."""
    suffix = Path(shard.path).suffix.lower()
    source, field = shard.source, shard.field
    if suffix == ".txt":
        for n, text, size in _lines(shard):
            if text.strip():
                yield n, size, None, text
            # blank lines separate nothing in a line-per-document file: skipped, as readers.py does
        return
    if suffix == ".jsonl":
        for n, line, size in _lines(shard):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, size, None, DataError(source, n, None, f"bad JSON: {e.msg} (column {e.colno})")
                continue
            yield n, size, rec, _text_of(rec, source, n, field)
        return
    for n, rec in raw_records(Path(shard.path)):  # .json/.csv/.parquet: no byte offsets; progress jumps per file
        yield (
            n,
            0,
            rec if isinstance(rec, dict) else None,
            rec if isinstance(rec, DataError) else _text_of(rec, source, n, field),
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
    name = path.name if path.suffix.lower() in SPLITTABLE else path.stem + ".jsonl"
    if name in taken or name in ("removed.jsonl", "summary.json", "summary.md"):
        raise CamelidError(
            f"clean: two inputs (or an input and an output file) would both be written as {name}; rename one"
        )
    taken.add(name)
    return name
