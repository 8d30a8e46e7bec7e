"""The pure parts of review and search: ranking, neighbours, near-duplicate groups, k-means, placements."""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.services.review import MAX_CLUSTERS, cluster_count, kmeans, place
from cliplabel.services.search import ProjectEmbeddings, duplicate_groups, nearest, top_k


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _blobs(rng: np.random.Generator, k: int, per: int, dim: int = 16, spread: float = 0.05) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    centres = _unit(rng.normal(size=(k, dim)))
    truth = np.repeat(np.arange(k), per)
    return _unit(centres[truth] + rng.normal(scale=spread, size=(k * per, dim))), truth


@pytest.mark.parametrize(("scores", "k", "expected"), [
    ([], 3, []),  # nothing to rank
    ([0.5], 0, []),  # nothing asked
    ([0.1, 0.9, 0.5], 5, [1, 2, 0]),  # k above N: all, best first
    ([0.3, 0.7, 0.7, 0.1], 2, [1, 2]),  # ties: lower index first
    ([0.3, 0.7, 0.7, 0.1], 1, [1]),
])
def test_top_k(scores: list[float], k: int, expected: list[int]) -> None:
    assert top_k(np.asarray(scores, np.float32), k).tolist() == expected


def test_nearest_leaves_each_row_out_of_its_own_neighbours() -> None:
    emb = _unit(np.asarray([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32))
    assert nearest(emb, 1, block=3).tolist() == [[1], [0], [3], [2]]  # a block boundary inside the rows
    assert nearest(emb[:1], 5).shape == (1, 0)  # a single row has no neighbour


def test_duplicate_groups_join_transitively_and_skip_singletons() -> None:
    a, b = np.asarray([1, 0, 0], np.float32), np.asarray([0, 1, 0], np.float32)
    near_a = _unit(np.asarray([[1, 0.05, 0]], np.float32))[0]  # cos(a, near_a) ≈ 0.9988
    emb = np.stack([a, b, a, near_a, _unit(np.asarray([[0, 0, 1.0]]))[0]])
    assert duplicate_groups(emb[:0], 0.9) == []  # no rows
    assert duplicate_groups(emb, 1.0 - 1e-5) == [[0, 2]]  # identical images only
    assert duplicate_groups(emb, 0.99, block=2) == [[0, 2, 3]]  # the near copy joins, across blocks
    assert duplicate_groups(emb, -1.0) == [[0, 1, 2, 3, 4]]  # everything is a duplicate of everything


@pytest.mark.parametrize(("n", "k"), [(0, 0), (1, 1), (3, 1), (60, 4), (2000, 22), (10**6, MAX_CLUSTERS)])
def test_cluster_count(n: int, k: int) -> None:
    assert cluster_count(n) == k


def test_kmeans_recovers_separated_clusters_deterministically() -> None:
    emb, truth = _blobs(np.random.default_rng(0), k=6, per=40)
    labels = kmeans(emb, 6)
    # the same partition as the truth (cluster numbers are arbitrary): each true cluster maps to one label
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 6 and len({p[1] for p in pairs}) == 6
    assert labels.tolist() == kmeans(emb, 6).tolist()  # same seed, same answer
    assert labels[0] == 0  # numbered by first appearance


def test_kmeans_degenerate_inputs() -> None:
    assert kmeans(np.zeros((0, 4), np.float32), 3).tolist() == []
    same = np.tile(np.asarray([[1, 0, 0, 0]], np.float32), (5, 1))
    assert kmeans(same, 3).tolist() == [0] * 5  # one distinct row: one cluster, whatever k asked


def test_place_clusters_and_neighbours_every_task() -> None:
    emb, truth = _blobs(np.random.default_rng(1), k=2, per=8)
    found = ProjectEmbeddings(project_id="1", image_key="image", task_ids=np.arange(100, 116), emb=emb,
                              unlabelled=np.ones(16, bool), missing=3)
    placement = place(found, neighbors=3)
    assert set(placement.clusters) == set(range(100, 116)) and placement.n_clusters == cluster_count(16) == 2
    for task, near in placement.neighbors.items():
        # a task's nearest tasks are of its own blob, and never itself
        assert len(near) == 3 and task not in near and {truth[t - 100] for t in near} == {truth[task - 100]}
        assert all(placement.clusters[t] == placement.clusters[task] for t in near)
