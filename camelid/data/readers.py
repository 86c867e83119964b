"""File readers: (line number, record) from .jsonl / .json / .csv / .parquet / .txt, and `DataError`.

Line numbers are what a person opening the file sees: the line where a JSON array element starts,
the first line of a CSV row, the row index + 1 of a Parquet file.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from camelid.utils import CamelidError, require

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet", ".txt")


class DataError(CamelidError):
    """A bad record: `path:line: field 'f': reason`."""

    def __init__(self, path: Any, line: int | None, field: str | None, reason: str):
        self.path, self.line, self.field, self.reason = path, line, field, reason
        where = f"{path}" if path is not None else "<record>"
        where += f":{line}" if line is not None else ""
        super().__init__(f"{where}: field '{field}': {reason}" if field else f"{where}: {reason}")

    def __reduce__(self):  # picklable across worker processes despite the 4-argument constructor
        return DataError, (self.path, self.line, self.field, self.reason)


def type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a .jsonl/.json/.csv/.parquet/.txt file; raise on a bad one."""
    for line, rec in raw_records(Path(path)):
        if isinstance(rec, DataError):
            raise rec
        yield line, rec


def raw_records(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    # Per-record problems are yielded (so "skip" can count them and go on); a broken file raises.
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            path, None, None, f"unsupported file type '{path.suffix or path.name}'; supported: {' '.join(SUPPORTED)}"
        )
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    for line, rec in reader(path):
        if not isinstance(rec, (dict, DataError)):
            rec = DataError(path, line, None, f"expected a JSON object (one record), got {type_name(rec)}")
        yield line, rec


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, DataError(path, n, None, f"bad JSON: {e.msg} (column {e.colno})")


_WS = re.compile(r"\s*")


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    # Walk the array element by element so each record gets the line where it starts.
    text = path.read_text(encoding="utf-8-sig")
    decoder, i, pos, line = json.JSONDecoder(), _WS.match(text).end(), 0, 1
    if i == len(text):
        return
    if text[i] != "[":
        hint = " (it looks like JSON Lines: name the file .jsonl)" if text[i] == "{" else ""
        raise DataError(path, text.count("\n", 0, i) + 1, None, "expected a top-level JSON array of records" + hint)
    i = _WS.match(text, i + 1).end()
    while not text.startswith("]", i):
        line, pos = line + text.count("\n", pos, i), i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, f"bad JSON: {e.msg} (column {e.colno})") from None
        yield line, obj
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif not text.startswith("]", i):
            raise DataError(path, text.count("\n", 0, i) + 1, None, "expected ',' or ']' after a record")
    if _WS.match(text, i + 1).end() != len(text):
        raise DataError(path, text.count("\n", 0, i) + 1, None, "unexpected text after the closing ']'")


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        last = reader.line_num
        for row in reader:
            # A quoted cell may span lines: a row starts right after the previous one ended.
            start, last = last + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is not None and len(row) != len(header):
                yield start, DataError(path, start, None, f"row has {len(row)} cells, the header has {len(header)}")
            else:
                yield start, dict(zip(header or [], row))


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    pq = require("pyarrow.parquet", "parquet")
    n = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _read_txt(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for n, text in enumerate(f, 1):
            if text.strip():
                yield n, {"text": text.rstrip("\r\n")}


_READERS: dict[str, Callable[[Path], Iterator[tuple[int, Any]]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}
