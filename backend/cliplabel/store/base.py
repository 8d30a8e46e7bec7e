"""The store contract, and the one place that picks an implementation from the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState
from cliplabel.store.matrix import EmbeddingMatrix, MatrixTail


def event_lease(project_id: str) -> str:
    """The name of the lease whose holder alone processes (and acknowledges) a project's events, in order."""
    return f"events:{project_id}"


class Store(Protocol):
    """Shared state of a deployment. Redis and the embedded SQLite store pass the same contract tests."""

    kind: str

    def ping(self) -> None:
        """Raises StoreUnavailableError when the store cannot be reached."""

    def get_vectors(self, namespace: str, encoder_id: str, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Cached (D,) float32 vectors in the order of `keys`; None for a miss or a corrupt entry."""

    def put_vectors(self, namespace: str, encoder_id: str, items: Mapping[str, np.ndarray]) -> None:
        """Caches vectors (idempotent: the same key always holds the same vector)."""

    def get_project(self, project_id: str) -> ProjectState | None: ...

    def put_project(self, state: ProjectState) -> None: ...

    def list_versions(self, project_id: str, encoder_id: str) -> list[ModelVersion]:
        """Accepted versions, oldest first."""

    def add_version(self, version: ModelVersion) -> bool:
        """Appends a version if its revision is exactly one more than the last (or 0 for the first).

        Returns False, changing nothing, when another process got there first.
        """

    def put_feedback(self, project_id: str, annotation_id: int, examples: list[FeedbackExample]) -> None:
        """Replaces every example of one annotation (idempotent: an update recorded twice counts once)."""

    def delete_feedback(self, project_id: str, annotation_id: int) -> None: ...

    def list_feedback(self, project_id: str) -> list[FeedbackExample]:
        """Every example of a project, in annotation id order."""

    def push_event(self, payload: str, project_id: str = "") -> int:
        """Appends a raw webhook event to the durable queue of its project; returns its sequence number."""

    def pending_events(self, limit: int, project_id: str | None = None) -> list[tuple[int, str]]:
        """The oldest unprocessed events (of one project, or of all), (sequence number, payload), oldest first."""

    def event_projects(self) -> list[str]:
        """The projects with unprocessed events."""

    def ack_events(self, seqs: Sequence[int], project_id: str = "", owner: str | None = None,
                   counts: Mapping[str, int] | None = None) -> bool:
        """Removes processed events of a project and adds `counts` to its event counters, in one atomic step.

        With `owner`, only while `owner` holds the project's event lease (`event_lease(project_id)`): a worker whose
        lease expired (it was presumed dead) changes nothing, so an event is counted once whoever processed it.
        Returns False, changing nothing, when the lease is not held by `owner` or an event is no longer queued (another
        worker acknowledged it).
        """

    def event_counts(self, project_id: str) -> dict[str, int]:
        """A project's event counters (what `ack_events` and `add_counts` added)."""

    def add_counts(self, project_id: str, deltas: Mapping[str, int]) -> dict[str, int]:
        """Adds to a project's event counters atomically (no read-modify-write); returns the new values."""

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Takes (or, when `owner` holds it already, renews) a named lease for `ttl_s` seconds.

        False while another owner holds it. A lease whose holder dies expires by itself, so its work is reclaimed.
        """

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extends a lease `owner` still holds; False (changing nothing) when it expired or another holds it."""

    def release_lease(self, name: str, owner: str, hold_s: float = 0.0) -> None:
        """Gives a lease back when `owner` holds it; with `hold_s`, nobody gets it for `hold_s` seconds (backoff)."""

    def claim_blob(self, namespace: str, key: str, expected: str | None, data: str) -> bool:
        """Compare-and-set: writes `data` only when the blob is `expected` now (None: absent). True when written."""

    def put_blob(self, namespace: str, key: str, data: str) -> None: ...

    def get_blob(self, namespace: str, key: str) -> str | None: ...

    def add_part(self, namespace: str, key: str, part: str, data: str) -> bool:
        """Records one named part of a record once: True when new, False (changing nothing) when already there.

        Bulk jobs record each finished chunk this way, so a chunk delivered twice is counted once.
        """

    def list_parts(self, namespace: str, key: str) -> dict[str, str]:
        """Every part recorded under a record, part name → data."""

    def append_matrix(self, namespace: str, encoder_id: str, group: str, segment: bytes) -> None:
        """Appends one segment (`matrix.pack_segment`) to a group's embeddings."""

    def get_matrix(self, namespace: str, encoder_id: str, group: str) -> EmbeddingMatrix:
        """A group's embeddings as one matrix with its key index, in one read (empty when none)."""

    def matrix_tail(self, namespace: str, encoder_id: str, group: str, cursor: int) -> MatrixTail:
        """The segments appended to a group after `cursor` (0: all), in order, and the cursor after them."""

    def close(self) -> None: ...


def open_store(redis_url: str | None, data_dir, redis_prefix: str = "cliplabel") -> Store:  # type: ignore[no-untyped-def]
    """Redis when a URL is configured, else the embedded SQLite store under `data_dir`."""
    if redis_url:
        from cliplabel.store.redis_store import RedisStore

        return RedisStore(redis_url, prefix=redis_prefix)
    from cliplabel.store.sqlite_store import SqliteStore

    return SqliteStore(data_dir / "cliplabel.sqlite3")
