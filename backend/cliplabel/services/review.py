"""Review the uncertain first: where each task sits among the project's images, and Label Studio set up to use it.

**The measure.** A prediction's `score` (what Label Studio sorts and samples by) is, for a `<Choices>` control, the
calibrated probability of the top choice: the chance that the pre-label is right. Ascending, it puts first the tasks
whose human answer most likely *changes* a label — the goal is a correct dataset for the fewest actions — and it is
the same scale auto-accept thresholds, so "accept above t, review the rest lowest first" is one ordering. (Margin
top1 − top2 ranks nearly the same for a few classes; entropy also rewards mass spread over classes that no
annotator would hesitate between.)

**Diversity.** Label Studio's uncertainty sampling (`projects/functions/next_task.py`) serves the lowest score from
the prediction `cluster` the annotator has solved least, so it needs a cluster per prediction. Here: k-means on the
project's cached image embeddings (cosine, k ≈ √N / 2, at most `MAX_CLUSTERS`), plus each task's nearest tasks as
`neighbors`. Label Studio 1.23 stores both only through its prediction serializer: not from `/predict` (which keeps
`result`, `score` and `model_version`), nor from the bulk `/api/projects/{id}/import/predictions` (which builds each
prediction from those fields alone, `data_import/api.py`; seen on the wire too). So bulk jobs keep their one request
per chunk, and `review` sets them with one `PATCH /api/predictions/{id}` per prediction of the current version —
run it again after a retrain's re-score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.search import MAX_PAIRWISE_TASKS, ProjectEmbeddings, ProjectIndex, nearest
from cliplabel.store import Store

logger = logging.getLogger(__name__)
MAX_CLUSTERS = 100
KMEANS_SAMPLE = 20_000  # centroids are fitted on at most this many rows, then every row is assigned
KMEANS_ITERATIONS = 25
NEIGHBORS = 5
DEFAULT_VIEW_TITLE = "Review: least certain first"


def cluster_count(n: int) -> int:
    """k ≈ √n / 2, at least 1, at most `MAX_CLUSTERS` (0 for no rows)."""
    return 0 if n <= 0 else max(1, min(MAX_CLUSTERS, round(math.sqrt(n) / 2)))


def kmeans(emb: np.ndarray, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; deterministic for a seed.

    Args:
        emb: (N, D) float32, L2-normalised.
        k: clusters wanted; fewer when there are fewer distinct rows.

    Returns:
        (N,) int64 cluster of each row, numbered 0..k-1 by first appearance.
    """
    n = emb.shape[0]
    if n == 0 or k <= 1:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    fit = emb[rng.choice(n, KMEANS_SAMPLE, replace=False)] if n > KMEANS_SAMPLE else emb
    centres = [fit[int(rng.integers(len(fit)))]]
    dist = 1.0 - fit @ centres[0]  # for unit vectors, half the squared Euclidean distance
    trials = 2 + int(math.log(k))  # greedy k-means++ (as scikit-learn): the best of a few sampled candidates
    for _ in range(1, k):
        weights = np.clip(dist, 0.0, None)
        if weights.sum() <= 1e-9:  # every row sits on a centre already
            break
        candidates = rng.choice(len(fit), size=trials, p=weights / weights.sum())
        options = np.minimum(dist[None, :], 1.0 - fit[candidates] @ fit.T)
        best = int(np.argmin(options.sum(axis=1)))
        centres.append(fit[int(candidates[best])])
        dist = options[best]
    c = np.stack(centres).astype(np.float32)
    for _ in range(iterations):
        labels = np.argmax(fit @ c.T, axis=1)
        moved = c.copy()
        for j in range(len(c)):
            members = fit[labels == j]
            if len(members):
                v = members.sum(0)
                moved[j] = v / max(float(np.linalg.norm(v)), 1e-12)
        if np.allclose(moved, c, atol=1e-6):
            break
        c = moved
    labels = np.argmax(emb @ c.T, axis=1)
    _, first = np.unique(labels, return_index=True)
    renumber = {int(labels[i]): j for j, i in enumerate(sorted(first))}
    return np.asarray([renumber[int(x)] for x in labels], np.int64)


@dataclass(frozen=True)
class Placement:
    """Each placed task's cluster and nearest tasks."""

    clusters: dict[int, int]
    neighbors: dict[int, tuple[int, ...]]

    @property
    def n_clusters(self) -> int:
        return len(set(self.clusters.values()))



def place(found: ProjectEmbeddings, neighbors: int = NEIGHBORS) -> Placement:
    """Clusters and nearest neighbours of every task with a cached embedding (neighbours only up to
    `MAX_PAIRWISE_TASKS` tasks: all pairs are compared)."""
    ids = [int(t) for t in found.task_ids]
    labels = kmeans(found.emb, cluster_count(len(ids)))
    near: dict[int, tuple[int, ...]] = {}
    if len(ids) <= MAX_PAIRWISE_TASKS:
        rows = nearest(found.emb, neighbors)
        near = {ids[i]: tuple(ids[j] for j in rows[i]) for i in range(len(ids))}
    return Placement(clusters={t: int(c) for t, c in zip(ids, labels)}, neighbors=near)


@dataclass(frozen=True)
class ReviewSetup:
    """What `review` did to a project in Label Studio."""

    project_id: str
    model_version: str
    sampling: str
    view_id: int
    view_title: str
    clusters: int
    tasks_placed: int
    predictions_updated: int
    tasks_without_embedding: int


class ReviewService:
    """Places tasks (cluster, neighbours), attaches that to bulk jobs' predictions, and sets a project up for review.

    Args:
        current_version: the name of a project's current model version.
    """

    def __init__(self, store: Store, clients: Callable[[str], LabelStudioClient], index: ProjectIndex,
                 current_version: Callable[[str], str]) -> None:
        self.store = store
        self.clients = clients
        self.index = index
        self.current_version = current_version

    def placement(self, project: object) -> Placement:
        """Clusters and neighbours of the project's tasks from what is cached now."""
        return place(self.index.load(project))

    def start(self, project: object, title: str = DEFAULT_VIEW_TITLE, update_predictions: bool = True) -> ReviewSetup:
        """Switches the project to uncertainty sampling over its current version, sets cluster and neighbours on that
        version's stored predictions (with `update_predictions`), and creates (or refreshes) the Data Manager view of
        its unlabelled tasks, least certain first.

        Raises:
            InvalidRequestError: the project has no Label Studio URL and key; LabelStudioError: Label Studio failed.
        """
        pid = ls_format.project_id(project)
        client, version = self.clients(pid), self.current_version(pid)
        found = self.index.load(pid)
        placement = place(found)
        updated = 0
        if update_predictions:
            for pred in client.predictions(int(pid)):
                tid = pred.task_id
                if pred.model_version != version or pred.prediction_id is None or tid not in placement.clusters:
                    continue
                client.place_prediction(pred.prediction_id, placement.clusters[tid], placement.neighbors.get(tid, ()))
                updated += 1
        client.use_uncertainty_sampling(int(pid), version)
        existing = next((vid for vid, t in client.views(int(pid)) if t == title), None)
        view = client.put_view(int(pid), ls_format.least_certain_view(title, version), existing)
        sampling, _ = client.project_sampling(int(pid))
        logger.info("review project=%s version=%s view=%s clusters=%d predictions updated=%d", pid, version, view,
                    placement.n_clusters, updated)
        return ReviewSetup(project_id=pid, model_version=version, sampling=sampling or "", view_id=view,
                           view_title=title, clusters=placement.n_clusters, tasks_placed=len(placement.clusters),
                           predictions_updated=updated, tasks_without_embedding=found.missing)
