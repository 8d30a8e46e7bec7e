"""Annotations → feedback examples: the embedding of each annotated image or box, labelled, and how it relates to
what the served model predicted (confirm, correct, new, or a proposed box the annotator rejected)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cliplabel.core.domain import AnnotatedRegion, AnnotationEvent, Control, FeedbackExample, FeedbackKind, Head, ProjectState
from cliplabel.core.errors import CliplabelError, InvalidRequestError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import BoxDetector
from cliplabel.services.feedback.confirm import AnnotationConfirmer
from cliplabel.services.versions import current_version
from cliplabel.store import Store
from cliplabel.store.heads import HeadStore
from cliplabel.vision import regions

# A drawn box this close to a predicted one (IoU) is the same object: the prediction was confirmed or corrected.
MATCH_IOU = 0.5

FetchImage = Callable[[object, str, ProjectState | None], bytes]


class ExampleMaker:
    """Turns one annotation into the feedback examples of every control of its project.

    Args:
        fetch_image: a task's image bytes under the prediction path's source policy (raises CliplabelError).
        confirmer: replaces a webhook's annotation by what Label Studio's API stores (None: trust the body).
    """

    def __init__(self, store: Store, heads: HeadStore, embeddings: EmbeddingService, class_vectors: ClassVectors,
                 detector: BoxDetector, fetch_image: FetchImage, encoder_id: str, slug: str,
                 confirmer: AnnotationConfirmer | None = None) -> None:
        self.confirmer = confirmer
        self.store = store
        self.heads = heads
        self.embeddings = embeddings
        self.class_vectors = class_vectors
        self.detector = detector
        self.fetch_image = fetch_image
        self.encoder_id = encoder_id
        self.slug = slug

    def examples(self, event: AnnotationEvent) -> list[FeedbackExample]:
        """One example per annotated choice or box, plus one background example per predicted box left unmatched.

        The annotation is first confirmed against Label Studio's API (see `confirm`): its stored result and its
        task's stored image are what teach, not the webhook's body; a cancelled (skipped) one teaches nothing, nor
        does one auto-accept made whose labels nobody changed (the model's own guess, not a person's answer).

        Raises:
            InvalidRequestError: the project has not been set up.
            AnnotationNotConfirmedError: Label Studio does not confirm the annotation (permanent).
            TransientError: Label Studio could not be asked now (retry later).
            CliplabelError: the task's image cannot be fetched or read.
        """
        state = self.store.get_project(event.project_id)
        if state is None:
            raise InvalidRequestError(f"project {event.project_id} has not been set up")
        if self.confirmer is not None:
            event = self.confirmer.confirm(event, state)
        if event.cancelled or event.auto_accepted:
            return []
        config = label_config.parse_label_config(state.label_config)
        # Compared with what the version served now predicts: that is what the annotator saw or would have seen.
        heads = self.heads.heads_for(current_version(self.store, event.project_id, self.encoder_id, self.slug))
        task = ls_format.event_task(event)
        out: list[FeedbackExample] = []
        for control in config.controls:
            mine = [r for r in event.regions if r.from_name == control.from_name]
            blob = self.fetch_image(task, control.image_key, state)
            image_hash = content_hash(blob)
            if control.kind == "choices":
                if not mine:
                    continue
                (emb,) = self.embeddings.images([blob])
                if isinstance(emb, CliplabelError):
                    raise emb
                top = self.class_vectors.top_choice(control, emb, heads.get(control.from_name))
                for label in mine[0].labels:
                    if label in control.values:
                        out.append(FeedbackExample(event.project_id, event.annotation_id, control.from_name,
                                                   image_hash, label, "confirm" if label == top else "correct", emb))
            else:
                out.extend(self._box_examples(event, control, mine, blob, image_hash, heads))
        return out

    def deleted(self, project_id: str, annotation_ids: list[int]) -> list[int]:
        """Of the annotations a deletion event names, those whose feedback may go: the ones Label Studio no longer
        has (all of them without a confirmer). A forged deletion of a live annotation removes nothing.

        Raises:
            TransientError: Label Studio could not be asked now (retry later).
        """
        if self.confirmer is None:
            return list(annotation_ids)
        return self.confirmer.deleted(project_id, annotation_ids, self.store.get_project(project_id))

    def _box_examples(self, event: AnnotationEvent, control: Control, mine: Sequence[AnnotatedRegion], blob: bytes,
                      image_hash: str, heads: Mapping[str, Head]) -> list[FeedbackExample]:
        item = self.detector.load_image(blob)
        predicted = self.detector.detect([item], control, heads.get(control.from_name))[0]
        # Every proposal's crops in the cache: a retrain judges box heads by running the detector on this scene.
        self.detector.scene_embeddings(item)
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
            if j < 0 or iou[i, j] < MATCH_IOU:
                kinds.append((label, "new"))
            else:
                kinds.append((label, "confirm" if predicted[j].label == label else "correct"))
        for j, pred in enumerate(predicted):
            if len(drawn) == 0 or iou[:, j].max() < MATCH_IOU:
                # We proposed it and the annotator did not keep it: a background example.
                boxes_to_embed.append(np.array(pred.bbox_xyxy))
                kinds.append((None, "reject"))
        embs = self.detector.embed_boxes(item, np.array(boxes_to_embed)) if boxes_to_embed else []
        return [FeedbackExample(event.project_id, event.annotation_id, control.from_name, image_hash, label, kind,
                                emb, tuple(float(v) for v in box))  # type: ignore[arg-type]
                for (label, kind), emb, box in zip(kinds, embs, boxes_to_embed)]
