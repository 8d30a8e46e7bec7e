"""Auto-accept: what the model is certain of becomes Label Studio annotations, at a measured precision.

1. Decide (`decide`, all a dry run does): per class, the lowest score threshold whose precision on the project's
   human annotations, scored out of sample, has a Clopper–Pearson lower bound ≥ the target
   (`cliplabel.vision.accept`); the tasks without any annotation whose cached embedding the served head scores at or
   above their predicted class's threshold are accepted. Coverage and expected errors come with it.
2. Apply (a job, recorded like the bulk jobs in its own journal, with the same status and progress): chunk by chunk,
   the tasks that still have no annotation get a prediction stored under the version `<model version>.accepted`,
   which Label Studio's own "Create Annotations From Predictions" action turns into annotations linked to it
   (`parent_prediction`). That link is the mark: the audit and the next accept tell them from people's annotations,
   and undo finds them. A task that gained an annotation meanwhile is
   never touched; one that gained it while the chunk ran loses the auto-accepted annotation again.
3. Undo: deletes the auto-accepted annotations whose labels nobody changed, with their predictions (of one job, or of
   the whole project).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cliplabel.core.domain import ChoicePrediction, Control, ProjectTask, TaskPrediction
from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.accepted import accept_predictions, accepted_version, is_auto_accepted
from cliplabel.services.audit import LabelledSet, ProjectLabels
from cliplabel.services.bulk.journal import JobJournal
from cliplabel.services.bulk.model import MAX_ERRORS, ChunkResult, JobSpec, JobStatus, Plan
from cliplabel.services.bulk.planner import cut
from cliplabel.services.bulk.service import worker_name
from cliplabel.services.bulk.status import job_status
from cliplabel.store import Store
from cliplabel.vision import accept, classify

logger = logging.getLogger(__name__)
JOURNAL_PREFIX = "accept"
Progress = Callable[[JobStatus], None]


@dataclass(frozen=True)
class Decision:
    task_id: int
    label: str
    score: float


@dataclass(frozen=True)
class AcceptReport:
    """What accepting does (a dry run) or did (with `job`)."""

    project_id: str
    model_version: str
    target: float
    confidence: float
    heldout: int  # human labels scored out of sample
    thresholds: tuple[accept.ClassThreshold, ...]
    candidates: int  # tasks without any annotation whose embedding is cached
    accepted: int
    coverage: float  # accepted / candidates
    per_class: dict[str, int]
    expected_errors: float
    errors_upper: float  # at the certified lower bounds
    not_encoded: int  # tasks without a cached embedding (not candidates; `cliplabel prelabel` encodes them)
    job: JobStatus | None = None


def decide(labelled: LabelledSet, target: float, confidence: float) -> tuple[AcceptReport, list[Decision]]:
    """The thresholds and the tasks they accept. Pure, given the labelled set.

    Candidates are the tasks with no annotation at all: not a human's (a skipped task included), not an earlier
    auto-accepted one.
    """
    values = labelled.control.values
    oos = labelled.oos
    thresholds = accept.choose_thresholds(values, oos.argmax(axis=1), oos.max(axis=1), labelled.labels, target,
                                          confidence)
    found = labelled.found
    touched = labelled.annotated_tasks | labelled.auto_accepted_tasks
    rows = np.array([r for r, t in enumerate(found.task_ids) if found.unlabelled[r] and int(t) not in touched],
                    np.int64)
    probs = (classify.head_probabilities(found.emb[rows], labelled.served) if len(rows)
             else np.zeros((0, len(values)), np.float32))
    pred, score = probs.argmax(axis=1), probs.max(axis=1)
    mask = accept.accept_mask(thresholds, pred, score)
    out = accept.outcome(thresholds, pred, score)
    decisions = [Decision(int(found.task_ids[r]), values[int(c)], float(s))
                 for r, c, s in zip(rows[mask], pred[mask], score[mask])]
    report = AcceptReport(project_id=labelled.project_id, model_version=labelled.version.name, target=target,
                          confidence=confidence, heldout=len(labelled.labels), thresholds=thresholds,
                          candidates=out.candidates, accepted=out.accepted, coverage=round(out.coverage, 6),
                          per_class=out.per_class, expected_errors=round(out.expected_errors, 3),
                          errors_upper=round(out.errors_upper, 3), not_encoded=found.missing)
    return report, decisions


def untouched(tasks: list[ProjectTask]) -> set[int]:
    """The tasks without any annotation (skipped ones and auto-accepted ones count as annotations)."""
    return {t.task_id for t in tasks if t.annotations == 0}


class AutoAccept:
    """Auto-accept jobs: decide, dry-run, apply chunk by chunk with progress, undo."""

    def __init__(self, labels: ProjectLabels, clients: Callable[[str], LabelStudioClient], store: Store) -> None:
        self.labels = labels
        self.clients = clients
        self.journal = JobJournal(store, prefix=JOURNAL_PREFIX)
        self.worker = worker_name()

    def dry_run(self, project: object, target: float = accept.DEFAULT_TARGET,
                confidence: float = accept.DEFAULT_CONFIDENCE) -> AcceptReport:
        return decide(self.labels.load(project), target, confidence)[0]

    def start(self, project: object, target: float = accept.DEFAULT_TARGET,
              confidence: float = accept.DEFAULT_CONFIDENCE, chunk_size: int = 64) -> AcceptReport:
        """Decides and records a job whose chunks hold the accepted tasks; `run` (or a background thread) applies it."""
        report, decisions = decide(self.labels.load(project), target, confidence)
        spec = JobSpec(job_id=uuid.uuid4().hex[:16], project_id=report.project_id, kind="accept",
                       chunk_size=chunk_size, created_at=time.time())
        self.journal.create(spec)
        chunks = cut([{"id": d.task_id, "label": d.label, "score": d.score} for d in decisions], chunk_size)
        plan = Plan(model_version=report.model_version, label_config="", total=len(decisions), skipped=0,
                    chunks=len(chunks), planned_at=time.time())
        self.journal.record_plan(spec.job_id, plan, chunks)
        logger.info("accept job=%s project=%s: %d of %d candidates above the thresholds, %d chunks", spec.job_id,
                    report.project_id, report.accepted, report.candidates, len(chunks))
        return replace(report, job=self.status(spec.job_id))

    def status(self, job_id: str) -> JobStatus:
        """Raises NotFoundError for an unknown job."""
        return job_status(self.journal.record(job_id))

    def run(self, job_id: str, progress: Progress | None = None) -> JobStatus:
        """Applies every chunk not yet done, in order (a second run resumes where the first stopped)."""
        record = self.journal.record(job_id)
        if record.plan is None:
            raise InvalidRequestError(f"accept job {job_id} has no plan")
        client = self.clients(record.spec.project_id)
        project = int(record.spec.project_id)
        control = self.labels.control(project)
        for i in range(record.plan.chunks):
            if i in record.chunks or self.journal.is_cancelled(job_id):
                continue
            self._run_chunk(client, job_id, i, project, accepted_version(record.plan.model_version), control)
            if progress is not None:
                progress(self.status(job_id))
        return self.status(job_id)

    def _run_chunk(self, client: LabelStudioClient, job_id: str, index: int, project: int, version: str,
                   control: Control) -> None:
        started = time.monotonic()
        chunk = [Decision(int(t["id"]), str(t["label"]), float(t["score"]))
                 for t in self.journal.chunk_tasks(job_id, index)]
        free = untouched(client.listed_tasks(project, [d.task_id for d in chunk]))
        go = [d for d in chunk if d.task_id in free]
        errors = [f"task {d.task_id}: has an annotation now: left alone" for d in chunk if d.task_id not in free]
        client.import_predictions(project, [(d.task_id, TaskPrediction(
            task_id=d.task_id, model_version=version, choices=(ChoicePrediction(
                from_name=control.from_name, to_name=control.to_name, choices=(d.label,),
                score=min(max(d.score, 0.0), 1.0)),))) for d in go])
        if go:
            client.predictions_to_annotations(project, [d.task_id for d in go], version)
        undone = self._settle(client, project, [d.task_id for d in go], control.from_name)
        errors += [f"task {t}: annotated by a person meanwhile: auto-accepted annotation removed" for t in undone]
        result = ChunkResult(predicted=len(go) - len(undone), failed=len(chunk) - len(go) + len(undone),
                             errors=tuple(errors[:MAX_ERRORS]), worker=self.worker,
                             seconds=round(time.monotonic() - started, 3), finished_at=time.time())
        self.journal.record_chunk(job_id, index, result)

    def _settle(self, client: LabelStudioClient, project: int, task_ids: list[int], from_name: str) -> list[int]:
        """After the action: a task holding more than one annotation is checked; where a person annotated it
        meanwhile, ours goes (and extra copies of ours too). Returns the tasks given back to people."""
        given_back = []
        for task in client.listed_tasks(project, task_ids):
            if task.annotations <= 1:
                continue
            accepted = accept_predictions(client.task_predictions(task.task_id), from_name)
            annotations = client.task_annotations(task.task_id, from_name)
            ours = [aid for aid, labels, parent in annotations if is_auto_accepted(labels, parent, accepted)]
            human = len(annotations) - len(ours)
            for annotation_id in ours if human else ours[1:]:
                client.delete_annotation(annotation_id)
            if human and ours:
                given_back.append(task.task_id)
        return given_back

    def undo(self, project: object, job_id: str | None = None) -> int:
        """Deletes the auto-accepted annotations whose labels nobody changed (of one job's tasks, or of the whole
        project) and the predictions they were made from; returns how many annotations. One a person relabelled is
        theirs now and stays."""
        pid = ls_format.project_id(project)
        client = self.clients(pid)
        only: set[int] | None = None
        if job_id is not None:
            record = self.journal.record(job_id)
            if record.spec.project_id != pid:
                raise InvalidRequestError(f"accept job {job_id} belongs to project {record.spec.project_id}")
            chunks = record.plan.chunks if record.plan else 0
            only = {int(t["id"]) for i in range(chunks) for t in self.journal.chunk_tasks(job_id, i)}
        from_name = self.labels.control(pid).from_name
        accepted = accept_predictions(client.predictions(int(pid)), from_name)
        deleted = 0
        for tid, aid, labels, parent in ls_format.exported_choices(client.export(int(pid)), from_name):
            if parent is not None and is_auto_accepted(labels, parent, accepted) and (only is None or tid in only):
                client.delete_annotation(aid)
                client.delete_prediction(parent)
                deleted += 1
        logger.info("accept undo project=%s job=%s: %d annotations deleted", pid, job_id, deleted)
        return deleted
