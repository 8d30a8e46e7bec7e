"""Webhook events, recorded durably and then applied: the HTTP side only queues, the worker side drains the queue.

`/webhook` only appends the raw event to the store's durable queue (fast, inside Label Studio's 1 s timeout);
`process_pending` — run by a background thread on the embedded store or by an rq worker with Redis — turns events
into examples (idempotent per annotation) and retrains when enough new feedback has arrived.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from cliplabel.core.domain import Head, ModelVersion, ProjectState
from cliplabel.core.errors import CliplabelError
from cliplabel.core.metrics import Metrics
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.feedback.examples import ExampleMaker
from cliplabel.services.feedback.trainer import Trainer
from cliplabel.store import Store
from cliplabel.store.heads import HeadStore

logger = logging.getLogger(__name__)
_BATCH = 50

ClientFor = Callable[[ProjectState | None], LabelStudioClient | None]


class FeedbackService:
    """Learning from annotators: webhook events → feedback examples → retrained heads → a new model version.

    Args:
        client_for: an API client for a project's Label Studio (None without its URL and a token), used to import
            the annotations of a `START_TRAINING` event.
    """

    def __init__(self, store: Store, metrics: Metrics, heads: HeadStore, example_maker: ExampleMaker, trainer: Trainer,
                 client_for: ClientFor) -> None:
        self.store = store
        self.metrics = metrics
        self.heads = heads
        self.example_maker = example_maker
        self.trainer = trainer
        self.client_for = client_for
        self._process_lock = threading.Lock()

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

    def heads_for(self, version: ModelVersion) -> dict[str, Head]:
        """The learned heads a version serves (none for r0)."""
        return self.heads.heads_for(version)

    def train_project(self, pid: str) -> ModelVersion | None:
        """Retrains a project now, whatever its count of new feedback."""
        return self.trainer.train_project(pid)

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
                    self.trainer.train_project(pid)
                self.store.ack_events(finished)
                done += len(finished)
        return done

    def _apply(self, payload: dict[str, Any]) -> set[str]:
        """Applies one event; returns the projects that should retrain now."""
        action = ls_format.webhook_action(payload)
        pid = ls_format.webhook_project(payload)
        if action == ls_format.START_TRAINING:
            # START_TRAINING carries no annotations: take them from Label Studio's export, then train.
            self.import_annotations(pid)
            return {pid}
        if action == ls_format.ANNOTATIONS_DELETED:
            for aid in ls_format.deleted_annotation_ids(payload):
                self.store.delete_feedback(pid, aid)
            return self._count(pid)
        try:
            event = ls_format.webhook_annotation_event(payload)
        except CliplabelError as exc:
            logger.warning("project=%s: skipped a malformed %s: %s", pid, action, exc.detail)
            return set()
        if event.cancelled:
            self.store.delete_feedback(pid, event.annotation_id)
            return set()
        try:
            examples = self.example_maker.examples(event)
        except CliplabelError as exc:
            # A task whose image cannot be read teaches nothing; the event is done with, not retried forever.
            logger.warning("project=%s annotation=%s: no feedback recorded: %s", pid, event.annotation_id, exc.detail)
            return set()
        self.store.put_feedback(pid, event.annotation_id, examples)
        self.metrics.inc("feedback_examples", len(examples))
        return self._count(pid)

    def _count(self, pid: str) -> set[str]:
        return {pid} if self.trainer.count(pid, 1) else set()

    def import_annotations(self, pid: str) -> int:
        """Records every annotation of a project from Label Studio's JSON export; returns how many were recorded.

        Without Label Studio's URL and a token nothing is fetched and training uses the feedback already recorded.
        """
        client = self.client_for(self.store.get_project(pid))
        if client is None:
            logger.info("project=%s: no Label Studio URL/token, training on recorded feedback only", pid)
            return 0
        try:
            tasks = client.export(int(pid))
        except CliplabelError as exc:
            logger.warning("project=%s: could not export annotations: %s", pid, exc.detail)
            return 0
        recorded = 0
        for event in ls_format.exported_events(tasks, pid):
            if isinstance(event, CliplabelError):
                logger.warning("project=%s: skipped an exported annotation: %s", pid, event.detail)
                continue
            if event.cancelled:
                continue
            try:
                self.store.put_feedback(pid, event.annotation_id, self.example_maker.examples(event))
                recorded += 1
            except CliplabelError as exc:
                logger.warning("project=%s: skipped an exported annotation: %s", pid, exc.detail)
        logger.info("project=%s: recorded %d annotations from Label Studio's export", pid, recorded)
        return recorded
