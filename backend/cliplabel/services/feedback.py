"""Learning from annotators: webhook events → feedback examples → retrained heads → a new model version.

`/webhook` only appends the raw event to the store's durable queue (fast, inside Label Studio's 1 s timeout);
`process_pending` — run by a background thread on the embedded store or by an rq worker with Redis — turns events
into examples (idempotent per annotation) and retrains when enough new feedback has arrived.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cliplabel.labelstudio import label_config
from cliplabel.labelstudio import format as ls_format
from cliplabel.vision import prompts
from cliplabel.vision import regions
from cliplabel.vision import train
from cliplabel.core.domain import AnnotationEvent, Control, FeedbackExample, FeedbackKind, ModelVersion
from cliplabel.model.embeddings import content_hash
from cliplabel.core.errors import CliplabelError, InvalidRequestError
from cliplabel.core.metrics import Metrics
from cliplabel.services.predict import Predictor
from cliplabel.store import Store, records
from cliplabel.services.versions import current_version, version_name

logger = logging.getLogger(__name__)
HEADS_NS = "heads"
TRAIN_NS = "train-state"
_BATCH = 50


def heads_key(project_id: str, encoder_id: str, revision: int) -> str:
    return f"{project_id}:{encoder_id}:{revision}"


def dump_heads(heads: Mapping[str, train.Head]) -> str:
    return json.dumps({name: records.dump_arrays(
        {"labels": list(h.labels), "logit_scale": h.logit_scale, "alpha": h.alpha,
         "prompt_weights": {k: list(v) for k, v in h.prompt_weights.items()}},
        {"class_vecs": h.class_vecs, "background_vecs": h.background_vecs}) for name, h in heads.items()})


def load_heads(raw: str) -> dict[str, train.Head]:
    out = {}
    for name, blob in json.loads(raw).items():
        meta, arrays = records.load_arrays(blob)
        bg = arrays["background_vecs"]
        if bg.size == 0:
            bg = np.zeros((0, arrays["class_vecs"].shape[1]), np.float32)
        out[name] = train.Head(from_name=name, labels=tuple(meta["labels"]), class_vecs=arrays["class_vecs"],
                               background_vecs=bg, logit_scale=float(meta["logit_scale"]), alpha=float(meta["alpha"]),
                               prompt_weights={k: tuple(v) for k, v in meta["prompt_weights"].items()})
    return out


class FeedbackService:
    def __init__(self, store: Store, predictor: Predictor, metrics: Metrics, retrain_every: int, slug: str) -> None:
        self.store = store
        self.predictor = predictor
        self.metrics = metrics
        self.retrain_every = retrain_every
        self.slug = slug
        self._heads: dict[str, dict[str, train.Head]] = {}
        self._lock = threading.Lock()
        self._process_lock = threading.Lock()
        # Called with each accepted version (the service starts a re-score of the unlabelled tasks when asked to).
        self.on_new_version: Callable[[ModelVersion], None] | None = None

    @property
    def encoder_id(self) -> str:
        return self.predictor.embeddings.encoder.encoder_id

    # -- the HTTP side: record only ------------------------------------------------------------------------------------
    def record(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Validates and queues one webhook event; returns at once."""
        pid = ls_format.webhook_project(payload)
        if action not in ls_format.LEARNED_ACTIONS:
            return {"status": "ignored", "action": action}
        seq = self.store.push_event(json.dumps(payload))
        self.metrics.inc(f"webhook_{action.lower()}")
        logger.info("queued webhook action=%s project=%s seq=%d", action, pid, seq)
        return {"status": "queued", "action": action, "seq": seq}

    # -- heads served per version ------------------------------------------------------------------------------------
    def heads_for(self, version: ModelVersion) -> dict[str, train.Head]:
        """The learned heads of a version (none for r0); immutable once written, so cached by version."""
        if version.revision == 0:
            return {}
        key = heads_key(version.project_id, version.encoder_id, version.revision)
        with self._lock:
            cached = self._heads.get(key)
        if cached is None:
            raw = self.store.get_blob(HEADS_NS, key)
            cached = load_heads(raw) if raw else {}
            with self._lock:
                self._heads[key] = cached
        return cached

    # -- the worker side -----------------------------------------------------------------------------------------------
    def process_pending(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Drains the event queue; retrains projects that asked for it or gathered enough new feedback.

        Stops between events when `should_stop()` says so; what was not done stays queued for the next run.
        """
        done = 0
        with self._process_lock:
            while not should_stop():
                events = self.store.pending_events(_BATCH)
                if not events:
                    break
                due: set[str] = set()
                finished: list[int] = []
                for seq, raw in events:
                    if should_stop():
                        break
                    due |= self._apply(json.loads(raw))
                    finished.append(seq)
                for pid in sorted(due):
                    self.train_project(pid)
                self.store.ack_events(finished)
                done += len(finished)
        return done

    def _apply(self, payload: dict[str, Any]) -> set[str]:
        """Applies one event; returns the projects that should retrain now."""
        action = str(payload.get("action"))
        pid = ls_format.webhook_project(payload)
        if action == "START_TRAINING":
            # START_TRAINING carries no annotations: take them from Label Studio's export, then train.
            self.import_annotations(pid)
            return {pid}
        if action == "ANNOTATIONS_DELETED":
            for aid in ls_format.deleted_annotation_ids(payload):
                self.store.delete_feedback(pid, aid)
            return self._count(pid, 1)
        try:
            event = ls_format.annotation_event(payload.get("annotation"), payload.get("task"), payload.get("project"))
        except CliplabelError as exc:
            logger.warning("project=%s: skipped a malformed %s: %s", pid, action, exc.detail)
            return set()
        if event.cancelled:
            self.store.delete_feedback(pid, event.annotation_id)
            return set()
        try:
            examples = self.examples(event)
        except CliplabelError as exc:
            # A task whose image cannot be read teaches nothing; the event is done with, not retried forever.
            logger.warning("project=%s annotation=%s: no feedback recorded: %s", pid, event.annotation_id, exc.detail)
            return set()
        self.store.put_feedback(pid, event.annotation_id, examples)
        self.metrics.inc("feedback_examples", len(examples))
        return self._count(pid, 1)

    def import_annotations(self, pid: str) -> int:
        """Records every annotation of a project from Label Studio's JSON export; returns how many were recorded.

        Without Label Studio's URL and a token nothing is fetched and training uses the feedback already recorded.
        """
        client = self.predictor.label_studio_client(self.store.get_project(pid))
        if client is None:
            logger.info("project=%s: no Label Studio URL/token, training on recorded feedback only", pid)
            return 0
        try:
            tasks = client.export(int(pid))
        except CliplabelError as exc:
            logger.warning("project=%s: could not export annotations: %s", pid, exc.detail)
            return 0
        recorded = 0
        for task in tasks:
            annotations = task.get("annotations")
            for annotation in annotations if isinstance(annotations, list) else []:
                try:
                    event = ls_format.annotation_event(annotation, task, pid)
                    if event.cancelled:
                        continue
                    self.store.put_feedback(pid, event.annotation_id, self.examples(event))
                    recorded += 1
                except CliplabelError as exc:
                    logger.warning("project=%s: skipped an exported annotation: %s", pid, exc.detail)
        logger.info("project=%s: recorded %d annotations from Label Studio's export", pid, recorded)
        return recorded

    def _count(self, pid: str, n: int) -> set[str]:
        state = json.loads(self.store.get_blob(TRAIN_NS, pid) or '{"since": 0}')
        state["since"] = int(state.get("since", 0)) + n
        self.store.put_blob(TRAIN_NS, pid, json.dumps(state))
        return {pid} if state["since"] >= self.retrain_every else set()

    def examples(self, event: AnnotationEvent) -> list[FeedbackExample]:
        """One example per annotated choice or box, plus one background example per predicted box left unmatched."""
        state = self.store.get_project(event.project_id)
        if state is None:
            raise InvalidRequestError(f"project {event.project_id} has not been set up")
        config = label_config.parse_label_config(state.label_config)
        version = current_version(self.store, event.project_id, self.encoder_id, self.slug)
        heads = self.heads_for(version)
        task = {"id": event.task_id, "data": event.task_data}
        out: list[FeedbackExample] = []
        for control in config.controls:
            mine = [r for r in event.regions if r.from_name == control.from_name]
            blob = self.predictor.fetch_image(task, control.image_key, state)
            image_hash = content_hash(blob)
            if control.kind == "choices":
                if not mine:
                    continue
                (emb,) = self.predictor.embeddings.images([blob])
                if isinstance(emb, CliplabelError):
                    raise emb
                top = self.predictor.top_choice(control, emb, heads.get(control.from_name))
                for label in mine[0].labels:
                    if label in control.values:
                        out.append(FeedbackExample(event.project_id, event.annotation_id, control.from_name,
                                                   image_hash, label, "confirm" if label == top else "correct", emb))
            else:
                out.extend(self._box_examples(event, control, mine, blob, image_hash, heads))
        return out

    def _box_examples(self, event: AnnotationEvent, control: Control, mine: Sequence[Any], blob: bytes,
                      image_hash: str, heads: Mapping[str, train.Head]) -> list[FeedbackExample]:
        item = self.predictor.decode_full(blob)
        predicted = self.predictor.detector.detect([item], control, heads.get(control.from_name))[0]
        drawn = [(regions.from_percent(r.box_pct[0], r.box_pct[1], r.box_pct[2] - r.box_pct[0],
                                       r.box_pct[3] - r.box_pct[1], item.wh), r.labels[0])
                 for r in mine if r.box_pct is not None and r.labels[0] in control.values]
        pred_boxes = np.array([p.bbox_xyxy for p in predicted]) if predicted else np.zeros((0, 4))
        drawn_boxes = np.array([b for b, _ in drawn]) if drawn else np.zeros((0, 4))
        iou = regions.iou_matrix(drawn_boxes, pred_boxes)
        boxes_to_embed = [b for b, _ in drawn]
        kinds: list[tuple[str | None, FeedbackKind]] = []
        for i, (_, label) in enumerate(drawn):
            j = int(iou[i].argmax()) if len(predicted) else -1
            if j < 0 or iou[i, j] < 0.5:
                kinds.append((label, "new"))
            else:
                kinds.append((label, "confirm" if predicted[j].label == label else "correct"))
        for j, pred in enumerate(predicted):
            if len(drawn) == 0 or iou[:, j].max() < 0.5:
                # We proposed it and the annotator did not keep it: a background example.
                boxes_to_embed.append(np.array(pred.bbox_xyxy))
                kinds.append((None, "reject"))
        embs = self.predictor.detector.embed_boxes(item, np.array(boxes_to_embed)) if boxes_to_embed else []
        return [FeedbackExample(event.project_id, event.annotation_id, control.from_name, image_hash, label, kind,
                                emb, tuple(float(v) for v in box))  # type: ignore[arg-type]
                for (label, kind), emb, box in zip(kinds, embs, boxes_to_embed)]

    def train_project(self, pid: str) -> ModelVersion | None:
        """Fits every control's head on the project's feedback; a version is added when any head is accepted."""
        started = time.perf_counter()
        state = self.store.get_project(pid)
        if state is None:
            return None
        config = label_config.parse_label_config(state.label_config)
        current = current_version(self.store, pid, self.encoder_id, self.slug)
        heads = dict(self.heads_for(current))
        feedback = self.store.list_feedback(pid)
        accepted, metrics, notes = {}, {}, []
        for control in config.controls:
            result = self._fit_control(control, [e for e in feedback if e.from_name == control.from_name],
                                       heads.get(control.from_name))
            if result is None:
                continue
            metrics.update({f"{control.from_name}.{k}": v for k, v in result.metrics.items()})
            notes.append(f"{control.from_name}: {result.reason}")
            if result.accepted:
                accepted[control.from_name] = result.head
        self.store.put_blob(TRAIN_NS, pid, json.dumps({"since": 0, "last_note": "; ".join(notes)}))
        if not accepted:
            logger.info("project=%s retrain kept %s: %s", pid, current.name, "; ".join(notes) or "no feedback")
            return None
        heads.update(accepted)
        revision = current.revision + 1
        self.store.put_blob(HEADS_NS, heads_key(pid, self.encoder_id, revision), dump_heads(heads))
        version = ModelVersion(project_id=pid, encoder_id=self.encoder_id, revision=revision,
                               name=version_name(self.slug, revision), created_at=time.time(), metrics=metrics,
                               note="; ".join(notes) + f"; trained on {len(feedback)} examples")
        if not self.store.add_version(version):
            logger.warning("project=%s: another process added revision %d first", pid, revision)
            return None
        self.metrics.inc("retrains_accepted")
        logger.info("project=%s new version=%s examples=%d in %.2fs", pid, version.name, len(feedback),
                    time.perf_counter() - started)
        if self.on_new_version is not None:
            try:
                self.on_new_version(version)
            except CliplabelError as exc:  # the version stands; only the follow-up re-score could not start
                logger.warning("project=%s: no re-score after %s: %s", pid, version.name, exc.detail)
        return version

    def _fit_control(self, control: Control, examples: list[FeedbackExample], current: train.Head | None
                     ) -> train.TrainResult | None:
        index = {v: i for i, v in enumerate(control.values)}
        usable = [e for e in examples if e.label is None or e.label in index]
        if control.kind == "choices":
            usable = [e for e in usable if e.label is not None]
        if not usable:
            return None
        ensembles = [prompts.build_ensemble(c, self.predictor.templates) for c in control.classes]
        text = self.predictor.embeddings.texts([p for e in ensembles for p in e.prompts])
        prompt_embs = [np.stack([text[p] for p in e.prompts]) for e in ensembles]
        encoder = self.predictor.embeddings.encoder
        fixed_bg = self.predictor.detector.background_vectors(control) if control.kind == "rectanglelabels" \
            else np.zeros((0, prompt_embs[0].shape[1]), np.float32)
        if current is None or current.labels != control.values:
            current = train.Head(control.from_name, control.values, self.predictor.class_vectors(control),
                                 np.zeros((0, prompt_embs[0].shape[1]), np.float32), encoder.logit_scale)
        data = train.Examples(np.stack([e.embedding for e in usable]),
                              np.array([-1 if e.label is None else index[e.label] for e in usable]))
        # Box thresholds and the background competition are calibrated at the encoder's temperature: keep it there.
        factors = (1.0,) if control.kind == "rectanglelabels" else train.SCALE_FACTORS
        return train.fit(control.from_name, control.values, prompt_embs, data, current, fixed_bg, encoder.logit_scale,
                         factors)
