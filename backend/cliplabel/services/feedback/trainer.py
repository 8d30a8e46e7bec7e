"""Retraining: a project's feedback examples → a new head per control → a new model version when any is accepted."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from cliplabel.core.domain import Control, Encoder, FeedbackExample, Head, ModelVersion
from cliplabel.core.errors import CliplabelError
from cliplabel.core.metrics import Metrics
from cliplabel.labelstudio import label_config
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import BoxDetector
from cliplabel.services.feedback import box_gate
from cliplabel.services.versions import current_version, version_name
from cliplabel.store import Store
from cliplabel.store.heads import HeadStore
from cliplabel.vision import train

logger = logging.getLogger(__name__)
TRAIN_NS = "train-state"
SINCE = "since"  # the project's event counter of annotations recorded since its last retrain

OnNewVersion = Callable[[ModelVersion], None]


class Trainer:
    """Counts new feedback per project and retrains it; an accepted retrain adds a version and announces it.

    Args:
        class_vectors: the zero-shot prompt ensembles and class vectors prediction serves: the starting point.
        retrain_every: how many new annotations make a project due for a retrain.
        on_new_version: called with each accepted version (e.g. to re-score the unlabelled tasks); a CliplabelError
            it raises is logged, the version stands.
    """

    def __init__(self, store: Store, heads: HeadStore, embeddings: EmbeddingService, class_vectors: ClassVectors,
                 detector: BoxDetector, encoder: Encoder, slug: str, metrics: Metrics, retrain_every: int,
                 on_new_version: OnNewVersion | None = None) -> None:
        self.store = store
        self.heads = heads
        self.embeddings = embeddings
        self.class_vectors = class_vectors
        self.detector = detector
        self.encoder = encoder
        self.slug = slug
        self.metrics = metrics
        self.retrain_every = retrain_every
        self._on_new_version = on_new_version

    def count(self, pid: str, n: int) -> bool:
        """Adds `n` annotations to the project's count since its last retrain (atomically: several workers may count
        at once); True when that makes it due."""
        return self.store.add_counts(pid, {SINCE: n})[SINCE] >= self.retrain_every

    def due(self, pid: str) -> bool:
        """True when the project gathered `retrain_every` annotations since its last retrain."""
        return self.store.event_counts(pid).get(SINCE, 0) >= self.retrain_every

    def train_project(self, pid: str) -> ModelVersion | None:
        """Fits every control's head on the project's feedback; a version is added when any head is accepted."""
        started = time.perf_counter()
        state = self.store.get_project(pid)
        if state is None:
            return None
        # What was counted until now; what workers count while this trains stays for the next retrain.
        since = self.store.event_counts(pid).get(SINCE, 0)
        encoder_id = self.encoder.encoder_id
        config = label_config.parse_label_config(state.label_config)
        current = current_version(self.store, pid, encoder_id, self.slug)
        heads = dict(self.heads.heads_for(current))
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
        self.store.add_counts(pid, {SINCE: -since})
        self.store.put_blob(TRAIN_NS, pid, json.dumps({"last_note": "; ".join(notes)}))
        if not accepted:
            logger.info("project=%s retrain kept %s: %s", pid, current.name, "; ".join(notes) or "no feedback")
            return None
        heads.update(accepted)
        revision = current.revision + 1
        self.heads.put(pid, encoder_id, revision, heads)
        version = ModelVersion(project_id=pid, encoder_id=encoder_id, revision=revision,
                               name=version_name(self.slug, revision), created_at=time.time(), metrics=metrics,
                               note="; ".join(notes) + f"; trained on {len(feedback)} examples")
        if not self.store.add_version(version):
            logger.warning("project=%s: another process added revision %d first", pid, revision)
            return None
        self.metrics.inc("retrains_accepted")
        logger.info("project=%s new version=%s examples=%d in %.2fs", pid, version.name, len(feedback),
                    time.perf_counter() - started)
        if self._on_new_version is not None:
            try:
                self._on_new_version(version)
            except CliplabelError as exc:  # the version stands; only the follow-up re-score could not start
                logger.warning("project=%s: no re-score after %s: %s", pid, version.name, exc.detail)
        return version

    def _fit_control(self, control: Control, examples: list[FeedbackExample], current: Head | None
                     ) -> train.TrainResult | None:
        index = {v: i for i, v in enumerate(control.values)}
        usable = [e for e in examples if e.label is None or e.label in index]
        if control.kind == "choices":
            usable = [e for e in usable if e.label is not None]
        if not usable:
            return None
        ensembles = self.class_vectors.ensembles(control)
        text = self.embeddings.texts([p for e in ensembles for p in e.prompts])
        prompt_embs = [np.stack([text[p] for p in e.prompts]) for e in ensembles]
        logit_scale = self.encoder.logit_scale
        fixed_bg = self.detector.background_vectors(control) if control.kind == "rectanglelabels" \
            else np.zeros((0, prompt_embs[0].shape[1]), np.float32)
        zero_shot = Head(control.from_name, control.values, self.class_vectors.zero_shot(control),
                         np.zeros((0, prompt_embs[0].shape[1]), np.float32), logit_scale)
        if current is None or current.labels != control.values:
            current = zero_shot

        def fit(subset: Sequence[FeedbackExample], judge: bool) -> train.TrainResult:
            data = train.Examples(np.stack([e.embedding for e in subset]),
                                  np.array([-1 if e.label is None else index[e.label] for e in subset]))
            # Box thresholds and the background competition are calibrated at the encoder's temperature: keep it.
            factors = (1.0,) if control.kind == "rectanglelabels" else train.SCALE_FACTORS
            return train.fit(control.from_name, control.values, prompt_embs, data, current, fixed_bg, logit_scale,
                             factors, compare_current=judge)

        if control.kind != "rectanglelabels":
            return fit(usable, True)
        # A box head is judged on whole annotated scenes, not on crops (see box_gate).
        return box_gate.judge(self.detector, control, usable, lambda subset: fit(subset, False), fit(usable, False),
                              zero_shot, current)
