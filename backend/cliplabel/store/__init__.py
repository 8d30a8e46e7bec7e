"""Shared state: cached vectors, project settings and model versions, in Redis or in an embedded SQLite file."""

from cliplabel.store.base import Store, open_store

__all__ = ["Store", "open_store"]
