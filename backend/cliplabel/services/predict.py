"""The prediction service: tasks + label config → one `TaskPrediction` per task, in order.

Images are fetched concurrently, encoded through the cache in full batches across all tasks of a request, and scored
against each control's prompt-ensemble class vectors. A task that fails gets an empty prediction and a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from cliplabel.vision import classify
from cliplabel.vision import images
from cliplabel.labelstudio import format as ls_format
from cliplabel.vision import prompts
from cliplabel.vision import regions
from cliplabel.labelstudio import sources
from cliplabel.services.detect import BoxDetector, BoxImage, DetectorConfig
from cliplabel.core.domain import ChoicePrediction, Control, DrawnRegion, LabelConfig, ProjectState, RegionPrediction, TaskPrediction
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.core.errors import CliplabelError
from cliplabel.labelstudio.fetch import ImageFetcher
from cliplabel.labelstudio.auth import LabelStudioAuth
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.core.metrics import Metrics
from cliplabel.vision.train import Head

logger = logging.getLogger(__name__)


REF_NS = "image-ref"


@dataclass(frozen=True)
class KnownImage:
    """What the reference index remembers of an image a task pointed at: its content hash and upright size, and its
    cached embedding when a Choices control needs it (read once, when the image is looked up)."""

    content_hash: str
    wh: tuple[int, int] | None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)


def _image_ref(task: object, key: str) -> str | None:
    try:
        ref = ls_format.task_image_ref(task, key)
    except CliplabelError:
        return None
    return None if ref.startswith("data:") else ref  # inline images carry their bytes: nothing to remember


def _ref_key(ctx: sources.SourceContext, ref: str | None) -> str:
    # Relative references (/data/upload/...) mean different files on different Label Studio hosts.
    return hashlib.sha256(f"{ctx.base_url or ''}|{ref}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class LabelStudioDefaults:
    """Label Studio's URL and key from the settings; when set they win over what `/setup` sent."""

    url: str | None
    api_key: str | None
    allowed_hosts: tuple[str, ...]
    local_files_root: str | None


