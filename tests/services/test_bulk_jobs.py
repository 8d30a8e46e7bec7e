"""Bulk jobs end to end in one process, on the real embedded store, with Label Studio and the model faked in memory:
planning, chunks, each task stored once, re-score scope, cancellation, and the one-active-job rule."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cliplabel.core.domain import ChoicePrediction, ProjectTask, TaskPrediction
from cliplabel.core.errors import InvalidRequestError, LabelConfigError, NotFoundError
from cliplabel.labelstudio import format as ls_format
from cliplabel.services.bulk import BulkJobs
from cliplabel.store import Store, open_store

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          '<Choice value="cat"/><Choice value="dog"/></Choices></View>')


class FakeLabelStudio:
    """A project's tasks and the predictions stored for them, behind the client's methods."""

    def __init__(self, tasks: Sequence[ProjectTask], label_config: str = CONFIG) -> None:
        self.tasks_by_id = {t.task_id: t for t in tasks}
        self.config = label_config
        self.stored: dict[int, list[str]] = {}  # task → model versions of its predictions
        self.imports = 0

    def label_config(self, project_id: int) -> str:
        return self.config

    def tasks(self, project_id: int) -> Iterator[ProjectTask]:
        yield from self.tasks_by_id.values()

    def predicted_task_ids(self, project_id: int, model_version: str) -> set[int]:
        return {t for t, versions in self.stored.items() if model_version in versions}

    def prediction_versions(self, project_id: int, task_ids: list[int]) -> dict[int, set[str]]:
        return {t: set(self.stored.get(t, [])) for t in task_ids}

    def import_predictions(self, project_id: int, predictions: Sequence[tuple[int, TaskPrediction]]) -> None:
        self.imports += 1
        for task_id, pred in predictions:
            self.stored.setdefault(task_id, []).append(pred.model_version)


class FakePredictor:
    """Predicts "cat" for every task, except an error for tasks whose image is "broken"."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], bool]] = []

    def predict(self, tasks: Sequence[Any], config: Any, project: Any, model_version: str, params: Any,
                heads: Any, from_cache: bool = False) -> list[TaskPrediction]:
        self.calls.append(([ls_format.task_id(t) or -1 for t in tasks], from_cache))
        return [TaskPrediction(ls_format.task_id(t), model_version, error="image broken")
                if t["data"]["image"] == "broken" else
                TaskPrediction(ls_format.task_id(t), model_version,
                               choices=(ChoicePrediction("label", "image", ("cat",), 0.9),))
                for t in tasks]


def task(i: int, annotations: int = 0, cancelled: int = 0, image: str = "ok") -> ProjectTask:
    return ProjectTask(task_id=i, data={"image": image}, annotations=annotations, cancelled_annotations=cancelled)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(None, tmp_path)
    yield opened
    opened.close()


def bulk_jobs(store: Store, ls: FakeLabelStudio | None, predictor: FakePredictor | None = None) -> BulkJobs:
    def clients(project_id: str) -> Any:
        if ls is None:
            raise InvalidRequestError("no Label Studio")
        return ls

    return BulkJobs(store, predictor or FakePredictor(), clients, "enc", "clip",  # type: ignore[arg-type]
                    heads_for=lambda version: {})


def test_a_job_predicts_every_task_once_in_chunks(store: Store) -> None:
    ls = FakeLabelStudio([task(i, image="broken" if i == 4 else "ok") for i in range(1, 11)])
    ls.stored[1] = ["clip-r0"]  # already predicted with this version: skipped
    ls.stored[2] = ["clip-r9"]  # another version: predicted again
    predictor = FakePredictor()
    jobs = bulk_jobs(store, ls, predictor)
    spec = jobs.create("7", "prelabel", chunk_size=4)
    seen = []
    status = jobs.run_all(spec.job_id, progress=lambda s: seen.append((s.state, s.done)))
    assert (status.state, status.total, status.skipped, status.predicted, status.failed) == ("done", 10, 1, 8, 1)
    assert (status.chunks, status.chunks_done, status.model_version) == (3, 3, "clip-r0")
    assert status.errors == ("task 4: image broken",)
    assert seen[0] == ("running", 1) and seen[-1] == ("done", 10)
    assert sorted(t for t, v in ls.stored.items() if "clip-r0" in v) == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert all(v.count("clip-r0") == 1 for v in ls.stored.values())
    assert ls.imports == 3 and all(not from_cache for _, from_cache in predictor.calls)
    # a chunk delivered again changes nothing, and is not predicted again
    assert jobs.run_chunk(spec.job_id, 0) is None and len(predictor.calls) == 3
    assert jobs.status(spec.job_id) == status


