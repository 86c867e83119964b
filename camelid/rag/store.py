"""A knowledge base on disk: one folder holding the documents, their chunks, a BM25 index and a vector index.

    <root>/<name>/kb.json          the encoder and chunking it was built with (fixed for its life)
    <root>/<name>/files/...        a copy of every document, under its stored name
    <root>/<name>/kb.sqlite        documents, chunks (text, heading path, position, embedding) and an FTS5 table
    <root>/<name>/vectors-G.faiss  the vector index at generation G (a cache: rebuilt from kb.sqlite if missing)

Stored names are relative POSIX paths checked to stay inside files/, so neither a command-line argument nor a
name sent over HTTP can write or delete outside the folder. Each document is committed in its own SQLite
transaction: an interrupted `kb add` keeps every document it finished. Re-adding a name whose bytes changed
(sha256) replaces its chunks; unchanged files are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from camelid.config import RagConfig
from camelid.hub import entry_of
from camelid.rag.chunk import chunk_blocks
from camelid.rag.embed import Encoder, encoder
from camelid.rag.readers import SUFFIXES, read_blocks
from camelid.rag.terms import terms
from camelid.utils import CamelidError, follow_umask, log, require, sha256_file, write_json

KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES docs(id),
    ord INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL, kind TEXT NOT NULL, start INTEGER NOT NULL,
    end INTEGER NOT NULL, n_tokens INTEGER NOT NULL, vec BLOB NOT NULL, unknown REAL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(terms, tokenize = 'porter unicode61 remove_diacritics 2');
"""


def kb_root(cfg: RagConfig) -> Path:
    from camelid.hub import camelid_home

    return Path(cfg.root).expanduser() if cfg.root else camelid_home() / "kb"


def kb_folder(name_or_path: str, cfg: RagConfig) -> Path:
    """A bare name lives under rag.root; anything with a slash (./handbook, /srv/kb/handbook) is a folder path
    given by the user. The server only ever looks names up among the knowledge bases it was started with."""
    if "/" in name_or_path:
        return Path(name_or_path).expanduser()
    if not KB_NAME.fullmatch(name_or_path):
        raise CamelidError(
            f"knowledge base name '{name_or_path}' is not allowed: use letters, digits, '.', '_' "
            "and '-' (at most 64, not starting with '.'), or give a folder path"
        )
    return kb_root(cfg) / name_or_path


def safe_name(name: str) -> str:
    """A stored document name as a normalised relative POSIX path; anything that could leave files/ is refused."""
    if not name or "\x00" in name or "\\" in name:
        raise CamelidError(f"document name {name!r} is not allowed")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or name.startswith("~"):
        raise CamelidError(f"document name '{name}' would point outside the knowledge base")
    return p.as_posix().removeprefix("./")


# Exact search reads every vector: with 384-d vectors on 2 cores it took 4.3 ms at 19k chunks and 40 ms at 190k, as long
# as encoding the question (multilingual-e5-small, ~45 ms); IVF reading 64 lists took 3.3 ms at 190k and kept 90% of
# exact search's 10 nearest (benchmarks/RESULTS.md, "exact vs IVF"). Below this size exactness is worth its cost.
ANN_ABOVE = 200_000
ANN_PROBE = 64  # IVF lists a query reads (32: 83% of the 10 nearest; 64: 90%)


def collect(paths: list[str]) -> tuple[list[tuple[Path, str]], dict[str, str]]:
    """(file, stored name) for each argument: a file is stored under its base name; a folder's supported files
    under 'folder/relative/path'. Hidden entries are skipped, and links leading out of the folder are not followed.
    Second, name → why for the files whose name cannot be stored (a backslash): they fail alone, the rest go on."""
    out: list[tuple[Path, str]] = []
    refused: dict[str, str] = {}

    def take(f: Path, name: str) -> None:
        try:
            out.append((f, safe_name(name)))
        except CamelidError as e:
            refused[name] = str(e)

    for arg in paths:
        src = Path(arg).expanduser()
        if src.is_file():
            take(src, src.name)
        elif src.is_dir():
            top = src.resolve()
            for f in sorted(src.rglob("*")):
                rel = f.relative_to(src)
                if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                    continue
                if f.suffix.lower() not in SUFFIXES:
                    continue
                if not f.resolve().is_relative_to(top):
                    log.warning(f"skipped {f}: a link leading out of {src}")
                    continue
                take(f, f"{top.name}/{rel.as_posix()}")
        else:
            raise CamelidError(f"{arg}: no such file or folder")
    return out, refused


