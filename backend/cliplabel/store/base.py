"""The store contract, and the one place that picks an implementation from the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState


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

    def push_event(self, payload: str) -> int:
        """Appends a raw webhook event to the durable queue; returns its sequence number."""

    def pending_events(self, limit: int) -> list[tuple[int, str]]:
        """The oldest unprocessed events, (sequence number, payload)."""

    def ack_events(self, seqs: Sequence[int]) -> None:
        """Removes processed events (at-least-once: processing is idempotent)."""

    def put_blob(self, namespace: str, key: str, data: str) -> None: ...

    def get_blob(self, namespace: str, key: str) -> str | None: ...

    def add_part(self, namespace: str, key: str, part: str, data: str) -> bool:
        """Records one named part of a record once: True when new, False (changing nothing) when already there.

        Bulk jobs record each finished chunk this way, so a chunk delivered twice is counted once.
        """

    def list_parts(self, namespace: str, key: str) -> dict[str, str]:
        """Every part recorded under a record, part name → data."""

    def close(self) -> None: ...


def open_store(redis_url: str | None, data_dir, redis_prefix: str = "cliplabel") -> Store:  # type: ignore[no-untyped-def]
    """Redis when a URL is configured, else the embedded SQLite store under `data_dir`."""
    if redis_url:
        from cliplabel.store.redis_store import RedisStore

        return RedisStore(redis_url, prefix=redis_prefix)
    from cliplabel.store.sqlite_store import SqliteStore

    return SqliteStore(data_dir / "cliplabel.sqlite3")