class Predictor:
    def __init__(self, embeddings: EmbeddingService, fetcher: ImageFetcher, pool: ThreadPoolExecutor,
                 templates: Sequence[str], defaults: LabelStudioDefaults, metrics: Metrics,
                 detector_config: DetectorConfig | None = None, fetch_pool: ThreadPoolExecutor | None = None) -> None:
        self.embeddings = embeddings
        self.fetcher = fetcher
        self.pool = pool
        # Downloads get their own threads, so the next chunk's downloads never queue ahead of this chunk's decodes.
        self.fetch_pool = fetch_pool or pool
        self.templates = tuple(templates)
        self.defaults = defaults
        self.metrics = metrics
        self._auth: dict[tuple[str, str], LabelStudioAuth] = {}
        self._lock = threading.Lock()
        self.detector = BoxDetector(embeddings, pool, self.class_vectors, detector_config or DetectorConfig())

    # -- where images come from ------------------------------------------------------------------------------------
    def source_context(self, project: ProjectState | None) -> tuple[sources.SourceContext, LabelStudioAuth | None]:
        base_url = self.defaults.url or (project.hostname.rstrip("/") if project and project.hostname else None)
        token = self.defaults.api_key or (project.access_token if project else None)
        ctx = sources.SourceContext(base_url=base_url, allowed_hosts=self.defaults.allowed_hosts,
                                    local_files_root=self.defaults.local_files_root)
        if not base_url or not token:
            return ctx, None
        key = (base_url, hashlib.sha256(token.encode()).hexdigest())
        with self._lock:
            auth = self._auth.get(key)
            if auth is None:
                auth = self._auth[key] = LabelStudioAuth(base_url, token, self.fetcher.session,
                                                         self.fetcher.timeout_s)
        return ctx, auth

    def label_studio_client(self, project: ProjectState | None) -> LabelStudioClient | None:
        """An API client for the project's Label Studio, with the same URL and credentials as image downloads."""
        ctx, auth = self.source_context(project)
        if not ctx.base_url or auth is None:
            return None
        # Exports and task listings of large projects take longer than one image download.
        return LabelStudioClient.with_auth(auth, self.fetcher.session, max(60.0, self.fetcher.timeout_s))

    # -- class vectors ---------------------------------------------------------------------------------------------
    def class_vectors(self, control: Control) -> np.ndarray:
        """(K, D) prompt-ensemble vectors of a control's classes (computed once per label set)."""
        return self.embeddings.ensemble_vectors([prompts.build_ensemble(c, self.templates) for c in control.classes])

    # -- prediction ------------------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[object], config: LabelConfig, project: ProjectState | None,
                model_version: str, params: dict[str, Any] | None = None,
                heads: Mapping[str, Head] | None = None, from_cache: bool = False) -> list[TaskPrediction]:
        """One prediction per task, in task order; failures become empty predictions with `error` set.

        With `params.context` holding regions an annotator drew (interactive pre-annotation), the answer is those
        regions labelled, not a full prediction. With `from_cache` (re-scoring a project after a retrain), an image
        seen before under the same reference is not downloaded again: its cached embeddings, proposals and crops
        are scored against the new heads, and only what is missing from the cache is fetched.
        """
        ids = [ls_format.task_id(t) for t in tasks]
        self.metrics.inc("tasks_received", len(tasks))
        choice_controls, rect_controls = config.of_kind("choices"), config.of_kind("rectanglelabels")
        drawn = ls_format.drawn_regions(params)
        if drawn:
            choice_controls = ()
        if not choice_controls and not rect_controls:
            return [TaskPrediction(task_id=i, model_version=model_version) for i in ids]
        ctx, auth = self.source_context(project)
        keys = sorted({c.image_key for c in (*choice_controls, *rect_controls)})
        jobs = [(ti, k) for ti in range(len(tasks)) for k in keys]
        refs = {job: _image_ref(tasks[job[0]], job[1]) for job in jobs}
        known = self._known_images(refs, ctx, {c.image_key for c in choice_controls},
                                   {c.image_key for c in rect_controls}) if from_cache and not drawn else {}
        heads = heads or {}
        lazy = {job: BoxImage(ref.content_hash, wh=ref.wh, load=self._loader(tasks[job[0]], ids[job[0]], job[1], ctx,
                                                                                auth))
                for job, ref in known.items() if ref.wh is not None}
        errors: dict[int, str] = {}
        choices: list[list[ChoicePrediction]] = [[] for _ in tasks]
        regions_by_task: list[list[RegionPrediction]] = [[] for _ in tasks]
        # Pipelined by encoder batch: while one chunk of tasks is encoded, the next chunk's images download.
        step = max(1, self.embeddings.batch_size)
        chunks = [range(i, min(i + step, len(tasks))) for i in range(0, len(tasks), step)]

        def download(rows: range) -> list[tuple[tuple[int, str], Future[bytes | CliplabelError]]]:
            return [((ti, k), self.fetch_pool.submit(self._fetch, tasks[ti], ids[ti], k, ctx, auth))
                    for ti in rows for k in keys if (ti, k) not in known]

        pending = download(chunks[0]) if chunks else []
        for ci, rows in enumerate(chunks):
            current, pending = pending, (download(chunks[ci + 1]) if ci + 1 < len(chunks) else [])
            blobs: dict[tuple[int, str], bytes] = {}
            for job, future in current:
                result = future.result()
                if isinstance(result, CliplabelError):
                    errors.setdefault(job[0], result.detail)
                else:
                    blobs[job] = result
            mine = {job: v for job, v in known.items() if job[0] in rows}
            found = self._choices(choice_controls, blobs, mine, errors, len(tasks), heads)
            boxes, decoded = self._regions(rect_controls, drawn, blobs, {j: v for j, v in lazy.items() if j in mine},
                                           errors, len(tasks), heads)
            for ti in rows:
                choices[ti], regions_by_task[ti] = found[ti], boxes[ti]
            self._remember_refs(refs, ctx, blobs, decoded)
        out = []
        for ti in range(len(tasks)):
            if ti in errors:
                self.metrics.inc("tasks_failed")
                logger.warning("task=%s predicted nothing: %s", ids[ti], errors[ti])
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, error=errors[ti]))
            else:
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, choices=tuple(choices[ti]),
                                          regions=tuple(regions_by_task[ti])))
        self.metrics.inc("tasks_predicted", len(tasks) - len(errors))
        self.metrics.inc("images_from_cache", len(known))
        return out

    # -- the reference index: which image a task's reference pointed at, for re-scoring without downloads --------
    def _known_images(self, refs: Mapping[tuple[int, str], str | None], ctx: sources.SourceContext,
                      choice_keys: set[str], rect_keys: set[str]) -> dict[tuple[int, str], KnownImage]:
        """Jobs whose image was seen before and whose cached state is enough to score it without the bytes."""
        known: dict[tuple[int, str], KnownImage] = {}
        for job, ref in refs.items():
            raw = self.embeddings.store.get_blob(REF_NS, _ref_key(ctx, ref)) if ref else None
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
                image = KnownImage(str(meta["hash"]), tuple(meta["wh"]) if meta.get("wh") else None)  # type: ignore[arg-type]
            except (ValueError, KeyError, TypeError):
                continue
            if job[1] in rect_keys and image.wh is None:
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

    def _remember_refs(self, refs: Mapping[tuple[int, str], str | None], ctx: sources.SourceContext,
                       blobs: Mapping[tuple[int, str], bytes], decoded: Mapping[tuple[int, str], BoxImage]) -> None:
        for job, blob in blobs.items():
            ref = refs.get(job)
            if ref:
                item = decoded.get(job)
                self.embeddings.store.put_blob(REF_NS, _ref_key(ctx, ref), json.dumps(
                    {"hash": content_hash(blob), "wh": list(item.wh) if item is not None else None}))

    def _loader(self, task: object, task_id: int | None, key: str, ctx: sources.SourceContext,
                auth: LabelStudioAuth | None) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            result = self._fetch(task, task_id, key, ctx, auth)
            if isinstance(result, CliplabelError):
                raise result
            return self.decode_full(result).image

        return load

    def _choices(self, controls: Sequence[Control], blobs: dict[tuple[int, str], bytes],
                 known: Mapping[tuple[int, str], KnownImage], errors: dict[int, str], n_tasks: int,
                 heads: Mapping[str, Head]) -> list[list[ChoicePrediction]]:
        per_task: list[list[ChoicePrediction]] = [[] for _ in range(n_tasks)]
        if not controls:
            return per_task
        wanted = sorted({(ti, c.image_key) for c in controls for ti in range(n_tasks) if (ti, c.image_key) in blobs})
        emb_of: dict[tuple[int, str], np.ndarray] = {job: image.embedding for job, image in known.items()
                                                     if image.embedding is not None}
        for job, emb in zip(wanted, self.embeddings.images([blobs[j] for j in wanted])):
            if isinstance(emb, CliplabelError):
                errors.setdefault(job[0], emb.detail)
            else:
                emb_of[job] = emb
        for control in controls:
            rows = [ti for ti in range(n_tasks) if ti not in errors and (ti, control.image_key) in emb_of]
            if not rows:
                continue
            vecs, scale = self.head_vectors(control, heads.get(control.from_name))
            probs = classify.softmax_probabilities(np.stack([emb_of[(ti, control.image_key)] for ti in rows]),
                                                   vecs, scale)
            for ti, p in zip(rows, probs):
                choice = classify.choose(control, p)
                if choice is not None:
                    per_task[ti].append(choice)
        return per_task

    def _regions(self, controls: Sequence[Control], drawn: Sequence[DrawnRegion],
                 blobs: dict[tuple[int, str], bytes], lazy: Mapping[tuple[int, str], BoxImage], errors: dict[int, str],
                 n_tasks: int, heads: Mapping[str, Head]
                 ) -> tuple[list[list[RegionPrediction]], dict[tuple[int, str], BoxImage]]:
        """Boxes per task, and the images decoded on the way (their sizes go into the reference index)."""
        per_task: list[list[RegionPrediction]] = [[] for _ in range(n_tasks)]
        if not controls:
            return per_task, {}
        wanted = sorted({(ti, c.image_key) for c in controls for ti in range(n_tasks)
                         if ti not in errors and (ti, c.image_key) in blobs})
        decoded = dict(zip(wanted, self.pool.map(lambda j: self._decode_full(blobs[j]), wanted)))
        items: dict[tuple[int, str], BoxImage] = {}
        for job, item in decoded.items():
            if isinstance(item, CliplabelError):
                errors.setdefault(job[0], item.detail)
            else:
                items[job] = item
        fresh = dict(items)
        items.update(lazy)
        if drawn:
            for ti in range(n_tasks):
                per_task[ti] = self._interactive(controls, drawn, items, ti, heads) if ti not in errors else []
            return per_task, fresh
        for control in controls:
            rows = [ti for ti in range(n_tasks) if ti not in errors and (ti, control.image_key) in items]
            try:
                found = self.detector.detect([items[(ti, control.image_key)] for ti in rows], control,
                                             heads.get(control.from_name)) if rows else []
            except CliplabelError:
                if not any((ti, control.image_key) in lazy for ti in rows):
                    raise
                # A cached image had to be downloaded after all and that failed: score the images one by one so
                # only the broken task loses its prediction.
                found = []
                for ti in rows:
                    try:
                        found.extend(self.detector.detect([items[(ti, control.image_key)]], control,
                                                          heads.get(control.from_name)))
                    except CliplabelError as exc:
                        errors.setdefault(ti, exc.detail)
                        found.append([])
            for ti, regs in zip(rows, found):
                per_task[ti].extend(regs)
        return per_task, fresh

    def _interactive(self, controls: Sequence[Control], drawn: Sequence[DrawnRegion],
                     items: dict[tuple[int, str], BoxImage], ti: int, heads: Mapping[str, Head]
                     ) -> list[RegionPrediction]:
        out = []
        for region in drawn:
            control = next((c for c in controls if c.from_name == region.from_name), None) or next(
                (c for c in controls if c.to_name == region.to_name), None)
            item = items.get((ti, control.image_key)) if control else None
            if control is None or item is None:
                continue
            w, h = item.wh
            if region.kind == "rectangle" and region.box_pct is not None:
                x0, y0, x1, y1 = region.box_pct
                box = regions.from_percent(x0, y0, x1 - x0, y1 - y0, (w, h))
                if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                    found = self.detector.label_box(item, control, box, heads.get(control.from_name))
                    out.extend([found] if found else [])
            elif region.kind == "keypoint" and region.point_pct is not None:
                point = (region.point_pct[0] * w / 100.0, region.point_pct[1] * h / 100.0)
                found = self.detector.box_around_point(item, control, point, heads.get(control.from_name))
                out.extend([found] if found else [])
        return out

    def _decode_full(self, blob: bytes) -> BoxImage | CliplabelError:
        try:
            return self.decode_full(blob)
        except CliplabelError as exc:
            return exc

    def decode_full(self, blob: bytes) -> BoxImage:
        """The full-resolution upright image for the box path. Raises ImageFetchError."""
        decoded = images.decode(blob, self.embeddings.max_pixels)
        return BoxImage(content_hash=content_hash(blob), image=decoded.image)

    def fetch_image(self, task: object, key: str, project: ProjectState | None) -> bytes:
        """One task's image bytes, under the same policy as prediction. Raises CliplabelError."""
        ctx, auth = self.source_context(project)
        result = self._fetch(task, ls_format.task_id(task), key, ctx, auth)
        if isinstance(result, CliplabelError):
            raise result
        return result

    def head_vectors(self, control: Control, head: Head | None) -> tuple[np.ndarray, float]:
        """(class vectors, logit scale) served for a control: the learned head when it fits the control's labels."""
        if head is not None and head.labels == control.values:
            return head.class_vecs, head.logit_scale
        return self.class_vectors(control), self.embeddings.encoder.logit_scale

    def top_choice(self, control: Control, emb: np.ndarray, head: Head | None) -> str:
        vecs, _ = self.head_vectors(control, head)
        return control.values[int(np.argmax(vecs @ emb))]

    def _fetch(self, task: object, task_id: int | None, key: str, ctx: sources.SourceContext,
               auth: LabelStudioAuth | None) -> bytes | CliplabelError:
        try:
            ref = ls_format.task_image_ref(task, key)
            source = sources.resolve(ref, ctx, task_id)
            return self.fetcher.fetch(source, ctx, auth)
        except CliplabelError as exc:
            return exc
