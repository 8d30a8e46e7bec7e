"""A group's matrix kept in memory: each refresh reads only what was appended since, and a reset group starts over."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cliplabel.store import Store, matrix
from cliplabel.store.keys import Keys


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _tail_reader(store: Store, reads: list[int]) -> Callable[[int], matrix.MatrixTail]:
    def read(cursor: int) -> matrix.MatrixTail:
        tail = store.matrix_tail("image", "enc", "g", cursor)
        reads.append(len(tail.segments))
        return tail

    return read


def test_refresh_reads_only_new_segments(make_store: Callable[[str], Store], store_kind: str) -> None:
    store = make_store(store_kind)
    rng = np.random.default_rng(0)
    a, b, c = _unit(rng, 3, 8), _unit(rng, 2, 8), _unit(rng, 1, 8)
    grown, reads = matrix.GrowingMatrix("g"), []
    read = _tail_reader(store, reads)
    # An unknown group: empty, nothing read.
    assert grown.refresh(read).emb.shape[0] == 0
    store.append_matrix("image", "enc", "g", matrix.pack_segment(["h0 k0", "h1 k1", "h2 k2"], a, "float32"))
    store.append_matrix("image", "enc", "other", matrix.pack_segment(["x"], c, "float32"))  # another group
    first = grown.refresh(read)
    store.append_matrix("image", "enc", "g", matrix.pack_segment(["h3 k3", "h1b k1"], b, "float32"))
    second = grown.refresh(read)
    third = grown.refresh(read)
    assert reads == [0, 1, 1, 0]  # every segment read once
    np.testing.assert_array_equal(second.emb, np.concatenate([a, b]))
    found, rows = second.rows(["k1", "k3", "nope"])
    assert found.tolist() == [True, True, False] and rows.tolist() == [4, 3, -1]  # k1's latest row wins
    assert second.tag(4) == "h1b" and second.tag(0) == "h0"
    assert third.keys == second.keys
    # The first snapshot is unchanged by later appends: its rows, and no row past its end.
    np.testing.assert_array_equal(first.emb, a)
    assert first.rows(["k3"])[0].tolist() == [False]


def test_a_group_deleted_behind_the_copy_is_read_again(make_store: Callable[[str], Store], store_kind: str,
                                                       request: pytest.FixtureRequest) -> None:
    store = make_store(store_kind)
    rng = np.random.default_rng(1)
    grown, reads = matrix.GrowingMatrix("g"), []
    read = _tail_reader(store, reads)
    for i in range(3):
        store.append_matrix("image", "enc", "g", matrix.pack_segment([f"k{i}"], _unit(rng, 1, 8), "float16"))
    assert grown.refresh(read).emb.shape == (3, 8)
    # The group disappears (Redis evicted or deleted the key; the SQLite file lost the rows), then gets one segment.
    if store_kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.delete(Keys(request.getfixturevalue("redis_prefix")).matrix("image", "enc", "g"))
    else:
        store._conn().execute("DELETE FROM matrices")  # type: ignore[attr-defined]
    fresh = _unit(rng, 1, 8)
    store.append_matrix("image", "enc", "g", matrix.pack_segment(["new"], fresh, "float16"))
    got = grown.refresh(read)
    assert got.keys == ("new",)  # not the three old rows plus one
    np.testing.assert_allclose(got.emb.astype(np.float32), fresh, atol=1e-3)


def test_many_appends_grow_the_buffer(make_store: Callable[[str], Store]) -> None:
    store = make_store("embedded")
    rng = np.random.default_rng(2)
    grown, reads = matrix.GrowingMatrix("g"), []
    read = _tail_reader(store, reads)
    expect = []
    for i in range(40):
        seg = _unit(rng, 3, 4)
        expect.append(seg)
        store.append_matrix("image", "enc", "g", matrix.pack_segment([f"k{i}-{j}" for j in range(3)], seg, "float32"))
        got = grown.refresh(read)
    np.testing.assert_array_equal(got.emb, np.concatenate(expect))
    assert got.rows(["k39-2", "k0-0"])[1].tolist() == [119, 0]
