"""Embeddings in bulk: a group's vectors come back from either store as one matrix, in order, with a working index."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cliplabel.store import Store, matrix


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_segments_read_back_as_one_matrix(make_store: Callable[[str], Store], store_kind: str, dtype: str) -> None:
    store = make_store(store_kind)
    # An unknown group is an empty matrix, not an error.
    assert store.get_matrix("image", "enc", "p1").emb.shape[0] == 0
    rng = np.random.default_rng(0)
    a, b = _unit(rng, 5, 16), _unit(rng, 3, 16)
    store.append_matrix("image", "enc", "p1", matrix.pack_segment([f"h{i}" for i in range(5)], a, dtype))
    store.append_matrix("image", "enc", "p1", matrix.pack_segment(["x", "h1", "y"], b, dtype))
    store.append_matrix("image", "enc", "p2", matrix.pack_segment(["other"], a[:1], dtype))  # another group
    got = make_store(store_kind).get_matrix("image", "enc", "p1")  # a restart reads the same
    assert got.keys == ("h0", "h1", "h2", "h3", "h4", "x", "h1", "y")
    assert got.emb.dtype == np.dtype(dtype) and got.emb.shape == (8, 16)
    tol = 1e-3 if dtype == "float16" else 0.0
    np.testing.assert_allclose(got.emb.astype(np.float32), np.concatenate([a, b]), atol=tol)
    found, rows = got.rows(["h1", "h4", "missing"])
    assert found.tolist() == [True, True, False]
    assert rows.tolist() == [6, 4, -1]  # a key appended again points at its latest row


def test_corrupt_segment_is_skipped_not_served(make_store: Callable[[str], Store], store_kind: str) -> None:
    store = make_store(store_kind)
    rng = np.random.default_rng(1)
    good = matrix.pack_segment(["a", "b"], _unit(rng, 2, 8), "float32")
    bad = bytearray(matrix.pack_segment(["c"], _unit(rng, 1, 8), "float32"))
    bad[-10] ^= 0xFF  # a flipped byte in the vector: the checksum no longer matches
    store.append_matrix("image", "enc", "p", good)
    store.append_matrix("image", "enc", "p", bytes(bad))
    store.append_matrix("image", "enc", "p", b"junk")
    got = store.get_matrix("image", "enc", "p")
    assert got.keys == ("a", "b")


@pytest.mark.parametrize(("keys", "shape"), [
    (["a"], (2, 4)),  # fewer keys than rows
    (["a", "b"], (2,)),  # not a matrix
    (["a\nb"], (1, 4)),  # a key that would split in two
])
def test_pack_rejects_mismatched_input(keys: list[str], shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        matrix.pack_segment(keys, np.zeros(shape, np.float32))


def test_embedding_service_groups(encoder, make_store: Callable[[str], Store]) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from cliplabel.core.metrics import Metrics
    from cliplabel.model.embeddings import EmbeddingService

    store = make_store("embedded")
    with ThreadPoolExecutor(2) as pool:
        service = EmbeddingService(encoder, store, 8, 10_000_000, pool, Metrics())
        emb = _unit(np.random.default_rng(2), 4, encoder.embed_dim)
        service.remember_group("project-1", ["a", "b", "c", "d"], emb)
        got = service.group_matrix("project-1")
        assert got.keys == ("a", "b", "c", "d") and got.emb.dtype == np.float16
        # float16 keeps every cosine to the float32 vector above 0.9999
        cos = np.sum(got.emb.astype(np.float32) * emb, axis=1)
        assert cos.min() > 0.9999
        assert service.group_matrix("project-2").keys == ()
