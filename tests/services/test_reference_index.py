"""The reference index: what a re-score may score from the cache, and what it must download again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cliplabel.labelstudio.sources import SourceContext
from cliplabel.model.embeddings import content_hash
from cliplabel.services.reference_index import REF_NS, ReferenceIndex, _ref_key, image_ref
from cliplabel.store import Store, matrix, open_store

LS = SourceContext(base_url="http://ls.test")


class _CachedImages:
    """What the index asks of the embeddings: cached vectors by content hash, and a host's matrix of them."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.segments: dict[str, list[bytes]] = {}

    def cached_images(self, hashes: Sequence[str]) -> list[np.ndarray | None]:
        return [self.vectors.get(h) for h in hashes]

    def remember_group(self, group: str, keys: Sequence[str], emb: np.ndarray) -> None:
        self.segments.setdefault(group, []).append(matrix.pack_segment(keys, emb, "float32"))

    def group_matrix(self, group: str) -> matrix.EmbeddingMatrix:
        return matrix.join_segments(self.segments.get(group, []), group)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(None, tmp_path)
    yield s
    s.close()


@pytest.mark.parametrize(("task", "expected"), [
    ("not a task", None),  # unusable task: nothing to remember
    ({"data": {}}, None),  # no reference under the key
    ({"data": {"image": "data:image/png;base64,AAAA"}}, None),  # inline bytes: nothing to remember
    ({"data": {"image": "/data/upload/1/a.jpg"}}, "/data/upload/1/a.jpg"),
])
def test_image_ref(task: object, expected: str | None) -> None:
    assert image_ref(task, "image") == expected


def test_remembered_images_are_known_with_their_size_and_embedding(store: Store) -> None:
    vec = np.ones(4, np.float32)
    index = ReferenceIndex(store, _CachedImages({content_hash(b"a"): vec}))  # type: ignore[arg-type]
    refs = {(0, "image"): "/a.jpg", (1, "image"): "/b.jpg", (2, "image"): None}
    index.remember(refs, LS, {(0, "image"): b"a", (1, "image"): b"b"}, {(0, "image"): (64, 48)})

    boxes_only = index.known_images(refs, LS, choice_keys=set(), rect_keys={"image"})
    # /b.jpg was never decoded, so its size is unknown: the box path must download it
    assert list(boxes_only) == [(0, "image")]
    assert boxes_only[(0, "image")].wh == (64, 48) and boxes_only[(0, "image")].embedding is None

    choices_only = index.known_images(refs, LS, choice_keys={"image"}, rect_keys=set())
    # /b.jpg has no cached embedding: a Choices control must download it too
    assert list(choices_only) == [(0, "image")]
    np.testing.assert_array_equal(choices_only[(0, "image")].embedding, vec)


def test_the_same_reference_on_another_host_is_another_image(store: Store) -> None:
    index = ReferenceIndex(store, _CachedImages({}))  # type: ignore[arg-type]
    refs = {(0, "image"): "/a.jpg"}
    index.remember(refs, LS, {(0, "image"): b"a"}, {(0, "image"): (8, 8)})
    assert index.known_images(refs, SourceContext(base_url="http://other.test"), set(), {"image"}) == {}


@pytest.mark.parametrize("raw", ["not json", "[]", '{"wh": [1, 2]}', '{"hash": "h", "wh": [1]}'])
def test_an_entry_this_version_cannot_read_means_download_again(store: Store, raw: str) -> None:
    store.put_blob(REF_NS, _ref_key(LS, "/a.jpg"), raw)
    index = ReferenceIndex(store, _CachedImages({}))  # type: ignore[arg-type]
    assert index.known_images({(0, "image"): "/a.jpg"}, LS, set(), {"image"}) == {}


def test_choices_read_the_hosts_matrix_and_backfill_it(store: Store) -> None:
    vecs = {content_hash(b"a"): np.full(4, 0.5, np.float32), content_hash(b"b"): np.full(4, -0.5, np.float32)}
    embeddings = _CachedImages(vecs)
    index = ReferenceIndex(store, embeddings)  # type: ignore[arg-type]
    refs = {(0, "image"): "/a.jpg", (1, "image"): "/b.jpg"}
    index.remember(refs, LS, {(0, "image"): b"a"}, {})
    index.remember(refs, LS, {(0, "image"): b"a"}, {})  # the same image again: no second row
    # /b.jpg recorded before the matrix existed: a reference record, no matrix row
    store.put_blob(REF_NS, _ref_key(LS, "/b.jpg"), f'{{"hash": "{content_hash(b"b")}", "wh": null}}')
    group = next(iter(embeddings.segments))
    assert len(embeddings.group_matrix(group).keys) == 1

    cached = index.cached_rows(["/b.jpg", None, "/a.jpg", "/never.jpg"], LS)
    assert cached.found.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(cached.vectors(np.array([0, 2])), [vecs[content_hash(b"b")],
                                                                     vecs[content_hash(b"a")]])
    assert cached.content_hash(0) == content_hash(b"b")
    assert len(embeddings.group_matrix(group).keys) == 2  # /b.jpg appended: the next re-score finds it there
    # another host's references are another group
    assert not index.cached_rows(["/a.jpg"], SourceContext(base_url="http://other.test")).found.any()
