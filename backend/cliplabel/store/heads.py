"""Learned heads as stored: one JSON record per model version, written once by a retrain and read by every process."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import numpy as np

from cliplabel.core.domain import Head, ModelVersion
from cliplabel.store import records
from cliplabel.store.base import Store

HEADS_NS = "heads"


def heads_key(project_id: str, encoder_id: str, revision: int) -> str:
    return f"{project_id}:{encoder_id}:{revision}"


def dump_heads(heads: Mapping[str, Head]) -> str:
    """Every control's head of one version → JSON (control name → meta and float32 matrices)."""
    return json.dumps({name: records.dump_arrays(
        {"labels": list(h.labels), "logit_scale": h.logit_scale, "alpha": h.alpha},
        {"class_vecs": h.class_vecs, "background_vecs": h.background_vecs}) for name, h in heads.items()})


def load_heads(raw: str | bytes) -> dict[str, Head]:
    """The inverse of `dump_heads`. Records written before `prompt_weights` was dropped still load (it is ignored)."""
    out = {}
    for name, blob in json.loads(raw).items():
        meta, arrays = records.load_arrays(blob)
        bg = arrays["background_vecs"]
        if bg.size == 0:
            # An empty matrix is stored without its width; the head's invariant wants (0, D).
            bg = np.zeros((0, arrays["class_vecs"].shape[1]), np.float32)
        out[name] = Head(from_name=name, labels=tuple(meta["labels"]), class_vecs=arrays["class_vecs"],
                         background_vecs=bg, logit_scale=float(meta["logit_scale"]), alpha=float(meta["alpha"]))
    return out


class HeadStore:
    """The heads of each model version, in the store; immutable once written, so cached by version."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, dict[str, Head]] = {}
        self._lock = threading.Lock()

    def heads_for(self, version: ModelVersion) -> dict[str, Head]:
        """The learned heads of a version (none for the zero-shot r0)."""
        if version.revision == 0:
            return {}
        key = heads_key(version.project_id, version.encoder_id, version.revision)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            raw = self.store.get_blob(HEADS_NS, key)
            cached = load_heads(raw) if raw else {}
            with self._lock:
                self._cache[key] = cached
        return cached

    def put(self, project_id: str, encoder_id: str, revision: int, heads: Mapping[str, Head]) -> None:
        """Writes a version's heads; done before the version is added, so whoever sees the version finds them."""
        self.store.put_blob(HEADS_NS, heads_key(project_id, encoder_id, revision), dump_heads(heads))
