"""Find a project's images by text or by example, and its near-duplicates, from the embeddings already cached.

Nothing is downloaded or encoded here except the query text: a task counts once its image was encoded (by a
pre-label or re-score job, or a `/predict`), found through the reference index the re-score path reads.

Brute force on the (N, D) matrix: a query is one (N, D) × (D,) product, O(N·D) — at N = 100,000 and D = 512 that is
51 M multiply-adds (tens of ms on a CPU core), so no index is needed for search at the sizes bulk jobs target.
Near-duplicates and neighbours compare every pair, O(N²·D): they run in blocks up to `MAX_PAIRWISE_TASKS`; past
that an approximate-nearest-neighbour index (HNSW, e.g. hnswlib or faiss) would be needed, and they refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cliplabel.core.domain import LabelClass, ProjectState
from cliplabel.core.errors import InvalidRequestError, NotFoundError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.labelstudio.connections import LabelStudioConnections
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.services.reference_index import ReferenceIndex, image_ref
from cliplabel.store import Store
from cliplabel.vision import prompts

logger = logging.getLogger(__name__)
MAX_RESULTS = 1000
# All-pairs work (near-duplicates, neighbours) above this many tasks needs an ANN index: refused, not slow.
MAX_PAIRWISE_TASKS = 50_000
PAIR_BLOCK = 2048  # rows per block of the all-pairs product: 2048 × N float32 scores at a time
DEFAULT_DUPLICATE_COSINE = 0.97


@dataclass(frozen=True)
class ProjectEmbeddings:
    """A project's tasks whose image embedding is cached.

    `task_ids` (N,) int64 and `emb` (N, D) float32 L2-normalised: row i is task `task_ids[i]`'s image under
    `image_key`. `unlabelled` (N,) bool: the task has no kept annotation. `missing`: tasks without a cached embedding.
    """

    project_id: str
    image_key: str
    task_ids: np.ndarray = field(repr=False)
    emb: np.ndarray = field(repr=False)
    unlabelled: np.ndarray = field(repr=False)
    missing: int

    def __post_init__(self) -> None:
        n = len(self.task_ids)
        if self.emb.shape[0] != n or len(self.unlabelled) != n or self.emb.ndim != 2:
            raise ValueError(f"{n} task ids but embeddings of shape {self.emb.shape}")

    def row_of(self, task_id: int) -> int | None:
        found = np.flatnonzero(self.task_ids == task_id)
        return int(found[0]) if len(found) else None


@dataclass(frozen=True)
class Ranked:
    """Tasks ranked by cosine similarity to a query, best first."""

    task_ids: tuple[int, ...]
    scores: tuple[float, ...]
    indexed: int
    missing: int


class ProjectIndex:
    """Loads a project's cached embeddings: its tasks from Label Studio's API, their images' content hashes from the
    reference index, the vectors from the store (the path `prelabel --unlabelled` re-scores from)."""

    def __init__(self, store: Store, clients: Callable[[str], LabelStudioClient], connections: LabelStudioConnections,
                 references: ReferenceIndex) -> None:
        self.store = store
        self.clients = clients
        self.connections = connections
        self.references = references

    def load(self, project: object) -> ProjectEmbeddings:
        """Raises:
            InvalidRequestError: the project is unknown to us (no Label Studio URL and key) or predicts no image.
        """
        pid = ls_format.project_id(project)
        client = self.clients(pid)
        state = self.store.get_project(pid)
        config = label_config.parse_label_config(state.label_config if state else client.label_config(int(pid)))
        if not config.controls:
            raise InvalidRequestError(f"project {pid}'s label config has no image control to search")
        key = config.controls[0].image_key
        tasks = list(client.tasks(int(pid)))
        refs = {(i, key): image_ref(ls_format.prediction_task(t), key) for i, t in enumerate(tasks)}
        ctx, _ = self.connections.source_context(state or ProjectState(project_id=pid, label_config=""))
        known = self.references.known_images(refs, ctx, {key}, set())
        rows = sorted(i for i, _ in known)
        dim = next((v.embedding.shape[0] for v in known.values() if v.embedding is not None), 0)
        emb = (np.stack([known[(i, key)].embedding for i in rows]).astype(np.float32) if rows  # type: ignore[misc]
               else np.zeros((0, dim), np.float32))
        # Rows read back as float16 are a hair off unit length: renormalised, an image's copy scores exactly 1.
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return ProjectEmbeddings(project_id=pid, image_key=key,
                                 task_ids=np.asarray([tasks[i].task_id for i in rows], np.int64), emb=emb,
                                 unlabelled=np.asarray([not tasks[i].labelled for i in rows], bool),
                                 missing=len(tasks) - len(rows))


# -- pure numpy -------------------------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest of (N,) scores, highest first (ties: lower index first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def nearest(emb: np.ndarray, k: int, block: int = PAIR_BLOCK) -> np.ndarray:
    """For each row its `k` most similar other rows, most similar first.

    Args:
        emb: (N, D) float32, L2-normalised.

    Returns:
        (N, min(k, N - 1)) int64 row numbers.
    """
    n = emb.shape[0]
    k = max(0, min(k, n - 1))
    out = np.zeros((n, k), np.int64)
    if k == 0:
        return out
    for start in range(0, n, block):
        sims = emb[start:start + block] @ emb.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf  # not its own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start:start + sims.shape[0]] = np.take_along_axis(part, order, axis=1)
    return out


def duplicate_groups(emb: np.ndarray, threshold: float, block: int = PAIR_BLOCK) -> list[list[int]]:
    """Rows joined when their cosine similarity reaches `threshold` (transitively: single linkage), groups of two
    or more, largest first, each in row order.

    Args:
        emb: (N, D) float32, L2-normalised.
    """
    n = emb.shape[0]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for start in range(0, n, block):
        sims = emb[start:start + block] @ emb.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows + start, cols):
            if r < c:
                a, b = find(int(r)), find(int(c))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


# -- the service ------------------------------------------------------------------------------------------------------
class SearchService:
    """Search by text or example and near-duplicate groups over a project's cached embeddings."""

    def __init__(self, index: ProjectIndex, embeddings: EmbeddingService, templates: tuple[str, ...]) -> None:
        self.index = index
        self.embeddings = embeddings
        self.templates = templates

    def text_vector(self, text: str) -> np.ndarray:
        """(D,) float32: the query through the zero-shot prompt templates, as a class named `text` would be."""
        ensemble = prompts.build_ensemble(LabelClass(value=text), self.templates)
        return prompts.class_vectors([ensemble], self.embeddings.texts(ensemble.prompts))[0]

    def by_text(self, project: object, text: str, k: int) -> Ranked:
        """The `k` tasks whose image best matches `text`.

        Raises:
            InvalidRequestError: empty text, or the project cannot be read.
        """
        if not text.strip():
            raise InvalidRequestError("q must not be empty")
        found = self.index.load(project)
        if not len(found.task_ids):
            return Ranked((), (), 0, found.missing)
        return _ranked(found, found.emb @ self.text_vector(text.strip()), k, exclude=None)

    def by_task(self, project: object, task_id: int, k: int) -> Ranked:
        """The `k` tasks whose image is most like task `task_id`'s (itself left out).

        Raises:
            NotFoundError: the task has no cached embedding (not in the project, or never pre-labelled).
        """
        found = self.index.load(project)
        row = found.row_of(task_id)
        if row is None:
            raise NotFoundError(f"task {task_id} of project {found.project_id} has no cached embedding (is it in the "
                                "project, and pre-labelled?)")
        return _ranked(found, found.emb @ found.emb[row], k, exclude=row)

    def duplicates(self, project: object, threshold: float) -> tuple[list[list[int]], ProjectEmbeddings]:
        """Groups of task ids whose images' cosine similarity reaches `threshold` (single linkage), largest first.

        Raises:
            InvalidRequestError: `threshold` outside (0, 1], or more tasks than all-pairs brute force is for.
        """
        if not 0.0 < threshold <= 1.0:
            raise InvalidRequestError(f"threshold must be in (0, 1], got {threshold}")
        found = self.index.load(project)
        if len(found.task_ids) > MAX_PAIRWISE_TASKS:
            raise InvalidRequestError(f"{len(found.task_ids):,} tasks: near-duplicates by brute force stop at "
                                      f"{MAX_PAIRWISE_TASKS:,} (an ANN index would be needed)")
        # float32 sums of 1.0 can land just under it: identical images must meet a threshold of 1.
        groups = duplicate_groups(found.emb, threshold - 1e-5)
        return [[int(found.task_ids[r]) for r in g] for g in groups], found


def _ranked(found: ProjectEmbeddings, scores: np.ndarray, k: int, exclude: int | None) -> Ranked:
    if exclude is not None:
        scores = scores.copy()
        scores[exclude] = -np.inf
    rows = [r for r in top_k(scores, min(k, MAX_RESULTS) + (exclude is not None)) if r != exclude][:k]
    return Ranked(task_ids=tuple(int(found.task_ids[r]) for r in rows),
                  scores=tuple(round(float(scores[r]), 6) for r in rows),
                  indexed=len(found.task_ids), missing=found.missing)
