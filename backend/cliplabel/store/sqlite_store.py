"""The embedded store: one SQLite file under the data directory; no server, survives restarts.

Several processes may open the same file (WAL mode); each thread gets its own connection.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState
from cliplabel.core.errors import StoreUnavailableError
from cliplabel.store import codec, matrix, records
from cliplabel.store.base import event_lease

logger = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    namespace TEXT NOT NULL, encoder_id TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (namespace, encoder_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projects (project_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    project_id TEXT NOT NULL, encoder_id TEXT NOT NULL, revision INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (project_id, encoder_id, revision));
CREATE TABLE IF NOT EXISTS feedback (
    project_id TEXT NOT NULL, annotation_id INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (project_id, annotation_id));
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (namespace TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (namespace, key));
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counts (project_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (project_id, name));
CREATE TABLE IF NOT EXISTS parts (namespace TEXT NOT NULL, key TEXT NOT NULL, part TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (namespace, key, part));
CREATE TABLE IF NOT EXISTS matrices (seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL,
    encoder_id TEXT NOT NULL, grp TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS matrices_by_group ON matrices (namespace, encoder_id, grp, seq);
"""
_MAX_VARS = 500  # stay under SQLite's bound-parameter limit
F = TypeVar("F", bound=Callable[..., Any])


