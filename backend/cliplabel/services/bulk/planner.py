"""Planning a bulk job: list the project's tasks once, skip those already predicted, cut the rest into chunks.

Label Studio's 100 s request limit never applies: tasks are listed a page per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from cliplabel.core.domain import ModelVersion, ProjectTask
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.bulk.journal import JobJournal
from cliplabel.services.bulk.model import Plan, RecordedKind

logger = logging.getLogger(__name__)
T = TypeVar("T")


def select_tasks(kind: RecordedKind, tasks: Iterable[ProjectTask], predicted: set[int]) -> tuple[int, list[ProjectTask]]:
    """(tasks in the job's scope, those of them still to predict), in listing order.

    A re-score leaves annotated tasks out of scope (they need no pre-label); tasks holding a prediction of the
    job's version (`predicted`) are in scope but skipped.
    """
    in_scope = [t for t in tasks if kind != "rescore" or not t.labelled]
    return len(in_scope), [t for t in in_scope if t.task_id not in predicted]


def cut(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive chunks of at most `size` items (none for no items)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class Planner:
    """Makes a job's plan once; a second call (or a second process) gets the first plan."""

    def __init__(self, journal: JobJournal, clients: Callable[[str], LabelStudioClient],
                 current_version: Callable[[str], ModelVersion]) -> None:
        self.journal = journal
        self.clients = clients
        self.current_version = current_version

    def plan(self, job_id: str) -> Plan:
        spec = self.journal.spec(job_id)
        existing = self.journal.plan(job_id)
        if existing is not None:
            return existing
        client = self.clients(spec.project_id)
        schema = client.label_config(int(spec.project_id))
        label_config.parse_label_config(schema)  # a broken config fails the plan, not every chunk
        version = self.current_version(spec.project_id)
        predicted = client.predicted_task_ids(int(spec.project_id), version.name)
        total, todo = select_tasks(spec.kind, client.tasks(int(spec.project_id)), predicted)
        chunks: list[list[dict[str, Any]]] = cut([ls_format.prediction_task(t) for t in todo], spec.chunk_size)
        plan = Plan(model_version=version.name, label_config=schema, total=total, skipped=total - len(todo),
                    chunks=len(chunks), planned_at=time.time())
        earlier = self.journal.record_plan(job_id, plan, chunks)
        if earlier is not None:
            return earlier  # another process won
        logger.info("bulk job=%s planned: %d tasks to predict in %d chunks, %d skipped", job_id, len(todo),
                    len(chunks), plan.skipped)
        return plan
