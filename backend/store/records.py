"""JSON form of the records both stores keep (the same bytes in Redis and in SQLite)."""

from __future__ import annotations

import dataclasses
import json

from backend.domain import ModelVersion, ProjectState


def dump_project(state: ProjectState) -> str:
    return json.dumps(dataclasses.asdict(state), sort_keys=True)


def load_project(raw: str | bytes) -> ProjectState:
    return ProjectState(**json.loads(raw))


def dump_version(version: ModelVersion) -> str:
    return json.dumps(dataclasses.asdict(version), sort_keys=True)


def load_version(raw: str | bytes) -> ModelVersion:
    return ModelVersion(**json.loads(raw))
