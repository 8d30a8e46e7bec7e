"""One contract, two real stores: the embedded SQLite file and Redis."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cliplabel.core.domain import ModelVersion, ProjectState
from cliplabel.store import codec


def _version(rev: int, project: str = "1", encoder: str = "enc") -> ModelVersion:
    return ModelVersion(project_id=project, encoder_id=encoder, revision=rev, name=f"m-r{rev}",
                        created_at=time.time(), metrics={"acc": 0.5 + rev / 10}, note=f"rev {rev}")


def test_vectors_round_trip_and_miss(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    store.ping()
    assert store.get_vectors("image", "enc", []) == []
    assert store.get_vectors("image", "enc", ["a"]) == [None]
    a = np.arange(8, dtype=np.float32)
    store.put_vectors("image", "enc", {"a": a, "b": -a})
    got = store.get_vectors("image", "enc", ["b", "missing", "a"])
    np.testing.assert_array_equal(got[0], -a)
    assert got[1] is None
    np.testing.assert_array_equal(got[2], a)
    # namespaces and encoders are separate caches
    assert store.get_vectors("text", "enc", ["a"]) == [None]
    assert store.get_vectors("image", "other", ["a"]) == [None]


def test_many_vectors_in_one_call(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    items = {f"k{i}": np.full(4, i, np.float32) for i in range(1200)}
    store.put_vectors("image", "enc", items)
    got = store.get_vectors("image", "enc", list(items))
    assert all(v is not None and v[0] == i for i, v in enumerate(got))


def test_project_and_versions_survive_a_restart(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    state = ProjectState(project_id="1", label_config="<View/>", hostname="http://ls", access_token="tok")
    assert store.get_project("1") is None
    store.put_project(state)
    assert store.add_version(_version(0))
    store.put_vectors("image", "enc", {"h": np.ones(3, np.float32)})
    store.close()
    again = make_store(store_kind)
    assert again.get_project("1") == state
    assert [v.name for v in again.list_versions("1", "enc")] == ["m-r0"]
    assert again.list_versions("1", "enc")[0].metrics == {"acc": 0.5}
    np.testing.assert_array_equal(again.get_vectors("image", "enc", ["h"])[0], np.ones(3))


def test_versions_are_monotonic_compare_and_append(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert not store.add_version(_version(1))  # must start at 0
    assert store.add_version(_version(0))
    assert not store.add_version(_version(0))  # another process already added r0
    assert store.add_version(_version(1))
    assert not store.add_version(_version(3))  # no gaps
    assert [v.revision for v in store.list_versions("1", "enc")] == [0, 1]
    assert store.list_versions("2", "enc") == [] and store.list_versions("1", "other") == []


@pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b[:10], lambda b: b"XXXX" + b[4:],
                                    lambda b: b[:-4] + b"\x00\x00\x80\x7f"])
def test_codec_detects_corruption(damage) -> None:  # type: ignore[no-untyped-def]
    blob = codec.pack(np.linspace(0, 1, 16, dtype=np.float32))
    np.testing.assert_array_equal(codec.unpack(blob), np.linspace(0, 1, 16, dtype=np.float32))
    assert codec.unpack(damage(blob)) is None


def test_a_corrupt_entry_reads_as_a_miss(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    store.put_vectors("image", "enc", {"h": np.ones(4, np.float32)})
    if store_kind == "redis":
        store._redis.set(store.keys.vector("image", "enc", "h"), b"garbage")
    else:
        store._conn().execute("UPDATE vectors SET data=? WHERE key='h'", (b"garbage",))
    assert store.get_vectors("image", "enc", ["h"]) == [None]


def _example(aid: int, label: str | None, dim: int = 4):  # type: ignore[no-untyped-def]
    from cliplabel.core.domain import FeedbackExample

    return FeedbackExample(project_id="1", annotation_id=aid, from_name="label", image_hash=f"h{aid}", label=label,
                           kind="confirm" if label else "reject", embedding=np.full(dim, aid, np.float32),
                           box_xyxy=(1.0, 2.0, 3.0, 4.0) if label is None else None)


def test_feedback_is_idempotent_per_annotation(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert store.list_feedback("1") == []
    store.put_feedback("1", 10, [_example(10, "A")])
    store.put_feedback("1", 2, [_example(2, "B"), _example(2, None)])
    # an update replaces the annotation's examples; recording it three times counts once
    for _ in range(3):
        store.put_feedback("1", 10, [_example(10, "C")])
    got = store.list_feedback("1")
    assert [(e.annotation_id, e.label) for e in got] == [(2, "B"), (2, None), (10, "C")]
    np.testing.assert_array_equal(got[2].embedding, np.full(4, 10, np.float32))
    assert got[1].box_xyxy == (1.0, 2.0, 3.0, 4.0)
    store.delete_feedback("1", 2)
    store.delete_feedback("1", 999)  # deleting what is not there is fine
    assert [e.annotation_id for e in store.list_feedback("1")] == [10]
    assert store.list_feedback("2") == []


def test_event_queue_is_durable_and_ordered(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    seqs = [store.push_event(f'{{"n": {i}, "text": "a:b"}}') for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    first = store.pending_events(3)
    assert [p for _, p in first] == [f'{{"n": {i}, "text": "a:b"}}' for i in range(3)]
    store.ack_events([s for s, _ in first])
    store.close()
    again = make_store(store_kind)  # a restart loses nothing that was not acknowledged
    assert [p for _, p in again.pending_events(10)] == ['{"n": 3, "text": "a:b"}', '{"n": 4, "text": "a:b"}']


def test_blobs(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert store.get_blob("head", "k") is None
    store.put_blob("head", "k", "one")
    store.put_blob("head", "k", "two")
    assert store.get_blob("head", "k") == "two" and store.get_blob("other", "k") is None


def test_parts_are_recorded_once_even_from_many_threads(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    store = make_store(store_kind)
    assert store.list_parts("job", "j1") == {}
    # eight threads race to record the same ten parts: each part is won exactly once, by one writer
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda w: [store.add_part("job", "j1", f"chunk:{i}", f"w{w}") for i in range(10)],
                             range(8)))
    assert [sum(ws[i] for ws in wins) for i in range(10)] == [1] * 10
    parts = store.list_parts("job", "j1")
    assert sorted(parts) == sorted(f"chunk:{i}" for i in range(10))
    winner = {f"chunk:{i}": next(f"w{w}" for w, ws in enumerate(wins) if ws[i]) for i in range(10)}
    assert parts == winner  # the first write stays; later ones changed nothing
    assert store.list_parts("job", "j2") == {} and store.list_parts("other", "j1") == {}
