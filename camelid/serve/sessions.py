"""Server-side chat sessions in SQLite, so a client sends only its new turn.

Schema (one file, WAL journal; safe to read with the sqlite3 shell while the server runs):

    sessions(owner TEXT NOT NULL,   -- sha256 of the API key (first 16 hex chars); "local" without keys
             id TEXT NOT NULL,      -- "sess_" + 24 hex chars, or a client-chosen id
             model TEXT NOT NULL,   -- the served model id the session was created with
             created REAL NOT NULL, updated REAL NOT NULL,    -- unix seconds
             window INTEGER NOT NULL DEFAULT 0,  -- seq of the oldest non-system message still sent to the model
             title TEXT NOT NULL DEFAULT '',     -- a name given by the client (the web UI's rename); '' = none
             PRIMARY KEY (owner, id))
    messages(owner TEXT NOT NULL, session_id TEXT NOT NULL,   -- REFERENCES sessions(owner, id) ON DELETE CASCADE
             seq INTEGER NOT NULL,  -- 0, 1, 2, ... in conversation order
             role TEXT NOT NULL,    -- system | user | assistant
             content TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, session_id, seq))

Ids are scoped per key: two keys may each have a session "s1", and nothing one key can do (create, get, list,
delete) tells it whether the other's exists. A file written before ids were scoped (user_version 0, `id` alone the
key) is migrated in place when opened; so is one without titles (user_version 2).

A session only ever grows by whole exchanges (the new messages plus the assistant's reply), written in one
transaction after the reply is complete; an aborted or failed request leaves the session as it was.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

VERSION = 3  # PRAGMA user_version; 0: session ids were global; 2: sessions had no title
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sessions (
        owner TEXT NOT NULL, id TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
        window INTEGER NOT NULL DEFAULT 0, title TEXT NOT NULL DEFAULT '', PRIMARY KEY (owner, id))""",
    "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(owner, updated)",
    """CREATE TABLE IF NOT EXISTS messages (
        owner TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL,
        content TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (owner, session_id, seq),
        FOREIGN KEY (owner, session_id) REFERENCES sessions(owner, id) ON DELETE CASCADE)""",
]


class SessionStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.Lock()
        with self._tx():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            old = (
                version < 2
                and self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='sessions'").fetchone()
            )
            if version == 2:
                self._db.execute("ALTER TABLE sessions ADD COLUMN title TEXT NOT NULL DEFAULT ''")
            elif old:
                self._db.execute("DROP INDEX IF EXISTS sessions_owner")
                self._db.execute("ALTER TABLE messages RENAME TO messages_v0")
                self._db.execute("ALTER TABLE sessions RENAME TO sessions_v0")
            for statement in SCHEMA:
                self._db.execute(statement)
            if old:
                self._db.execute(
                    "INSERT INTO sessions SELECT owner, id, model, created, updated, window, '' FROM sessions_v0"
                )
                self._db.execute(
                    "INSERT INTO messages SELECT s.owner, m.session_id, m.seq, m.role, m.content, m.created "
                    "FROM messages_v0 m JOIN sessions_v0 s ON s.id = m.session_id"
                )
                self._db.execute("DROP TABLE messages_v0")
                self._db.execute("DROP TABLE sessions_v0")
            self._db.execute(f"PRAGMA user_version={VERSION}")

    def create(self, owner: str, model: str, messages: list[dict] | None = None, session_id: str | None = None) -> dict:
        sid = session_id or "sess_" + secrets.token_hex(12)
        now = time.time()
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM sessions WHERE owner=? AND id=?", (owner, sid)).fetchone():
                raise KeyError(sid)
            self._db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,0,'')", (owner, sid, model, now, now))
            self._insert(owner, sid, 0, messages or [], now)
        return self.get(owner, sid)

    def get(self, owner: str, sid: str) -> dict | None:
        """The session with its messages, or None when it does not exist or belongs to another key."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, model, created, updated, window, title FROM sessions WHERE owner=? AND id=?", (owner, sid)
            ).fetchone()
            if row is None:
                return None
            msgs = self._db.execute(
                "SELECT role, content FROM messages WHERE owner=? AND session_id=? ORDER BY seq", (owner, sid)
            ).fetchall()
        return {
            "id": row[0],
            "object": "session",
            "model": row[1],
            "created": int(row[2]),
            "updated": int(row[3]),
            "window": row[4],
            "title": row[5],
            "messages": [{"role": r, "content": c} for r, c in msgs],
        }

    def append(self, owner: str, sid: str, messages: list[dict], window: int | None = None) -> None:
        """Add whole exchanges; `window` moves the start of what the model is sent (history windowing)."""
        now = time.time()
        with self._lock, self._tx():
            if not self._db.execute("SELECT 1 FROM sessions WHERE owner=? AND id=?", (owner, sid)).fetchone():
                raise KeyError(sid)
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE owner=? AND session_id=?", (owner, sid)
            ).fetchone()
            self._insert(owner, sid, n, messages, now)
            self._db.execute(
                "UPDATE sessions SET updated=?, window=COALESCE(?, window) WHERE owner=? AND id=?",
                (now, window, owner, sid),
            )

    def list(self, owner: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.model, s.created, s.updated, COUNT(m.seq), s.title, "
                "(SELECT content FROM messages f WHERE f.owner = s.owner AND f.session_id = s.id AND f.role = 'user' "
                "ORDER BY f.seq LIMIT 1) FROM sessions s LEFT JOIN messages m "
                "ON m.owner = s.owner AND m.session_id = s.id WHERE s.owner=? GROUP BY s.id ORDER BY s.updated DESC",
                (owner,),
            ).fetchall()
        return [
            {
                "id": r[0],
                "object": "session",
                "model": r[1],
                "created": int(r[2]),
                "updated": int(r[3]),
                "message_count": r[4],
                "title": r[5],
                "first_message": (r[6] or "")[:200],  # for a list that shows untitled sessions by their question
            }
            for r in rows
        ]

    def rename(self, owner: str, sid: str, title: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE sessions SET title=? WHERE owner=? AND id=?", (title, owner, sid))
        return cur.rowcount > 0

    def delete(self, owner: str, sid: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM sessions WHERE owner=? AND id=?", (owner, sid))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert(self, owner: str, sid: str, start: int, messages: list[dict], now: float) -> None:
        self._db.executemany(
            "INSERT INTO messages VALUES (?,?,?,?,?,?)",
            [(owner, sid, start + i, m["role"], m["content"], now) for i, m in enumerate(messages)],
        )

    @contextlib.contextmanager
    def _tx(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def window_history(
    history: list[dict], new: list[dict], window: int, render: Callable[[list[dict]], list[int]], limit: int
) -> tuple[list[int], int | None]:
    """The prompt ids for `history` (stored, a system message first if any) + `new` messages, fitted to `limit`
    tokens; and the new window (the index of the oldest stored message still sent), or None when it is unchanged.

    When the conversation no longer fits, the oldest exchanges (a user turn and what followed it) are dropped until
    the prompt uses at most half of `limit`, so the next turns keep the same start (and reuse its cached KV) instead
    of sliding by one exchange every turn. The system message always stays. When even the new messages alone do not
    fit, their ids come back longer than `limit`: the caller says so in its own terms."""
    head = 1 if history and history[0]["role"] == "system" else 0
    window = max(window, head)
    ids = render(history[:head] + history[window:] + new)
    if len(ids) <= limit:
        return ids, None
    while window < len(history):
        window += 1
        while window < len(history) and history[window]["role"] != "user":
            window += 1
        ids = render(history[:head] + history[window:] + new)
        if len(ids) <= limit // 2:
            return ids, window
    return render(history[:head] + new), len(history)
