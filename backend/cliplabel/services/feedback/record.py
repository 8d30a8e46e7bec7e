"""Webhook events, recorded durably and then applied exactly once, in order, by any number of workers.

`/webhook` only appends the raw event to its project's durable queue in the store (fast, inside Label Studio's 1 s
timeout); `process_pending` — run by a background thread on the embedded store or by any number of rq workers with
Redis — turns events into examples and retrains when enough new feedback has arrived.

Exactly once: a worker processes a project's events only while it holds the project's lease (`Store.acquire_lease`),
so two workers never apply the same event, and one project's events are applied in the order they arrived (an update
after a deletion must not bring the annotation back, which per-event claims, e.g. Redis Streams consumer groups,
would allow). A worker that dies loses its lease after `lease_s`; the next worker reclaims the events it left.
Applying an event is idempotent (examples are replaced per annotation), and the events are acknowledged together
with the counters they add, in one atomic step fenced by the lease: an event re-applied after a crash is counted
once. A transient failure (Label Studio or the store unavailable) stops the project's queue at that event, which stays
queued, and the project backs off; a malformed event, or one that teaches nothing, is acknowledged and logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cliplabel.core.domain import AnnotationEvent, Head, ModelVersion, ProjectState
from cliplabel.core.errors import CliplabelError, LabelStudioError, StoreUnavailableError, TransientError
from cliplabel.core.metrics import Metrics
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.accepted import made_by_auto_accept
from cliplabel.services.feedback.examples import ExampleMaker
from cliplabel.services.feedback.trainer import SINCE, Trainer
from cliplabel.store import Store
from cliplabel.store.base import event_lease
from cliplabel.store.heads import HeadStore

logger = logging.getLogger(__name__)
_BATCH = 50
LEASE_S = 30.0  # a worker renews its lease after each event; a dead worker's events are reclaimed after this
MAX_BACKOFF_S = 60.0
RETRIES = "retries"  # counter: transient failures in a row on a project (the backoff grows with it)
DROPPED = "dropped"  # counter: events acknowledged without teaching anything (malformed, unreadable image)

ClientFor = Callable[[ProjectState | None], LabelStudioClient | None]


def is_transient(exc: BaseException) -> bool:
    """True for a failure that may pass by itself: the store, or Label Studio, timing out, down or overloaded.

    Everything else (a malformed event, an image that cannot be read, a project never set up) is permanent.
    """
    if isinstance(exc, StoreUnavailableError | TransientError):
        return True
    if isinstance(exc, LabelStudioError):
        return exc.upstream_status is None or exc.upstream_status >= 500 or exc.upstream_status in (408, 429)
    return False


def backoff_s(failures: int) -> float:
    """1, 2, 4 … seconds after 1, 2, 3 … transient failures in a row, at most `MAX_BACKOFF_S`."""
    return float(min(MAX_BACKOFF_S, 2.0 ** max(0, failures - 1)))


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Applied:
    """What applying one event did: the counter it adds to, the annotations it counts towards a retrain."""

    action: str
    counted: int = 0
    train_now: bool = False
    dropped: bool = False


class _LeaseLost(Exception):
    """Another worker took this project's lease (ours expired): stop without acknowledging anything."""