def _unavailable(fn: F) -> F:
    """Any SQLite failure (a locked or full database, a disk error) is the store being unavailable: a 503."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"embedded store unavailable: {type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


class SqliteStore:
    kind = "embedded"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create the data directory {path.parent}: {exc}") from exc
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            with self._conn() as conn:
                conn.executescript(_SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
                if "project_id" not in columns:  # a store written before events were queued per project
                    conn.execute("ALTER TABLE events ADD COLUMN project_id TEXT NOT NULL DEFAULT ''")
                conn.execute("CREATE INDEX IF NOT EXISTS events_by_project ON events (project_id, seq)")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open the embedded store {path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"cannot open the embedded store {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"embedded store unavailable: {exc}") from exc

    @_unavailable
    def get_vectors(self, namespace: str, encoder_id: str, keys: Sequence[str]) -> list[np.ndarray | None]:
        found: dict[str, bytes] = {}
        conn = self._conn()
        for i in range(0, len(keys), _MAX_VARS):
            chunk = list(keys[i:i + _MAX_VARS])
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT key, data FROM vectors WHERE namespace=? AND encoder_id=? AND key IN ({marks})",
                                [namespace, encoder_id, *chunk]).fetchall()
            found.update(rows)
        out: list[np.ndarray | None] = []
        for key in keys:
            blob = found.get(key)
            vec = codec.unpack(blob) if blob is not None else None
            if blob is not None and vec is None:
                logger.warning("corrupt cached vector namespace=%s key=%s: recomputing", namespace, key)
            out.append(vec)
        return out

    @_unavailable
    def put_vectors(self, namespace: str, encoder_id: str, items: Mapping[str, np.ndarray]) -> None:
        rows = [(namespace, encoder_id, k, codec.pack(v)) for k, v in items.items()]
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @_unavailable
    def get_project(self, project_id: str) -> ProjectState | None:
        row = self._conn().execute("SELECT record FROM projects WHERE project_id=?", (project_id,)).fetchone()
        return records.load_project(row[0]) if row else None

    @_unavailable
    def put_project(self, state: ProjectState) -> None:
        self._conn().execute("INSERT OR REPLACE INTO projects VALUES (?, ?)",
                             (state.project_id, records.dump_project(state)))

    @_unavailable
    def list_versions(self, project_id: str, encoder_id: str) -> list[ModelVersion]:
        rows = self._conn().execute("SELECT record FROM versions WHERE project_id=? AND encoder_id=? ORDER BY revision",
                                    (project_id, encoder_id)).fetchall()
        return [records.load_version(r[0]) for r in rows]

    @_unavailable
    def add_version(self, version: ModelVersion) -> bool:
        conn = self._conn()
        # IMMEDIATE takes the write lock first, so two processes cannot both append the same revision.
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute("SELECT MAX(revision) FROM versions WHERE project_id=? AND encoder_id=?",
                                (version.project_id, version.encoder_id)).fetchone()[0]
            expected = 0 if last is None else last + 1
            if version.revision != expected:
                conn.execute("ROLLBACK")
                return False
            conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?)",
                         (version.project_id, version.encoder_id, version.revision, records.dump_version(version)))
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @_unavailable
    def put_feedback(self, project_id: str, annotation_id: int, examples: list[FeedbackExample]) -> None:
        self._conn().execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?)",
                             (project_id, annotation_id, records.dump_examples(examples)))

    @_unavailable
    def delete_feedback(self, project_id: str, annotation_id: int) -> None:
        self._conn().execute("DELETE FROM feedback WHERE project_id=? AND annotation_id=?", (project_id, annotation_id))

    @_unavailable
    def list_feedback(self, project_id: str) -> list[FeedbackExample]:
        rows = self._conn().execute("SELECT record FROM feedback WHERE project_id=? ORDER BY annotation_id",
                                    (project_id,)).fetchall()
        return [e for (raw,) in rows for e in records.load_examples(raw)]

    @_unavailable
    def push_event(self, payload: str, project_id: str = "") -> int:
        cur = self._conn().execute("INSERT INTO events (payload, project_id) VALUES (?, ?)", (payload, project_id))
        return int(cur.lastrowid or 0)

    @_unavailable
    def pending_events(self, limit: int, project_id: str | None = None) -> list[tuple[int, str]]:
        if project_id is None:
            rows = self._conn().execute("SELECT seq, payload FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._conn().execute("SELECT seq, payload FROM events WHERE project_id=? ORDER BY seq LIMIT ?",
                                        (project_id, limit)).fetchall()
        return [(int(a), str(b)) for a, b in rows]

    @_unavailable
    def event_projects(self) -> list[str]:
        return [str(r[0]) for r in self._conn().execute("SELECT DISTINCT project_id FROM events ORDER BY project_id")]

    @_unavailable
    def ack_events(self, seqs: Sequence[int], project_id: str = "", owner: str | None = None,
                   counts: Mapping[str, int] | None = None) -> bool:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            unique = sorted(set(seqs))
            queued = sum(conn.execute(
                f"SELECT COUNT(*) FROM events WHERE project_id=? AND seq IN ({','.join('?' * len(part))})",
                [project_id, *part]).fetchone()[0] for part in (unique[i:i + _MAX_VARS]
                                                                for i in range(0, len(unique), _MAX_VARS)))
            if (owner is not None and not self._holds(conn, event_lease(project_id), owner)) or queued < len(unique):
                conn.execute("ROLLBACK")
                return False
            self._add(conn, project_id, counts or {})
            conn.executemany("DELETE FROM events WHERE seq=? AND project_id=?", [(s, project_id) for s in seqs])
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _holds(conn: sqlite3.Connection, name: str, owner: str) -> bool:
        row = conn.execute("SELECT owner, expires FROM leases WHERE name=?", (name,)).fetchone()
        return row is not None and row[0] == owner and float(row[1]) > time.time()

    @staticmethod
    def _add(conn: sqlite3.Connection, project_id: str, deltas: Mapping[str, int]) -> None:
        conn.executemany("INSERT INTO counts VALUES (?, ?, ?) ON CONFLICT (project_id, name) "
                         "DO UPDATE SET value = value + excluded.value",
                         [(project_id, k, int(v)) for k, v in deltas.items()])

    @_unavailable
    def event_counts(self, project_id: str) -> dict[str, int]:
        rows = self._conn().execute("SELECT name, value FROM counts WHERE project_id=?", (project_id,)).fetchall()
        return {str(a): int(b) for a, b in rows}

    @_unavailable
    def add_counts(self, project_id: str, deltas: Mapping[str, int]) -> dict[str, int]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._add(conn, project_id, deltas)
            now = dict(conn.execute("SELECT name, value FROM counts WHERE project_id=?", (project_id,)).fetchall())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {k: int(now[k]) for k in deltas}

    @_unavailable
    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        # One statement: take it when absent, expired or already ours; SQLite's write lock makes it atomic.
        cur = self._conn().execute(
            "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET owner=excluded.owner, "
            "expires=excluded.expires WHERE leases.owner=excluded.owner OR leases.expires <= ?",
            (name, owner, now + ttl_s, now))
        return cur.rowcount == 1

    @_unavailable
    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        cur = self._conn().execute("UPDATE leases SET expires=? WHERE name=? AND owner=? AND expires > ?",
                                   (now + ttl_s, name, owner, now))
        return cur.rowcount == 1

    @_unavailable
    def release_lease(self, name: str, owner: str, hold_s: float = 0.0) -> None:
        conn = self._conn()
        if hold_s > 0:
            conn.execute("UPDATE leases SET owner='', expires=? WHERE name=? AND owner=?",
                         (time.time() + hold_s, name, owner))
        else:
            conn.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    @_unavailable
    def claim_blob(self, namespace: str, key: str, expected: str | None, data: str) -> bool:
        conn = self._conn()
        if expected is None:
            cur = conn.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (namespace, key, data))
        else:
            cur = conn.execute("UPDATE blobs SET data=? WHERE namespace=? AND key=? AND data=?",
                               (data, namespace, key, expected))
        return cur.rowcount == 1

    @_unavailable
    def put_blob(self, namespace: str, key: str, data: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (namespace, key, data))

    @_unavailable
    def get_blob(self, namespace: str, key: str) -> str | None:
        row = self._conn().execute("SELECT data FROM blobs WHERE namespace=? AND key=?", (namespace, key)).fetchone()
        return str(row[0]) if row else None

    @_unavailable
    def add_part(self, namespace: str, key: str, part: str, data: str) -> bool:
        cur = self._conn().execute("INSERT OR IGNORE INTO parts VALUES (?, ?, ?, ?)", (namespace, key, part, data))
        return cur.rowcount == 1

    @_unavailable
    def list_parts(self, namespace: str, key: str) -> dict[str, str]:
        rows = self._conn().execute("SELECT part, data FROM parts WHERE namespace=? AND key=?",
                                    (namespace, key)).fetchall()
        return {str(a): str(b) for a, b in rows}

    # -- embeddings in bulk (cliplabel.store.matrix) ---------------------------------------------------------------
    @_unavailable
    def append_matrix(self, namespace: str, encoder_id: str, group: str, segment: bytes) -> None:
        self._conn().execute("INSERT INTO matrices (namespace, encoder_id, grp, data) VALUES (?, ?, ?, ?)",
                             (namespace, encoder_id, group, segment))

    @_unavailable
    def get_matrix(self, namespace: str, encoder_id: str, group: str) -> matrix.EmbeddingMatrix:
        rows = self._conn().execute("SELECT data FROM matrices WHERE namespace=? AND encoder_id=? AND grp=? ORDER BY seq",
                                    (namespace, encoder_id, group)).fetchall()
        return matrix.join_segments([bytes(r[0]) for r in rows], group)

    @_unavailable
    def matrix_tail(self, namespace: str, encoder_id: str, group: str, cursor: int) -> matrix.MatrixTail:
        # The cursor is the last segment's row id: ids only grow, so "after the cursor" is exactly what is new, as
        # long as that segment is still there (else the group was deleted or the file replaced: start over).
        conn = self._conn()
        where = "namespace=? AND encoder_id=? AND grp=?"
        if cursor and conn.execute(f"SELECT 1 FROM matrices WHERE seq=? AND {where}",
                                   (cursor, namespace, encoder_id, group)).fetchone() is None:
            tail = self.matrix_tail(namespace, encoder_id, group, 0)
            return matrix.MatrixTail(tail.segments, tail.cursor, restarted=True)
        rows = conn.execute(f"SELECT seq, data FROM matrices WHERE {where} AND seq > ? ORDER BY seq",
                            (namespace, encoder_id, group, cursor)).fetchall()
        return matrix.MatrixTail([bytes(r[1]) for r in rows], int(rows[-1][0]) if rows else cursor)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
