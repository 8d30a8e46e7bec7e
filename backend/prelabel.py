"""Bulk pre-labelling of a whole Label Studio project: read its tasks, predict in full batches, write predictions back.

Resumable: tasks that already hold a prediction of the current model version are skipped, so a killed run is
finished by running it again, without duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from backend import label_config, ls_format
from backend.domain import ProjectState
from backend.ls_client import LabelStudioClient
from backend.service import Services
from backend.versions import current_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrelabelStats:
    total: int
    skipped: int
    predicted: int
    failed: int
    seconds: float
    model_version: str


def prelabel_project(services: Services, client: LabelStudioClient, project_id: int, batch: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> PrelabelStats:
    started = time.monotonic()
    project = client.project(project_id)
    schema = str(project.get("label_config", ""))
    config = label_config.parse_label_config(schema)
    pid = str(project_id)
    # Images are fetched from Label Studio with the configured URL and key (the settings win over /setup's values).
    state = services.store.get_project(pid) or ProjectState(project_id=pid, label_config=schema)
    version = current_version(services.store, pid, services.encoder.encoder_id, services.slug)
    heads = services.feedback.heads_for(version)
    done = client.predicted_task_ids(project_id, version.name)
    todo = [t for t in client.tasks(project_id) if t.get("id") not in done]
    total = len(todo) + len(done)
    predicted = failed = 0
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        for task, pred in zip(chunk, services.predictor.predict(chunk, config, state, version.name, {}, heads)):
            if pred.error is not None or (not pred.choices and not pred.regions):
                failed += 1
                continue
            client.create_prediction(int(task["id"]), ls_format.prediction_json(pred))
            predicted += 1
        if progress is not None:
            progress(len(done) + min(i + batch, len(todo)), total)
    stats = PrelabelStats(total=total, skipped=len(done), predicted=predicted, failed=failed,
                          seconds=round(time.monotonic() - started, 2), model_version=version.name)
    logger.info("prelabel project=%s %s", pid, stats)
    return stats
