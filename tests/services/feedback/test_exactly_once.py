"""Feedback events with several workers on one real store: each event applied once and in order, counters exact, a
dead or slow worker's events taken over, transient failures retried (never acknowledged as done), malformed events
acknowledged and counted as dropped."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from cliplabel.core.domain import AnnotationEvent, FeedbackExample
from cliplabel.core.errors import ImageFetchError, LabelStudioError, StoreUnavailableError
from cliplabel.core.metrics import Metrics
from cliplabel.services.feedback import FeedbackService
from cliplabel.services.feedback.record import DROPPED, RETRIES, backoff_s
from cliplabel.store import Store
from cliplabel.store.base import event_lease
from cliplabel.store.heads import HeadStore


class RecordingExamples:
    """One example per annotation, labelled with its choice; records every application, across workers."""

    def __init__(self, delay_s: float = 0.0, failures: list[Exception] | None = None) -> None:
        self.applied: list[tuple[int, str]] = []
        self.in_flight: set[int] = set()
        self.overlaps = 0
        self.delay_s = delay_s
        self.failures = failures or []
        self.lock = threading.Lock()

    def examples(self, event: AnnotationEvent) -> list[FeedbackExample]:
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.overlaps += event.annotation_id in self.in_flight
            self.in_flight.add(event.annotation_id)
        time.sleep(self.delay_s)
        label = event.regions[0].labels[0]
        with self.lock:
            self.in_flight.discard(event.annotation_id)
            self.applied.append((event.annotation_id, label))
        return [FeedbackExample(event.project_id, event.annotation_id, "kind", f"h{event.annotation_id}", label,
                                "correct", np.ones(4, np.float32) / 2)]

    def deleted(self, project_id: str, annotation_ids: list[int]) -> list[int]:
        return list(annotation_ids)  # no Label Studio here: every named annotation is gone


class NoTraining:
    def __init__(self) -> None:
        self.trained: list[str] = []

    def due(self, pid: str) -> bool:
        return False

    def train_project(self, pid: str) -> None:
        self.trained.append(pid)


def service(store: Store, examples: RecordingExamples, lease_s: float = 5.0) -> FeedbackService:
    return FeedbackService(store, Metrics(), HeadStore(store), examples, NoTraining(),  # type: ignore[arg-type]
                           client_for=lambda state: None, lease_s=lease_s)


def annotation(action: str, project: int, aid: int, label: str) -> dict[str, Any]:
    task = {"id": aid, "data": {"image": f"/data/{aid}.png"}}
    return {"action": action, "project": {"id": project}, "task": task,
            "annotation": {"id": aid, "task": aid, "result": [
                {"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}}


def deleted(project: int, aid: int) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "project": {"id": project}, "annotations": [{"id": aid}]}


def event_stream(recorder: FeedbackService) -> dict[str, dict[int, str]]:
    """Two projects × 6 annotations: created, updated ×3 (labels L0..L3), every third one deleted; returns what each
    project should hold in the end, annotation → label."""
    expected: dict[str, dict[int, str]] = {"1": {}, "2": {}}
    for aid in range(1, 13):
        project = 1 + aid % 2
        recorder.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", project, aid, "L0"))
        for n in (1, 2, 3):
            recorder.record("ANNOTATION_UPDATED", annotation("ANNOTATION_UPDATED", project, aid, f"L{n}"))
        if aid % 3 == 0:
            recorder.record("ANNOTATIONS_DELETED", deleted(project, aid))
        else:
            expected[str(project)][aid] = "L3"
    return expected


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_three_workers_apply_each_event_once_in_order(make_store, kind: str) -> None:  # type: ignore[no-untyped-def]
    examples = RecordingExamples(delay_s=0.005)
    workers = [service(make_store(kind), examples) for _ in range(3)]  # three processes' worth: own owner, own store
    expected = event_stream(workers[0])
    start = threading.Barrier(3)

    def drain(worker: FeedbackService) -> None:
        start.wait()
        while worker.has_pending():
            worker.process_pending()

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store = workers[0].store
    # each created/updated event applied exactly once (48 of them), never two at once, in order per annotation
    assert len(examples.applied) == 48 and examples.overlaps == 0
    assert Counter(aid for aid, _ in examples.applied) == {aid: 4 for aid in range(1, 13)}
    for aid in range(1, 13):
        assert [label for a, label in examples.applied if a == aid] == ["L0", "L1", "L2", "L3"]
    for pid in ("1", "2"):
        assert {e.annotation_id: e.label for e in store.list_feedback(pid)} == expected[pid]
        assert store.event_counts(pid) == {"annotation_created": 6, "annotation_updated": 18,
                                           "annotations_deleted": 2, "since": 26}
    assert store.pending_events(1) == []


def test_a_dead_workers_events_are_taken_over_when_its_lease_expires(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("redis")
    examples = RecordingExamples()
    worker = service(store, examples)
    worker.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 1, "L0"))
    assert store.acquire_lease(event_lease("1"), "a worker that died", 1.0)
    assert worker.process_pending() == 0 and worker.has_pending()  # held: not touched
    time.sleep(1.2)
    assert worker.process_pending() == 1 and not worker.has_pending()
    assert examples.applied == [(1, "L0")] and store.event_counts("1")["annotation_created"] == 1


def test_a_worker_whose_lease_expired_acknowledges_nothing(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("redis")
    slow_examples = RecordingExamples(delay_s=1.0)
    slow = service(store, slow_examples, lease_s=0.3)  # stalls past its lease on its first event
    fast = service(make_store("redis"), RecordingExamples())
    slow.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 1, "L0"))
    slow.record("ANNOTATION_UPDATED", annotation("ANNOTATION_UPDATED", 1, 1, "L1"))
    stalled = threading.Thread(target=slow.process_pending)
    stalled.start()
    time.sleep(0.5)  # the slow worker's lease has expired: the fast one takes over and does everything
    assert fast.process_pending() == 2
    stalled.join(timeout=10)
    # the slow worker's late work is fenced off: every event counted once
    assert store.event_counts("1") == {"annotation_created": 1, "annotation_updated": 1, "since": 2}
    assert {e.annotation_id: e.label for e in store.list_feedback("1")} == {1: "L1"}


@pytest.mark.parametrize("failure", [LabelStudioError("Label Studio answered 502", upstream_status=502),
                                     LabelStudioError("Label Studio did not answer GET: ReadTimeout"),
                                     StoreUnavailableError("Redis unavailable: TimeoutError")])
def test_a_transient_failure_is_retried_never_acknowledged(make_store, failure: Exception) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    examples = RecordingExamples(failures=[failure])
    worker = service(store, examples)
    worker.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 1, "L0"))
    worker.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 2, "L0"))
    assert worker.process_pending() == 0
    assert len(store.pending_events(10)) == 2 and store.list_feedback("1") == []  # still queued, in order
    assert store.event_counts("1") == {RETRIES: 1}
    assert worker.process_pending() == 0  # backing off: the project is held for nobody
    time.sleep(backoff_s(1) + 0.1)
    assert worker.process_pending() == 2
    assert examples.applied == [(1, "L0"), (2, "L0")]
    assert store.event_counts("1") == {RETRIES: 0, "annotation_created": 2, "since": 2}


def test_a_permanent_failure_is_acknowledged_and_counted_as_dropped(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    examples = RecordingExamples(failures=[ImageFetchError("the image host answered HTTP 404")])
    worker = service(store, examples)
    worker.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 1, "L0"))
    worker.record("ANNOTATION_CREATED", {"action": "ANNOTATION_CREATED", "project": {"id": 1}})  # no annotation
    store.push_event("not json", "1")
    worker.record("ANNOTATION_CREATED", annotation("ANNOTATION_CREATED", 1, 2, "L0"))
    assert worker.process_pending() == 4 and not worker.has_pending()
    assert examples.applied == [(2, "L0")]
    assert store.event_counts("1") == {"annotation_created": 3, "unreadable": 1, DROPPED: 3, "since": 1}


def test_backoff_grows_and_is_bounded() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4, 10)] == [1.0, 2.0, 4.0, 8.0, 60.0]


def test_the_queue_holds_raw_json_per_project(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    worker = service(store, RecordingExamples())
    payload = annotation("ANNOTATION_CREATED", 3, 1, "L0")
    assert worker.record("ANNOTATION_CREATED", payload)["status"] == "queued"
    assert [json.loads(p) for _, p in store.pending_events(10, "3")] == [payload]
