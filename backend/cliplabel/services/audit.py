"""A project's human labels with out-of-sample probabilities, and the label audit built on them.

`ProjectLabels.load` gathers, for a project's single-choice `<Choices>` control, every task with a kept human
annotation (auto-accepted ones are not human) whose image embedding is cached, and scores each with a head trained
by the product's own `train.fit` on the other folds (`cliplabel.vision.crossval`). Auto-accept certifies its
thresholds on these probabilities (`services.accept`); the audit feeds them to confident learning
(`cliplabel.vision.mistakes`) and writes what it finds to Label Studio: each suspect annotation's `mislabeling` on
its task's prediction of the current version, and a Data Manager view of the suspect tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cliplabel.core.domain import Control, Head, ModelVersion
from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.services.accepted import accept_predictions, is_auto_accepted
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.search import ProjectEmbeddings, ProjectIndex
from cliplabel.services.versions import current_version
from cliplabel.store import Store
from cliplabel.vision import crossval, mistakes, train

logger = logging.getLogger(__name__)
SUSPECT_VIEW_TITLE = "Audit: suspect labels"
MAX_VIEW_TASKS = 200  # the view is an `or` of id filters: the most suspect this many


@dataclass(frozen=True)
class LabelledSet:
    """A project's human labels of one control, scored out of sample.

    `task_ids` (n,) the annotated tasks with a cached embedding; `labels` (n,) their annotated class (the latest
    human annotation's); `annotation_ids` (n,); `oos` (n, K) out-of-sample probabilities. `found` holds every cached
    embedding of the project (what auto-accept scores); `served` is the head prediction serves now.
    """

    project_id: str
    control: Control
    version: ModelVersion
    served: Head
    found: ProjectEmbeddings
    task_ids: np.ndarray
    labels: np.ndarray
    annotation_ids: np.ndarray
    oos: np.ndarray
    annotated_tasks: set[int]  # every task with a kept human annotation (with or without a cached embedding)
    auto_accepted_tasks: set[int]  # tasks holding an auto-accepted annotation


def choice_control(config_xml: str) -> Control:
    """The label config's single-choice `<Choices>` control (the first one).

    Raises:
        InvalidRequestError: there is none (auto-accept and the audit work on whole-image single choices).
    """
    config = label_config.parse_label_config(config_xml)
    found = next((c for c in config.of_kind("choices") if not c.multiple), None)
    if found is None:
        raise InvalidRequestError("auto-accept and the label audit need a single-choice <Choices> control")
    return found


class ProjectLabels:
    """Loads a project's `LabelledSet` (Label Studio's export, the cached embeddings, k-fold heads)."""

    def __init__(self, store: Store, clients: Callable[[str], LabelStudioClient], index: ProjectIndex,
                 embeddings: EmbeddingService, class_vectors: ClassVectors, encoder_id: str, slug: str,
                 heads_for: Callable[[ModelVersion], Mapping[str, Head]], folds: int = crossval.DEFAULT_FOLDS) -> None:
        self.store, self.clients, self.index = store, clients, index
        self.embeddings, self.class_vectors = embeddings, class_vectors
        self.encoder_id, self.slug, self.heads_for, self.folds = encoder_id, slug, heads_for, folds

    def control(self, project: object) -> Control:
        """The project's single-choice control (raises InvalidRequestError when it has none)."""
        pid = ls_format.project_id(project)
        state = self.store.get_project(pid)
        return choice_control(state.label_config if state else self.clients(pid).label_config(int(pid)))

    def load(self, project: object) -> LabelledSet:
        pid = ls_format.project_id(project)
        client = self.clients(pid)
        control = self.control(pid)
        version = current_version(self.store, pid, self.encoder_id, self.slug)
        served = self.class_vectors.served(control, self.heads_for(version).get(control.from_name))
        found = self.index.load(pid)
        index = {v: i for i, v in enumerate(control.values)}
        latest: dict[int, tuple[int, int]] = {}  # task → (annotation id, class)
        annotated, auto = set(), set()
        accepted = accept_predictions(client.predictions(int(pid)), control.from_name)
        for tid, aid, labels, parent in ls_format.exported_choices(client.export(int(pid)), control.from_name):
            if is_auto_accepted(labels, parent, accepted):
                auto.add(tid)
                continue
            annotated.add(tid)
            if len(labels) == 1 and labels[0] in index and aid > latest.get(tid, (-1, 0))[0]:
                latest[tid] = (aid, index[labels[0]])
        rows = {int(t): r for r, t in enumerate(found.task_ids)}
        tasks = np.array(sorted(t for t in latest if t in rows), np.int64)
        y = np.array([latest[int(t)][1] for t in tasks], np.int64)
        x = found.emb[[rows[int(t)] for t in tasks]] if len(tasks) else np.zeros((0, found.emb.shape[1]), np.float32)
        oos = crossval.cross_validated_probs(train.Examples(x, y), len(control.values), self._fitter(control),
                                             self.folds)
        logger.info("project=%s: %d human labels scored out of sample (%d annotated tasks not encoded yet)", pid,
                    len(tasks), len(latest) - len(tasks))
        return LabelledSet(project_id=pid, control=control, version=version, served=served, found=found,
                           task_ids=tasks, labels=y, annotation_ids=np.array([latest[int(t)][0] for t in tasks]),
                           oos=oos, annotated_tasks=annotated, auto_accepted_tasks=auto)

    def _fitter(self, control: Control) -> Callable[[train.Examples], Head]:
        """What a retrain would serve after learning these examples (the trainer's own call, from zero-shot)."""
        ensembles = self.class_vectors.ensembles(control)
        text = self.embeddings.texts([p for e in ensembles for p in e.prompts])
        prompt_embs = [np.stack([text[p] for p in e.prompts]) for e in ensembles]
        zero_shot = self.class_vectors.served(control, None)
        no_background = np.zeros((0, prompt_embs[0].shape[1]), np.float32)

        def fit(examples: train.Examples) -> Head:
            return train.fit(control.from_name, control.values, prompt_embs, examples, zero_shot, no_background,
                             zero_shot.logit_scale).head

        return fit


