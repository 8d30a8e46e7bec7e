"""Learned heads as stored: one JSON record per model version, written once by a retrain and read by every process."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import numpy as np

from cliplabel.core.domain import BoxVerifier, Head, HeadMemory, ModelVersion
from cliplabel.store import records
from cliplabel.store.base import Store

HEADS_NS = "heads"


def heads_key(project_id: str, encoder_id: str, revision: int) -> str:
    return f"{project_id}:{encoder_id}:{revision}"


def _dump_head(h: Head) -> str:
    meta: dict[str, object] = {"labels": list(h.labels), "logit_scale": h.logit_scale, "alpha": h.alpha}
    if h.box_threshold is not None:
        meta["box_threshold"] = h.box_threshold
    arrays = {"class_vecs": h.class_vecs, "background_vecs": h.background_vecs}
    if h.memory is not None:
        meta["memory"] = {"beta": h.memory.beta, "ratio": h.memory.ratio,
                          "labels": [int(v) for v in h.memory.labels]}
        arrays.update({"memory_keys": h.memory.keys, "memory_weights": h.memory.weights[:, None],
                       "memory_gap": h.memory.gap[None, :]})
    if h.box_verifier is not None:
        meta["box_verifier"] = {"intercept": h.box_verifier.intercept}
        v = h.box_verifier
        arrays["box_verifier"] = np.stack([v.mean, v.scale, v.coef])
    return records.dump_arrays(meta, arrays)


def dump_heads(heads: Mapping[str, Head]) -> str:
    """Every control's head of one version → JSON (control name → meta and float32 matrices)."""
    return json.dumps({name: _dump_head(h) for name, h in heads.items()})


def load_heads(raw: str | bytes) -> dict[str, Head]:
    """The inverse of `dump_heads`. Records written before `prompt_weights` was dropped still load (it is ignored),
    and so do records from before heads had a memory, a box threshold or a box verifier (they load without)."""
    out = {}
    for name, blob in json.loads(raw).items():
        meta, arrays = records.load_arrays(blob)
        bg = arrays["background_vecs"]
        if bg.size == 0:
            # An empty matrix is stored without its width; the head's invariant wants (0, D).
            bg = np.zeros((0, arrays["class_vecs"].shape[1]), np.float32)
        memory = None
        if "memory" in meta:
            m = meta["memory"]
            memory = HeadMemory(keys=arrays["memory_keys"], labels=np.array(m["labels"], np.int64),
                                weights=arrays["memory_weights"][:, 0], gap=arrays["memory_gap"][0],
                                beta=float(m["beta"]), ratio=float(m["ratio"]))
        verifier = None
        if "box_verifier" in meta:
            mean, scale, coef = arrays["box_verifier"].astype(np.float64)
            verifier = BoxVerifier(mean=mean, scale=scale, coef=coef, intercept=float(meta["box_verifier"]["intercept"]))
        out[name] = Head(from_name=name, labels=tuple(meta["labels"]), class_vecs=arrays["class_vecs"],
                         background_vecs=bg, logit_scale=float(meta["logit_scale"]), alpha=float(meta["alpha"]),
                         memory=memory,
                         box_threshold=float(meta["box_threshold"]) if "box_threshold" in meta else None,
                         box_verifier=verifier)
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