def passage(heading: list[str] | tuple[str, ...], text: str) -> str:
    """What is embedded and indexed for a chunk: its heading path, then its text. A chunk under "Refunds" matches
    a question about refunds even when its own sentences never say the word."""
    return " > ".join(heading) + "\n" + text if heading else text


@dataclass
class AddReport:
    added: list[str]
    replaced: list[str]
    unchanged: list[str]
    failed: dict[str, str]
    chunks: int = 0
    pages: int = 0  # distinct (kind, loc) of the blocks read: PDF pages, or paragraphs of text files
    seconds: float = 0.0

    def fail(self, name: str, why: str) -> None:
        self.failed[name] = why
        log.error(why)


class KnowledgeBase:
    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self.name = folder.name
        self.db = sqlite3.connect(folder / "kb.sqlite", check_same_thread=False, timeout=30)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()  # one SQLite connection shared by the server's threads
        self._index, self._generation = None, -1
        # chunks.unknown (each chunk's [UNK] share to the encoder) came later: a base made before has no column
        # until its next `kb add`, which fills it; readers of such a base measure the share at query time
        self._recorded_unknown = "unknown" in {r[1] for r in self.db.execute("PRAGMA table_info(chunks)")}

    # ------------------------------------------------------------------ open / create

    @classmethod
    def open(cls, folder: Path, create: RagConfig | None = None) -> KnowledgeBase:
        """Open the knowledge base in `folder`; with `create`, make it (recording that config's encoder and
        chunking) if it does not exist yet."""
        meta_file = folder / "kb.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if create is not None:
                _check_settings(folder.name, meta, create)
            return cls(folder, meta)
        if create is None:
            raise CamelidError(f"no knowledge base at {folder} (make one with `camelid kb add {folder.name} FILE...`)")
        enc = encoder(create.embedding_model, create.embedding_batch)
        meta = {
            "embedding_model": create.embedding_model,
            "dim": enc.dim,
            "chunk_tokens": create.chunk_tokens,
            "chunk_overlap": create.chunk_overlap,
            "created": time.time(),
        }
        (folder / "files").mkdir(parents=True, exist_ok=True)
        write_json(meta_file, meta)
        return cls(folder, meta)

    def encoder_line(self) -> str:
        """ "encoder NAME (license: ...)": which vector space this knowledge base lives in, and on what terms."""
        name = self.meta["embedding_model"]
        return f"encoder {name}" + (f" (license: {lic})" if (lic := entry_of(name).get("license")) else "")

    def encoder(self, batch: int = 64, dtype: str = "auto") -> Encoder:
        return encoder(self.meta["embedding_model"], batch, dtype)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time per knowledge base, across processes."""
        with open(self.folder / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reading

    def generation(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def documents(self) -> list[dict]:
        with self.lock:
            rows = self.db.execute(
                "SELECT d.name, d.sha256, d.bytes, d.added, count(c.id) FROM docs d "
                "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id ORDER BY d.name"
            ).fetchall()
        return [{"name": n, "sha256": h, "bytes": b, "added": a, "chunks": c} for n, h, b, a, c in rows]

    def chunks(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.db.execute(
                "SELECT c.id, d.name, c.ord, c.text, c.heading, c.kind, c.start, c.end, c.n_tokens "
                f"FROM chunks c JOIN docs d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                ids,
            ).fetchall()
        return {
            r[0]: {
                "id": r[0],
                "source": r[1],
                "chunk": r[2],
                "text": r[3],
                "heading": json.loads(r[4]),
                "kind": r[5],
                "start": r[6],
                "end": r[7],
                "n_tokens": r[8],
            }
            for r in rows
        }

    def unknown_shares(self, ids: list[int], enc: Encoder) -> dict[int, float]:
        """{chunk id: the share of its passage's tokens (as embedded) that are [UNK] to the encoder}: recorded at
        `kb add`, so a query reads them instead of tokenizing its ~40 dense candidates (9 ms of a 45 ms hybrid
        query); measured here for chunks of a base built before they were recorded."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = (
                self.db.execute(f"SELECT id, unknown FROM chunks WHERE id IN ({marks})", ids).fetchall()
                if self._recorded_unknown
                else [(i, None) for i in ids]
            )
        shares = {cid: share for cid, share in rows if share is not None}
        missing = self.chunks([cid for cid, share in rows if share is None])
        texts = [passage(c["heading"], c["text"]) for c in missing.values()]
        shares.update(zip(missing, enc.unknown_shares(texts)))
        return shares

    def _record_unknown(self, enc: Encoder) -> None:
        """Give a base made before chunks.unknown existed the column and every chunk its share (in the writer), then
        mark it done in `meta`, so later adds do not scan the chunks table (its vectors and texts) for NULLs."""
        with self.lock, self.db:
            # asked of the file, not of this object: another process (a `kb add` beside a server) may have added it
            has_column = "unknown" in {r[1] for r in self.db.execute("PRAGMA table_info(chunks)")}
            done = self.db.execute("SELECT 1 FROM meta WHERE key = 'unknown_recorded'").fetchone()
            self._recorded_unknown = True
            if has_column and done:
                return
            if not has_column:
                self.db.execute("ALTER TABLE chunks ADD COLUMN unknown REAL")
            rows = self.db.execute("SELECT id, heading, text FROM chunks WHERE unknown IS NULL").fetchall()
        for start in range(0, len(rows), 512):  # tokenized outside the lock: queries go on meanwhile
            part = rows[start : start + 512]
            shares = enc.unknown_shares([passage(json.loads(h), t) for _, h, t in part])
            with self.lock, self.db:
                self.db.executemany(
                    "UPDATE chunks SET unknown = ? WHERE id = ?", [(u, r[0]) for u, r in zip(shares, part)]
                )
        with self.lock, self.db:  # only once every chunk has its share: an interrupted fill resumes next time
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('unknown_recorded', '1')")

    def size(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def index(self):
        """The faiss index for the current generation: loaded from its file, or rebuilt from the stored
        embeddings when the file is missing or stale (a crash between the commit and the write, or a writer in
        another process since we last looked)."""
        gen = self.generation()
        if self._index is not None and gen == self._generation:
            return self._index
        faiss = require("faiss", "rag")

        path = self.folder / f"vectors-{gen}.faiss"
        index = faiss.read_index(str(path)) if path.is_file() else self._build_index()
        self._index, self._generation = index, gen
        return index

    def _build_index(self):
        """The vector index over every stored embedding: exact inner product, or, above `ann_above` chunks, an
        inverted-file index (faiss IVF-Flat; benchmarks/RESULTS.md measures its recall against exact search): a
        query then reads the `ann_probe` lists nearest to it instead of every vector. kb.json may set both
        (defaults ANN_ABOVE, ANN_PROBE)."""
        faiss = require("faiss", "rag")
        dim, above = self.meta["dim"], self.meta.get("ann_above", ANN_ABOVE)
        with self.lock:
            rows = self.db.execute("SELECT id, vec FROM chunks").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows else np.zeros((0, dim), "f4")
        if len(rows) <= above:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            lists = int(4 * np.sqrt(len(rows)))  # faiss's rule of thumb: 4·sqrt(n) to 16·sqrt(n) lists
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).permutation(len(rows))[: 64 * lists]  # k-means needs ~40+ per list
            index.train(vecs[sample])
            index.nprobe = self.meta.get("ann_probe", ANN_PROBE)
        if rows:
            index.add_with_ids(vecs, ids)
        return index

    # ------------------------------------------------------------------ writing

    def add(self, paths: list[str], cfg: RagConfig, progress: bool = True) -> AddReport:
        from tqdm import tqdm

        files, refused = collect(paths)
        report = AddReport([], [], [], {})
        for name, why in refused.items():
            report.fail(name, why)
        started = time.perf_counter()
        enc = self.encoder(cfg.embedding_batch, cfg.embedding_dtype)
        with self.writing():
            self._record_unknown(enc)
            index = self.index()
            # in bytes of the files, so the rate reads MB/s and the ETA holds for a mix of small and large files
            sizes = [src.stat().st_size for src, _ in files]
            bar = tqdm(total=sum(sizes), desc=f"kb add {self.name}", unit="B", unit_scale=True, disable=not progress)
            for (src, name), size in zip(files, sizes):
                digest = sha256_file(src)
                with self.lock:
                    old = self.db.execute("SELECT id, sha256 FROM docs WHERE name = ?", (name,)).fetchone()
                if old and old[1] == digest:
                    report.unchanged.append(name)
                    bar.update(size)
                    continue
                try:
                    blocks = read_blocks(src, name)
                    chunks = chunk_blocks(
                        blocks, enc.count_tokens, self.meta["chunk_tokens"], self.meta["chunk_overlap"]
                    )
                except (CamelidError, ValueError) as e:
                    report.fail(name, str(e))
                    bar.update(size)
                    continue
                texts = [passage(c.heading, c.text) for c in chunks]
                vecs, unknown = _encode_with_progress(enc, texts, bar, size)
                self._copy_in(src, name)
                with self.lock, self.db:
                    stale = self._delete_doc(old[0]) if old else []
                    doc = self.db.execute(
                        "INSERT INTO docs (name, sha256, bytes, added) VALUES (?, ?, ?, ?)",
                        (name, digest, src.stat().st_size, time.time()),
                    ).lastrowid
                    ids = []
                    for i, (c, text, v, u) in enumerate(zip(chunks, texts, vecs, unknown)):
                        cid = self.db.execute(
                            "INSERT INTO chunks (doc_id, ord, text, heading, kind, start, end, n_tokens, vec, unknown) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                doc,
                                i,
                                c.text,
                                json.dumps(list(c.heading), ensure_ascii=False),
                                c.kind,
                                c.start,
                                c.end,
                                c.n_tokens,
                                v.tobytes(),
                                u,
                            ),
                        ).lastrowid
                        self.db.execute("INSERT INTO fts (rowid, terms) VALUES (?, ?)", (cid, " ".join(terms(text))))
                        ids.append(cid)
                    self._bump()
                # the index follows the committed rows (were the commit to fail, it stays as it was)
                if stale:  # faiss walks the whole index for a removal, even of nothing
                    index.remove_ids(np.array(stale, dtype=np.int64))
                if ids:
                    index.add_with_ids(vecs, np.array(ids, dtype=np.int64))
                (report.replaced if old else report.added).append(name)
                report.chunks += len(chunks)
                report.pages += len({(b.kind, b.loc) for b in blocks})
            self._save_index(index)
            bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def remove(self, names: list[str]) -> list[str]:
        """Delete documents by stored name, or every document under a folder name ('docs/' or 'docs')."""
        removed = []
        with self.writing():
            index = self.index()
            for raw in names:
                name = safe_name(raw.rstrip("/"))
                with self.lock:
                    rows = self.db.execute(
                        "SELECT id, name FROM docs WHERE name = ? OR name LIKE ? ESCAPE '!'",
                        (name, _like_prefix(name + "/")),
                    ).fetchall()
                if not rows:
                    raise CamelidError(f"knowledge base '{self.name}' has no document '{raw}' (see `camelid kb ls`)")
                with self.lock, self.db:
                    stale = [i for doc_id, _ in rows for i in self._delete_doc(doc_id)]
                    self._bump()
                index.remove_ids(np.array(stale, dtype=np.int64))
                removed += [doc_name for _, doc_name in rows]
                for _, doc_name in rows:
                    (self.folder / "files" / doc_name).unlink(missing_ok=True)
            self._save_index(index)
        return removed

    def _delete_doc(self, doc_id: int) -> list[int]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
        self.db.executemany("DELETE FROM fts WHERE rowid = ?", [(i,) for i in ids])
        self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        self.db.execute("DELETE FROM docs WHERE id = ?", (doc_id,))
        return ids

    def _bump(self) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1') ON CONFLICT(key) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + 1"
        )

    def _save_index(self, index) -> None:
        faiss = require("faiss", "rag")
        exact = not isinstance(index, faiss.IndexIVF)
        above = self.meta.get("ann_above", ANN_ABOVE)
        if (exact and index.ntotal > above) or (not exact and index.ntotal <= above // 2):
            index = self._build_index()  # crossed the threshold (back to exact only well below it: no flapping)

        gen = self.generation()
        final = self.folder / f"vectors-{gen}.faiss"
        fd, tmp = tempfile.mkstemp(prefix=".vectors-", dir=self.folder)
        os.close(fd)
        faiss.write_index(index, tmp)
        follow_umask(tmp)  # mkstemp's file is 0600: another account serving this knowledge base could not read it
        os.replace(tmp, final)
        for old in self.folder.glob("vectors-*.faiss"):
            if old != final:
                old.unlink(missing_ok=True)
        self._index, self._generation = index, gen

    def _copy_in(self, src: Path, name: str) -> None:
        dest = self.folder / "files" / name
        if not dest.resolve().is_relative_to((self.folder / "files").resolve()):
            raise CamelidError(f"document name '{name}' would point outside the knowledge base")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".copy-", dir=dest.parent)
        os.close(fd)
        shutil.copyfile(src, tmp)
        follow_umask(tmp)
        os.replace(tmp, dest)


