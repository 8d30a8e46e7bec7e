"""Learned heads as stored: exact round trips, records from before `prompt_weights` was dropped, one read per version."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from cliplabel.core.domain import BoxVerifier, Head, ModelVersion
from cliplabel.store import records
from cliplabel.store.heads import HEADS_NS, HeadStore, dump_heads, heads_key, load_heads


def _head(name: str, n_background: int) -> Head:
    rng = np.random.default_rng(len(name) + n_background)
    return Head(name, ("cat", "dog"), rng.standard_normal((2, 4)).astype(np.float32),
                rng.standard_normal((n_background, 4)).astype(np.float32), 87.5, alpha=0.4)


def _assert_same(a: Head, b: Head) -> None:
    assert (a.from_name, a.labels, a.logit_scale, a.alpha) == (b.from_name, b.labels, b.logit_scale, b.alpha)
    np.testing.assert_array_equal(a.class_vecs, b.class_vecs)
    np.testing.assert_array_equal(a.background_vecs, b.background_vecs)
    assert a.background_vecs.shape == b.background_vecs.shape


@pytest.mark.parametrize("n_background", [0, 3])  # no learned background: stored empty, loaded as (0, D)
def test_heads_round_trip_exactly(n_background: int) -> None:
    heads = {"kind": _head("kind", n_background), "box": _head("box", 1)}
    loaded = load_heads(dump_heads(heads))
    assert sorted(loaded) == ["box", "kind"]
    for name, head in heads.items():
        _assert_same(loaded[name], head)


def test_a_box_threshold_round_trips_and_old_records_load_without() -> None:
    head = dataclasses.replace(_head("box", 2), box_threshold=0.98)
    assert load_heads(dump_heads({"box": head}))["box"].box_threshold == 0.98
    assert load_heads(dump_heads({"box": _head("box", 2)}))["box"].box_threshold is None


def test_a_box_verifier_round_trips_exactly() -> None:
    verifier = BoxVerifier(mean=np.array([0.5, -1.25, 2.0]), scale=np.array([1.0, 0.5, 4.0]),
                           coef=np.array([0.75, -2.5, 0.125]), intercept=-0.3)
    head = dataclasses.replace(_head("box", 2), box_threshold=0.4, box_verifier=verifier)
    loaded = load_heads(dump_heads({"box": head}))["box"]
    assert loaded.box_verifier is not None and loaded.box_threshold == 0.4
    for field in ("mean", "scale", "coef"):
        np.testing.assert_array_equal(getattr(loaded.box_verifier, field), getattr(verifier, field))
    assert loaded.box_verifier.intercept == verifier.intercept
    assert load_heads(dump_heads({"box": _head("box", 2)}))["box"].box_verifier is None


def test_a_record_with_prompt_weights_still_loads() -> None:
    head = _head("kind", 2)
    old = json.dumps({"kind": records.dump_arrays(
        {"labels": ["cat", "dog"], "logit_scale": 87.5, "alpha": 0.4, "prompt_weights": {"cat": [0.5, 0.5], "dog": [1.0]}},
        {"class_vecs": head.class_vecs, "background_vecs": head.background_vecs})})
    _assert_same(load_heads(old)["kind"], head)


def test_head_store_reads_a_version_once(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    heads = HeadStore(store)
    r0 = ModelVersion("1", "enc", 0, "m-r0", time.time())
    r1 = ModelVersion("1", "enc", 1, "m-r1", time.time())
    assert heads.heads_for(r0) == {}
    heads.put("1", "enc", 1, {"kind": _head("kind", 0)})
    _assert_same(heads.heads_for(r1)["kind"], _head("kind", 0))
    # versions are immutable: a second read is served from memory, even if the record changed underneath
    store.put_blob(HEADS_NS, heads_key("1", "enc", 1), dump_heads({}))
    assert list(heads.heads_for(r1)) == ["kind"]
