"""JSON form of the records both stores keep (the same bytes in Redis and in SQLite)."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState


def dump_project(state: ProjectState) -> str:
    return json.dumps(dataclasses.asdict(state), sort_keys=True)


def load_project(raw: str | bytes) -> ProjectState:
    return ProjectState(**json.loads(raw))


def dump_version(version: ModelVersion) -> str:
    return json.dumps(dataclasses.asdict(version), sort_keys=True)


def load_version(raw: str | bytes) -> ModelVersion:
    return ModelVersion(**json.loads(raw))


def _vec(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unvec(s: str, rows: int | None = None) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)
    return flat.reshape(rows, -1) if rows is not None else flat


def dump_examples(examples: list[FeedbackExample]) -> str:
    return json.dumps([{**{k: v for k, v in dataclasses.asdict(e).items() if k != "embedding"},
                        "embedding": _vec(e.embedding)} for e in examples])


def load_examples(raw: str | bytes) -> list[FeedbackExample]:
    out = []
    for item in json.loads(raw):
        item["embedding"] = _unvec(item["embedding"])
        if item.get("box_xyxy") is not None:
            item["box_xyxy"] = tuple(item["box_xyxy"])
        out.append(FeedbackExample(**item))
    return out


def dump_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """JSON with named float32 matrices (rows kept) — the form learned heads are stored in."""
    return json.dumps({"meta": meta, "arrays": {k: {"rows": int(v.shape[0]), "data": _vec(v)}
                                                for k, v in arrays.items()}})


def load_arrays(raw: str | bytes) -> tuple[dict, dict[str, np.ndarray]]:
    obj = json.loads(raw)
    return obj["meta"], {k: _unvec(v["data"], v["rows"]) if v["rows"] else np.zeros((0, 0), np.float32)
                         for k, v in obj["arrays"].items()}
