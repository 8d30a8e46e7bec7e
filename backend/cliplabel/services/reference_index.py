"""Which image a task's reference pointed at, for re-scoring a project without downloading its images again.

After a retrain every unlabelled task is predicted again. Its image has not changed, so what the store remembers of
it — its content hash (the key of its cached embedding, proposals and crops) and its upright size — is enough to
score it against the new heads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from cliplabel.core.errors import CliplabelError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.sources import SourceContext
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.store import Store

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


class ReferenceIndex:
    """(Label Studio host, image reference) → the image's content hash and size, in the store."""

    def __init__(self, store: Store, embeddings: EmbeddingService) -> None:
        self.store = store
        self.embeddings = embeddings

    def known_images(self, refs: Mapping[Job, str | None], ctx: SourceContext, choice_keys: set[str],
                     rect_keys: set[str]) -> dict[Job, KnownImage]:
        """Jobs whose image was seen before and whose cached state is enough to score it without the bytes: a box
        control needs the size, a Choices control the cached embedding (returned with the image)."""
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
        """Records the downloaded images under their tasks' references (with the upright size where it is known)."""
        for job, blob in blobs.items():
            ref = refs.get(job)
            if ref:
                wh = sizes.get(job)
                self.store.put_blob(REF_NS, _ref_key(ctx, ref), json.dumps(
                    {"hash": content_hash(blob), "wh": list(wh) if wh is not None else None}))


def _parse(raw: str) -> KnownImage | None:
    """A stored entry, or None for one this version cannot read (it is then downloaded again and rewritten)."""
    try:
        meta = json.loads(raw)
        wh = meta.get("wh")
        return KnownImage(str(meta["hash"]), (int(wh[0]), int(wh[1])) if wh else None)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