def _encode_with_progress(enc: Encoder, texts: list[str], bar, size: int) -> tuple[np.ndarray, list[float]]:
    """`enc.encode_passages(texts)` (vectors, [UNK] shares) in slices, moving `bar` through the file's `size` bytes
    as they are done: encoding is most of the time, and one large file should not sit at 0% until it is finished."""
    step = max(1, enc.batch * 4)
    parts, unknown, done = [], [], 0
    for i in range(0, len(texts), step):
        vecs, shares = enc.encode_passages(texts[i : i + step])
        parts.append(vecs)
        unknown += shares
        moved = size * min(len(texts), i + step) // len(texts) - done
        bar.update(moved)
        done += moved
    bar.update(size - done)
    return (np.concatenate(parts) if parts else enc.encode([])), unknown


def _check_settings(name: str, meta: dict, cfg: RagConfig) -> None:
    """An existing knowledge base keeps the encoder and chunking it was built with."""
    asked = cfg.embedding_model
    if asked != meta["embedding_model"] and asked != RagConfig.embedding_model:  # a default is not a request
        raise CamelidError(
            f"knowledge base '{name}' was built with encoder '{meta['embedding_model']}', not "
            f"'{asked}': make a new one to change encoders"
        )
    if (cfg.chunk_tokens, cfg.chunk_overlap) != (meta["chunk_tokens"], meta["chunk_overlap"]):
        # one knowledge base, one chunking: mixed chunk sizes would skew BM25's length normalisation
        log.warning(
            f"knowledge base '{name}' keeps its chunking ({meta['chunk_tokens']} tokens, overlap "
            f"{meta['chunk_overlap']}); rag.chunk_tokens and rag.chunk_overlap apply to new ones"
        )


def _like_prefix(prefix: str) -> str:
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def list_kbs(cfg: RagConfig) -> list[str]:
    root = kb_root(cfg)
    return sorted(p.name for p in root.iterdir() if (p / "kb.json").is_file()) if root.is_dir() else []
