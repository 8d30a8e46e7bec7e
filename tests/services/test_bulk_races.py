"""Bulk jobs with several processes at once, on both real stores: one job per project and kind however many clicks
arrive together, reads that change nothing, empty predictions stored as such, a given-up chunk that ends its job,
and a prediction import retried without storing anything twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from cliplabel.container import start_bulk_job
from cliplabel.core.domain import ModelVersion, TaskPrediction
from cliplabel.core.errors import LabelStudioError
from cliplabel.store import Store
from tests.services.test_bulk_jobs import FakeLabelStudio, FakePredictor, bulk_jobs, task


class Dispatched:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, job_id: str) -> None:
        self.started.append(job_id)

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_concurrent_clicks_start_one_job(make_store, kind: str) -> None:  # type: ignore[no-untyped-def]
    ls = FakeLabelStudio([task(i) for i in range(1, 5)])
    processes = [bulk_jobs(make_store(kind), ls) for _ in range(8)]  # eight API processes on one store
    dispatcher = Dispatched()
    start = threading.Barrier(len(processes))
    answers: list[str] = []

    def click(jobs: Any) -> None:
        start.wait()
        answers.append(start_bulk_job(jobs, dispatcher, 7, "prelabel", 2).job_id)

    threads = [threading.Thread(target=click, args=(p,)) for p in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(dispatcher.started) == 1 and set(answers) == set(dispatcher.started)
    assert [j.job_id for j in processes[0].list("7")] == dispatcher.started


def _add_version(store: Store, revision: int) -> None:
    for rev in range(revision + 1):
        store.add_version(ModelVersion(project_id="7", encoder_id="enc", revision=rev, name=f"clip-r{rev}",
                                       created_at=time.time()))


def test_active_is_a_read_and_start_supersedes_explicitly(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    ls = FakeLabelStudio([task(i) for i in range(1, 5)])
    jobs = bulk_jobs(store, ls)
    old, created = jobs.start("7", "rescore", 2)
    jobs.plan(old.job_id)  # planned on clip-r0
    assert created and jobs.active("7", "rescore") == jobs.status(old.job_id)
    _add_version(store, 1)  # a retrain added clip-r1
    assert jobs.active("7", "rescore") is None
    assert jobs.status(old.job_id).state == "running"  # reading cancelled nothing
    new, created = jobs.start("7", "rescore", 2)
    assert created and new.job_id != old.job_id
    assert jobs.status(old.job_id).state == "cancelled"  # superseded by the new job, on purpose
    again, created = jobs.start("7", "rescore", 2)
    assert not created and again.job_id == new.job_id


class EmptyForSome(FakePredictor):
    """Finds nothing (an empty prediction) on tasks whose image is "blank"."""

    def predict(self, tasks: Sequence[Any], *args: Any, **kwargs: Any) -> list[TaskPrediction]:
        preds = super().predict(tasks, *args, **kwargs)
        return [TaskPrediction(p.task_id, p.model_version) if t["data"]["image"] == "blank" else p
                for t, p in zip(tasks, preds)]


def test_an_empty_prediction_is_stored_and_a_rerun_skips_it(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    ls = FakeLabelStudio([task(i, image="blank" if i in (2, 3) else "ok") for i in range(1, 6)])
    predictor = EmptyForSome()
    jobs = bulk_jobs(store, ls, predictor)
    status = jobs.run_all(jobs.create("7", "prelabel", chunk_size=10).job_id)
    assert (status.state, status.predicted, status.failed, status.errors) == ("done", 5, 0, ())
    assert sorted(ls.stored) == [1, 2, 3, 4, 5]
    rerun = jobs.run_all(jobs.create("7", "prelabel", chunk_size=10).job_id)
    assert (rerun.skipped, rerun.predicted, len(predictor.calls)) == (5, 0, 1)  # nothing predicted again


def test_a_chunk_given_up_ends_its_job_failed(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    jobs = bulk_jobs(store, FakeLabelStudio([task(i) for i in range(1, 7)]))
    spec = jobs.create("7", "prelabel", chunk_size=3)
    jobs.plan(spec.job_id)
    jobs.run_chunk(spec.job_id, 0)
    jobs.give_up_chunk(spec.job_id, 1, "AbandonedJobError: the worker died")
    status = jobs.status(spec.job_id)
    assert (status.state, status.predicted, status.failed, status.chunks_done) == ("failed", 3, 3, 2)
    assert status.detail is not None and "[1]" in status.detail and jobs.unfinished() == []
    assert jobs.run_chunk(spec.job_id, 1) is None  # a late redelivery changes nothing


class LosesTheFirstAnswer(FakeLabelStudio):
    """Stores the first import, then answers 502 as a proxy would that lost Label Studio's answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed = False

    def import_predictions(self, project_id: int, predictions: Sequence[tuple[int, TaskPrediction]]) -> None:
        super().import_predictions(project_id, predictions)
        if not self.failed:
            self.failed = True
            raise LabelStudioError("Label Studio answered 502", upstream_status=502)


def test_an_import_whose_answer_was_lost_is_checked_not_stored_twice(make_store) -> None:  # type: ignore[no-untyped-def]
    ls = LosesTheFirstAnswer([task(i) for i in range(1, 5)])
    jobs = bulk_jobs(make_store("embedded"), ls)
    jobs.runner.import_retry_delays_s = (0.01,)
    status = jobs.run_all(jobs.create("7", "prelabel", chunk_size=10).job_id)
    assert (status.state, status.predicted) == ("done", 4)
    assert all(v == ["clip-r0"] for v in ls.stored.values()) and sorted(ls.stored) == [1, 2, 3, 4]