def test_a_rerun_skips_what_a_cut_off_run_stored(store: Store) -> None:
    ls = FakeLabelStudio([task(i) for i in range(1, 7)])
    jobs = bulk_jobs(store, ls)
    spec = jobs.create("7", "prelabel", chunk_size=3)
    plan = jobs.plan(spec.job_id)
    assert plan.chunks == 2 and jobs.plan(spec.job_id) == plan  # planned once
    ls.stored[5] = ["clip-r0"]  # stored by another run after this plan was made
    result = jobs.run_chunk(spec.job_id, 1)
    assert result is not None and (result.predicted, result.already_stored) == (2, 1)
    assert jobs.status(spec.job_id).state == "running"


def test_a_rescore_leaves_annotated_tasks_out(store: Store) -> None:
    ls = FakeLabelStudio([task(1), task(2, annotations=1), task(3, annotations=1, cancelled=1), task(4, annotations=2,
                                                                                                      cancelled=1)])
    predictor = FakePredictor()
    jobs = bulk_jobs(store, ls, predictor)
    status = jobs.run_all(jobs.create("7", "rescore", chunk_size=10).job_id)
    assert (status.total, status.predicted) == (2, 2)  # task 1, and task 3 whose only annotation was skipped
    assert predictor.calls == [([1, 3], True)]  # re-scoring reads cached embeddings


def test_a_broken_label_config_fails_the_plan(store: Store) -> None:
    jobs = bulk_jobs(store, FakeLabelStudio([task(1)], label_config="<View>"))
    spec = jobs.create("7", "prelabel", chunk_size=10)
    with pytest.raises(LabelConfigError):
        jobs.run_all(spec.job_id)
    status = jobs.status(spec.job_id)
    assert status.state == "failed" and status.detail is not None and jobs.unfinished() == []


def test_cancel_stops_before_the_next_chunk(store: Store) -> None:
    ls = FakeLabelStudio([task(i) for i in range(1, 7)])
    jobs = bulk_jobs(store, ls)
    spec = jobs.create("7", "prelabel", chunk_size=2)
    jobs.plan(spec.job_id)
    assert jobs.unfinished() == [spec.job_id]
    assert jobs.cancel(spec.job_id).state == "cancelled"
    assert jobs.run_chunk(spec.job_id, 0) is None and ls.stored == {}
    assert jobs.run_all(spec.job_id).chunks_done == 0 and jobs.unfinished() == []


def test_one_active_job_per_project_and_kind(store: Store) -> None:
    jobs = bulk_jobs(store, FakeLabelStudio([task(1)]))
    first = jobs.create("7", "prelabel", chunk_size=10)
    active = jobs.active("7", "prelabel")
    assert active is not None and active.job_id == first.job_id
    assert jobs.active("7", "rescore") is None and jobs.active("8", "prelabel") is None
    jobs.run_all(first.job_id)
    assert jobs.active("7", "prelabel") is None  # done
    assert [j.job_id for j in jobs.list("7")] == [first.job_id] and jobs.list("8") == []


def test_unknown_jobs_and_projects_without_label_studio(store: Store) -> None:
    jobs = bulk_jobs(store, None)
    with pytest.raises(NotFoundError, match="no bulk job 'ffffffffffffffff'"):
        jobs.status("ffffffffffffffff")
    with pytest.raises(InvalidRequestError):
        jobs.create("7", "prelabel", chunk_size=10)  # refused at once, not in a worker later
    assert jobs.list("7") == []