class FeedbackService:
    """Learning from annotators: webhook events → feedback examples → retrained heads → a new model version.

    Args:
        client_for: an API client for a project's Label Studio (None without its URL and a token), used to import
            the annotations of a `START_TRAINING` event.
    """

    def __init__(self, store: Store, metrics: Metrics, heads: HeadStore, example_maker: ExampleMaker, trainer: Trainer,
                 client_for: ClientFor, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.metrics = metrics
        self.heads = heads
        self.example_maker = example_maker
        self.trainer = trainer
        self.client_for = client_for
        self.lease_s = lease_s
        self.owner = owner_name()
        self._process_lock = threading.Lock()

    # -- the HTTP side: record only ------------------------------------------------------------------------------------
    def record(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Validates and queues one webhook event; returns at once."""
        pid = ls_format.webhook_project(payload)
        if action not in ls_format.LEARNED_ACTIONS:
            return {"status": "ignored", "action": action}
        seq = self.store.push_event(json.dumps(payload), pid)
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
        """Applies the queued events of every project whose lease this worker gets; returns how many it acknowledged.

        Projects another worker holds (or that back off after a transient failure) are left for later; stops between
        events when `should_stop()` says so, and what was not done stays queued.
        """
        done = 0
        with self._process_lock:
            for pid in self.store.event_projects():
                if should_stop():
                    break
                done += self._process_project(pid, should_stop)
        return done

    def has_pending(self) -> bool:
        """True while any project has unprocessed events (held by a lease or not)."""
        return bool(self.store.event_projects())

    def _process_project(self, pid: str, should_stop: Callable[[], bool]) -> int:
        lease = event_lease(pid)
        if not self.store.acquire_lease(lease, self.owner, self.lease_s):
            return 0
        done, hold_s = 0, 0.0
        try:
            while not should_stop():
                events = self.store.pending_events(_BATCH, pid)
                if not events:
                    break
                finished, counts, train_now, failure = self._apply_batch(pid, events, should_stop)
                if finished and not self.store.ack_events(finished, pid, self.owner, counts):
                    raise _LeaseLost
                done += len(finished)
                if failure is not None:
                    failures = self.store.add_counts(pid, {RETRIES: 1})[RETRIES]
                    hold_s = backoff_s(failures)
                    logger.warning("project=%s: transient failure, %d events stay queued; retry in %.0fs: %s", pid,
                                   len(events) - len(finished), hold_s, failure.detail)
                    return done
                self._reset_retries(pid)
                if train_now or self.trainer.due(pid):
                    self._renew(lease)
                    self.trainer.train_project(pid)
        except _LeaseLost:
            logger.warning("project=%s: lease lost to another worker; it reprocesses what was not acknowledged", pid)
            return done
        except CliplabelError as exc:
            if not is_transient(exc):
                raise
            hold_s = backoff_s(self.store.add_counts(pid, {RETRIES: 1})[RETRIES])
            logger.warning("project=%s: transient failure; retry in %.0fs: %s", pid, hold_s, exc.detail)
        finally:
            try:
                self.store.release_lease(lease, self.owner, hold_s)
            except StoreUnavailableError:
                pass  # the lease expires by itself
        return done

    def _apply_batch(self, pid: str, events: list[tuple[int, str]], should_stop: Callable[[], bool]
                     ) -> tuple[list[int], Counter[str], bool, CliplabelError | None]:
        """Applies events in order until a transient failure: (done, counters to add, retrain now?, the failure)."""
        finished: list[int] = []
        counts: Counter[str] = Counter()
        train_now = False
        for seq, raw in events:
            if should_stop():
                break
            try:
                applied = self._apply(pid, raw)
            except CliplabelError as exc:
                if is_transient(exc):
                    return finished, counts, train_now, exc
                raise
            finished.append(seq)
            counts[applied.action] += 1
            if applied.dropped:
                counts[DROPPED] += 1
            if applied.counted:
                counts[SINCE] += applied.counted
            train_now = train_now or applied.train_now
            self._renew(event_lease(pid))
        return finished, counts, train_now, None

    def _renew(self, lease: str) -> None:
        # Renew, never re-take: a lease that expired may have been taken, used and given back by another worker.
        if not self.store.renew_lease(lease, self.owner, self.lease_s):
            raise _LeaseLost

    def _reset_retries(self, pid: str) -> None:
        failures = self.store.event_counts(pid).get(RETRIES, 0)
        if failures:
            self.store.add_counts(pid, {RETRIES: -failures})

    def _apply(self, pid: str, raw: str) -> Applied:
        """Applies one event (idempotent). Raises only transient CliplabelErrors; a permanent failure is logged and
        the event counts as dropped."""
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            logger.warning("project=%s: dropped an unreadable event: %s", pid, exc)
            return Applied("unreadable", dropped=True)
        action = ls_format.webhook_action(payload)
        try:
            return self._apply_payload(pid, action, payload)
        except CliplabelError as exc:
            if is_transient(exc):
                raise
            # A malformed event, or a task whose image cannot be read, teaches nothing: done with, not retried.
            logger.warning("project=%s: dropped a %s event: %s", pid, action, exc.detail)
            return Applied(action.lower(), dropped=True)

    def _apply_payload(self, pid: str, action: str, payload: dict[str, Any]) -> Applied:
        key = action.lower()
        if action == ls_format.START_TRAINING:
            # START_TRAINING carries no annotations: take them from Label Studio's export, then train.
            self.import_annotations(pid)
            return Applied(key, train_now=True)
        if action == ls_format.ANNOTATIONS_DELETED:
            # Only annotations Label Studio no longer has: a forged deletion of a live one removes nothing.
            ids = self.example_maker.deleted(pid, ls_format.deleted_annotation_ids(payload))
            self._renew(event_lease(pid))
            for aid in ids:
                self.store.delete_feedback(pid, aid)
            return Applied(key, counted=len(ids))
        event = ls_format.webhook_annotation_event(payload)
        # A cancelled (skipped) annotation yields no examples once Label Studio confirms it, which clears what it
        # taught before; the event's own `was_cancelled` is not trusted.
        examples = self.example_maker.examples(event)
        # Still ours, for `lease_s` more: a worker that stalled past its lease must not overwrite newer feedback.
        self._renew(event_lease(pid))
        self.store.put_feedback(pid, event.annotation_id, examples)
        self.metrics.inc("feedback_examples", len(examples))
        return Applied(key, counted=1)

    def import_annotations(self, pid: str) -> int:
        """Records every annotation of a project from Label Studio's JSON export; returns how many were recorded.

        Without Label Studio's URL and a token nothing is fetched and training uses the feedback already recorded.
        """
        client = self.client_for(self.store.get_project(pid))
        if client is None:
            logger.info("project=%s: no Label Studio URL/token, training on recorded feedback only", pid)
            return 0
        try:
            events = ls_format.exported_events(client.export(int(pid)), pid)
            accepted = self._auto_accepted(client, pid, events)
        except CliplabelError as exc:
            if is_transient(exc):
                raise  # the START_TRAINING event stays queued and is retried
            logger.warning("project=%s: could not export annotations: %s", pid, exc.detail)
            return 0
        recorded = 0
        for event in events:
            if isinstance(event, CliplabelError):
                logger.warning("project=%s: skipped an exported annotation: %s", pid, event.detail)
                continue
            if event.cancelled:
                continue
            if event.annotation_id in accepted:
                # Auto-accept's own guess, not a person's answer: it must not teach the head that made it (and
                # any examples an earlier import recorded for it go).
                self.store.put_feedback(pid, event.annotation_id, [])
                continue
            try:
                self.store.put_feedback(pid, event.annotation_id, self.example_maker.examples(event))
                recorded += 1
            except CliplabelError as exc:
                if is_transient(exc):
                    raise
                logger.warning("project=%s: skipped an exported annotation: %s", pid, exc.detail)
        logger.info("project=%s: recorded %d annotations from Label Studio's export (%d auto-accepted ones left out)",
                    pid, recorded, len(accepted))
        return recorded

    @staticmethod
    def _auto_accepted(client: LabelStudioClient, pid: str, events: Sequence[AnnotationEvent | CliplabelError]
                       ) -> set[int]:
        """The exported annotations auto-accept made and nobody changed since (see `cliplabel.services.accepted`);
        the project's predictions are fetched only when some annotation was made from a prediction."""
        made = [e for e in events if isinstance(e, AnnotationEvent) and e.parent_prediction is not None]
        if not made:
            return set()
        predictions = client.predictions(int(pid))
        return {e.annotation_id for e in made if made_by_auto_accept(e.regions, e.parent_prediction, predictions)}