@dataclass(frozen=True)
class Suspect:
    task_id: int
    annotation_id: int
    label: str  # what the annotator chose
    suggested: str  # the class the held-out head finds most probable
    mislabeling: float  # 1 − the held-out probability of the annotated class


@dataclass(frozen=True)
class AuditReport:
    project_id: str
    model_version: str
    labelled: int  # human labels audited (annotated tasks with a cached embedding)
    not_audited: int  # annotated tasks left out: no cached embedding, or not one known label
    suspects: tuple[Suspect, ...]  # flagged by confident learning, most suspect first
    predictions_marked: int  # predictions whose `mislabeling` was set
    view_id: int | None
    view_title: str | None


def find_suspects(labelled: LabelledSet) -> tuple[tuple[Suspect, ...], np.ndarray]:
    """(the flagged annotations, most suspect first; the (n,) mislabeling score of every audited label)."""
    values = labelled.control.values
    found = mistakes.audit_labels(labelled.labels, labelled.oos)
    suggested = labelled.oos.argmax(axis=1) if len(labelled.labels) else np.zeros(0, np.int64)
    suspects = tuple(Suspect(task_id=int(labelled.task_ids[i]), annotation_id=int(labelled.annotation_ids[i]),
                             label=values[int(labelled.labels[i])], suggested=values[int(suggested[i])],
                             mislabeling=round(float(found.mislabeling[i]), 6)) for i in found.suspects())
    return suspects, found.mislabeling


class AuditService:
    """`cliplabel audit` and `GET /audit`."""

    def __init__(self, labels: ProjectLabels, clients: Callable[[str], LabelStudioClient]) -> None:
        self.labels = labels
        self.clients = clients

    def audit(self, project: object, write: bool = True, title: str = SUSPECT_VIEW_TITLE) -> AuditReport:
        """Finds the likely wrong human labels; with `write`, stores every audited label's `mislabeling` on its
        task's prediction of the current version and creates (or refreshes) the view of the suspect tasks.

        Raises:
            InvalidRequestError: no Label Studio URL and key, or no single-choice control; LabelStudioError.
        """
        labelled = self.labels.load(project)
        suspects, scores = find_suspects(labelled)
        marked, view = 0, None
        if write:
            client = self.clients(labelled.project_id)
            pid = int(labelled.project_id)
            score_of = {int(t): float(s) for t, s in zip(labelled.task_ids, scores)}
            for pred in client.predictions(pid):
                if (pred.model_version == labelled.version.name and pred.prediction_id is not None
                        and pred.task_id in score_of):
                    client.set_mislabeling(pred.prediction_id, score_of[pred.task_id])
                    marked += 1
            if suspects:
                existing = next((vid for vid, t in client.views(pid) if t == title), None)
                view = client.put_view(pid, ls_format.task_ids_view(title, [s.task_id for s in
                                                                           suspects[:MAX_VIEW_TASKS]]), existing)
        logger.info("audit project=%s: %d labels, %d suspects, %d predictions marked, view=%s",
                    labelled.project_id, len(labelled.labels), len(suspects), marked, view)
        return AuditReport(project_id=labelled.project_id, model_version=labelled.version.name,
                           labelled=len(labelled.labels), not_audited=len(labelled.annotated_tasks)
                           - len(labelled.task_ids), suspects=suspects, predictions_marked=marked, view_id=view,
                           view_title=title if view is not None else None)
