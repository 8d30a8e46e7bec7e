"""The embedded store: one SQLite file under the data directory; no server, survives restarts.

Several processes may open the same file (WAL mode); each thread gets its own connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState
from cliplabel.core.errors import StoreUnavailableError
from cliplabel.store import codec, records

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
CREATE TABLE IF NOT EXISTS parts (namespace TEXT NOT NULL, key TEXT NOT NULL, part TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (namespace, key, part));
"""
_MAX_VARS = 500  # stay under SQLite's bound-parameter limit


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
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

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

    def get_project(self, project_id: str) -> ProjectState | None:
        row = self._conn().execute("SELECT record FROM projects WHERE project_id=?", (project_id,)).fetchone()
        return records.load_project(row[0]) if row else None

    def put_project(self, state: ProjectState) -> None:
        self._conn().execute("INSERT OR REPLACE INTO projects VALUES (?, ?)",
                             (state.project_id, records.dump_project(state)))

    def list_versions(self, project_id: str, encoder_id: str) -> list[ModelVersion]:
        rows = self._conn().execute("SELECT record FROM versions WHERE project_id=? AND encoder_id=? ORDER BY revision",
                                    (project_id, encoder_id)).fetchall()
        return [records.load_version(r[0]) for r in rows]

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

    def put_feedback(self, project_id: str, annotation_id: int, examples: list[FeedbackExample]) -> None:
        self._conn().execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?)",
                             (project_id, annotation_id, records.dump_examples(examples)))

    def delete_feedback(self, project_id: str, annotation_id: int) -> None:
        self._conn().execute("DELETE FROM feedback WHERE project_id=? AND annotation_id=?", (project_id, annotation_id))

    def list_feedback(self, project_id: str) -> list[FeedbackExample]:
        rows = self._conn().execute("SELECT record FROM feedback WHERE project_id=? ORDER BY annotation_id",
                                    (project_id,)).fetchall()
        return [e for (raw,) in rows for e in records.load_examples(raw)]

    def push_event(self, payload: str) -> int:
        cur = self._conn().execute("INSERT INTO events (payload) VALUES (?)", (payload,))
        return int(cur.lastrowid or 0)

    def pending_events(self, limit: int) -> list[tuple[int, str]]:
        rows = self._conn().execute("SELECT seq, payload FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(a), str(b)) for a, b in rows]

    def ack_events(self, seqs: Sequence[int]) -> None:
        self._conn().executemany("DELETE FROM events WHERE seq=?", [(s,) for s in seqs])

    def put_blob(self, namespace: str, key: str, data: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (namespace, key, data))

    def get_blob(self, namespace: str, key: str) -> str | None:
        row = self._conn().execute("SELECT data FROM blobs WHERE namespace=? AND key=?", (namespace, key)).fetchone()
        return str(row[0]) if row else None

    def add_part(self, namespace: str, key: str, part: str, data: str) -> bool:
        cur = self._conn().execute("INSERT OR IGNORE INTO parts VALUES (?, ?, ?, ?)", (namespace, key, part, data))
        return cur.rowcount == 1

    def list_parts(self, namespace: str, key: str) -> dict[str, str]:
        rows = self._conn().execute("SELECT part, data FROM parts WHERE namespace=? AND key=?",
                                    (namespace, key)).fetchall()
        return {str(a): str(b) for a, b in rows}

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
