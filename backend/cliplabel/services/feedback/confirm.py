"""A webhook's annotation, confirmed against Label Studio's API before it teaches anything.

Anyone who can reach `/webhook` can post a body; only Label Studio's API knows what an annotator really saved. So the
worker fetches the annotation by id and its task, checks that they belong to the event's project (and task), and
learns from what Label Studio stores — its result, its task's image — never from the body. A forged or stale event
(no such annotation, another task or project) is refused for good; Label Studio being down is only a delay.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from cliplabel.core.domain import AnnotationEvent, ProjectState
from cliplabel.core.errors import (
    AnnotationNotConfirmedError,
    InvalidRequestError,
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioUnavailableError,
)
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.accepted import made_by_auto_accept

logger = logging.getLogger(__name__)

ClientFor = Callable[[ProjectState | None], LabelStudioClient | None]
# What Label Studio answers for an annotation or task the token may not see, or that does not exist: final answers.
# Anything else (no answer, 5xx, 429, our token refused) is an outage or a configuration to fix: retried later.
_REFUSED = (400, 403, 404)


class AnnotationConfirmer:
    """Replaces a webhook's annotation by Label Studio's own.

    Args:
        client_for: the API client of a project's Label Studio (None without its URL and a token).
        required: without a client, refuse events instead of trusting their body (on when `/webhook` is open to
            unauthenticated senders, i.e. with basic auth on).
    """

    def __init__(self, client_for: ClientFor, required: bool) -> None:
        self.client_for = client_for
        self.required = required

    def confirm(self, event: AnnotationEvent, state: ProjectState | None) -> AnnotationEvent:
        """The annotation as Label Studio stores it, with its task's stored data, marked `auto_accepted` when
        auto-accept made it (see `cliplabel.services.accepted`).

        Returns the event unchanged when it is already confirmed (an export), or when no Label Studio is known and
        confirmation is not required.

        Raises:
            AnnotationNotConfirmedError: Label Studio has no such annotation, or it belongs to another task or
                project, or its task is not in the project (permanent: the event teaches nothing).
            LabelStudioUnavailableError: Label Studio did not answer or failed (transient: retry the event later).
        """
        if event.confirmed:
            return event
        client = self.client_for(state)
        if client is None:
            if self.required:
                raise AnnotationNotConfirmedError(
                    f"annotation {event.annotation_id}: cannot confirm it without Label Studio's URL and a token")
            return event
        pid = int(event.project_id)
        try:
            stored = client.annotation(event.annotation_id)
            if stored is None:
                raise self._refuse(event, "Label Studio has no such annotation")
            if stored.project_id != event.project_id:
                raise self._refuse(event, f"Label Studio files it under project {stored.project_id}")
            if event.task_id is not None and stored.task_id != event.task_id:
                raise self._refuse(event, f"Label Studio files it under task {stored.task_id}")
            task = client.task(pid, stored.task_id) if stored.task_id is not None else None
            # Made from a prediction: auto-accept's (and unchanged) teaches nothing, so look at the parent.
            parents = (client.task_predictions(stored.task_id)
                       if stored.task_id is not None and task is not None and stored.parent_prediction is not None
                       else [])
        except InvalidRequestError as exc:
            raise self._refuse(event, exc.detail) from exc
        except LabelStudioAuthError as exc:
            raise LabelStudioUnavailableError(exc.detail, exc.upstream_status) from exc
        except LabelStudioError as exc:
            if exc.upstream_status in _REFUSED:
                raise self._refuse(event, f"Label Studio answered {exc.upstream_status}") from exc
            raise LabelStudioUnavailableError(exc.detail, exc.upstream_status) from exc
        if task is None:
            raise self._refuse(event, f"task {stored.task_id} is not in the project")
        return dataclasses.replace(stored, task_data=dict(task.data), auto_accepted=made_by_auto_accept(
            stored.regions, stored.parent_prediction, parents))

    def deleted(self, project_id: str, annotation_ids: list[int], state: ProjectState | None) -> list[int]:
        """Of the annotations an `ANNOTATIONS_DELETED` event names, those Label Studio no longer has (or that another
        project holds): the ones whose feedback may be dropped. All of them when no Label Studio is known and
        confirmation is not required.

        Raises:
            LabelStudioUnavailableError: Label Studio did not answer or failed (transient).
        """
        client = self.client_for(state)
        if client is None:
            return [] if self.required else list(annotation_ids)
        gone = []
        for aid in annotation_ids:
            try:
                stored = client.annotation(aid)
            except InvalidRequestError:
                stored = None
            except LabelStudioError as exc:
                if exc.upstream_status in _REFUSED:
                    gone.append(aid)
                    continue
                raise LabelStudioUnavailableError(exc.detail, exc.upstream_status) from exc
            if stored is None or stored.project_id != project_id:
                gone.append(aid)
            else:
                logger.warning("project=%s annotation=%s: a deletion Label Studio does not confirm; kept", project_id,
                               aid)
        return gone

    @staticmethod
    def _refuse(event: AnnotationEvent, why: str) -> AnnotationNotConfirmedError:
        logger.warning("project=%s annotation=%s task=%s: not confirmed by Label Studio, teaches nothing: %s",
                       event.project_id, event.annotation_id, event.task_id, why)
        return AnnotationNotConfirmedError(f"annotation {event.annotation_id} is not confirmed: {why}")
