"""Which image a task's reference pointed at, for re-scoring a project without downloading its images again.

After a retrain every unlabelled task is predicted again. Its image has not changed, so what the store remembers of
it — its content hash (the key of its cached embedding, proposals and crops) and its upright size — is enough to
score it against the new heads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cliplabel.core.errors import CliplabelError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.sources import SourceContext
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.store import Store, matrix
from cliplabel.store.matrix import EmbeddingMatrix

REF_NS = "image-ref"
Job = tuple[int, str]  # (task index in the request, image key of the task's data)


@dataclass(frozen=True)
class KnownImage:
    """What the reference index remembers of an image a task pointed at: its content hash and upright size, and its
    cached embedding when a Choices control needs it (read once, when the image is looked up)."""

    content_hash: str
    wh: tuple[int, int] | None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)


def image_ref(task: object, key: str) -> str | None:
    """The task's reference under `key` worth remembering; None when unusable or inline."""
    try:
        ref = ls_format.task_image_ref(task, key)
    except CliplabelError:
        return None
    return None if ref.startswith("data:") else ref  # inline images carry their bytes: nothing to remember


def _ref_key(ctx: SourceContext, ref: str) -> str:
    # Relative references (/data/upload/...) mean different files on different Label Studio hosts.
    return hashlib.sha256(f"{ctx.base_url or ''}|{ref}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def host_group(ctx: SourceContext) -> str:
    """The bulk matrix (`EmbeddingService.group_matrix`) holding the embeddings of a Label Studio host's images."""
    return "refs-" + hashlib.sha256((ctx.base_url or "").encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class CachedRows:
    """Where the cached embeddings of N image references are: `rows` (N,) int64 into `matrix` (-1: not cached)."""

    matrix: EmbeddingMatrix = field(repr=False)
    rows: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return self.rows >= 0

    def vectors(self, which: np.ndarray) -> np.ndarray:
        """(len(which), D) float32, L2-normalised: the embeddings of the references at positions `which` (found)."""
        return self.matrix.emb[self.rows[which]].astype(np.float32)

    def content_hash(self, i: int) -> str:
        return self.matrix.tag(int(self.rows[i]))


class ReferenceIndex:
    """(Label Studio host, image reference) → the image's content hash and size, in the store."""

    def __init__(self, store: Store, embeddings: EmbeddingService) -> None:
        self.store = store
        self.embeddings = embeddings

    def known_images(self, refs: Mapping[Job, str | None], ctx: SourceContext, choice_keys: set[str],
                     rect_keys: set[str]) -> dict[Job, KnownImage]:
        """Jobs whose image was seen before and whose cached state is enough to score it without the bytes: a box
        control needs the size, a Choices control the cached embedding (returned with the image)."""
        # Images only a Choices control reads: their embeddings from the host's matrix, in one read.
        choice_only = choice_keys - rect_keys
        bulk = [job for job, ref in refs.items() if ref and job[1] in choice_only]
        cached = self.cached_rows([refs[job] for job in bulk], ctx)
        hits = np.flatnonzero(cached.found)
        vectors = cached.vectors(hits)
        known = {bulk[i]: KnownImage(cached.content_hash(i), None, vectors[k]) for k, i in enumerate(hits.tolist())}
        rest = {job: ref for job, ref in refs.items() if job[1] not in choice_only}
        known.update(self._one_by_one(rest, ctx, choice_keys, rect_keys))
        return known

    def cached_rows(self, refs: Sequence[str | None], ctx: SourceContext) -> CachedRows:
        """Where the cached embeddings of the images `refs` point at are, for re-scoring in bulk.

        One read of the host's matrix (after the first call of a process, only what was appended since). A reference
        the matrix lacks but the per-image records know (cached before the matrix existed) is looked up alone and
        appended to the matrix, so that it is found there now and by the next re-score.
        """
        if not any(refs):  # nothing to look up: leave the host's matrix unread
            return CachedRows(matrix.empty(), np.full(len(refs), -1, np.int64))
        group = host_group(ctx)
        keys = [r or "" for r in refs]  # the group is the host's: its rows are keyed by the reference itself
        m = self.embeddings.group_matrix(group)
        found, rows = m.rows(keys)
        misses = {(i, ""): r for i, r in enumerate(refs) if r and not found[i]}
        late = [(i, image) for (i, _), image in self._one_by_one(misses, ctx, {""}, set()).items()
                if image.embedding is not None and "\n" not in keys[i]] if misses else []
        if late:
            self.embeddings.remember_group(group, [f"{image.content_hash} {keys[i]}" for i, image in late],
                                           np.stack([image.embedding for _, image in late]))  # type: ignore[misc]
            m = self.embeddings.group_matrix(group)
            _, rows = m.rows(keys)
        return CachedRows(m, rows)

    def _one_by_one(self, refs: Mapping[Job, str | None], ctx: SourceContext, choice_keys: set[str],
                    rect_keys: set[str]) -> dict[Job, KnownImage]:
        """`known_images` through the per-image records: one store read per reference."""
        known: dict[Job, KnownImage] = {}
        for job, ref in refs.items():
            raw = self.store.get_blob(REF_NS, _ref_key(ctx, ref)) if ref else None
            if raw is None:
                continue
            image = _parse(raw)
            if image is None or (job[1] in rect_keys and image.wh is None):
                continue
            known[job] = image
        need_vectors = [job for job in known if job[1] in choice_keys]
        vectors = self.embeddings.cached_images([known[j].content_hash for j in need_vectors])
        for job, vec in zip(need_vectors, vectors):
            if vec is None:
                del known[job]  # never encoded (or evicted): download it like any other
            else:
                known[job] = replace(known[job], embedding=vec)
        return known

    def remember(self, refs: Mapping[Job, str | None], ctx: SourceContext, blobs: Mapping[Job, bytes],
                 sizes: Mapping[Job, tuple[int, int]]) -> None:
        """Records the downloaded images under their tasks' references (with the upright size where it is known),
        and appends the embeddings of those new or changed to the host's matrix (`cached_rows`)."""
        fresh: list[tuple[str, str]] = []  # (reference, content hash) of what changed
        for job, blob in blobs.items():
            ref = refs.get(job)
            if ref:
                wh, key, digest = sizes.get(job), _ref_key(ctx, ref), content_hash(blob)
                record = json.dumps({"hash": digest, "wh": list(wh) if wh is not None else None})
                old = self.store.get_blob(REF_NS, key)
                if old != record:
                    self.store.put_blob(REF_NS, key, record)
                    old_image = _parse(old) if old is not None else None
                    if (old_image is None or old_image.content_hash != digest) and "\n" not in ref:
                        fresh.append((ref, digest))
        vectors = self.embeddings.cached_images([digest for _, digest in fresh])
        rows = [(f"{digest} {ref}", vec) for (ref, digest), vec in zip(fresh, vectors) if vec is not None]
        if rows:
            self.embeddings.remember_group(host_group(ctx), [k for k, _ in rows], np.stack([v for _, v in rows]))


def _parse(raw: str) -> KnownImage | None:
    """A stored entry, or None for one this version cannot read (it is then downloaded again and rewritten)."""
    try:
        meta = json.loads(raw)
        wh = meta.get("wh")
        return KnownImage(str(meta["hash"]), (int(wh[0]), int(wh[1])) if wh else None)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
