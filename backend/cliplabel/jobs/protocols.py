"""What the container needs from background work, whichever runs it (a thread here, or rq workers)."""

from __future__ import annotations

from typing import Protocol


class Trigger(Protocol):
    def kick(self) -> None:
        """Makes sure queued feedback events get processed soon."""

    def stop(self) -> None: ...


class Dispatcher(Protocol):
    def start(self, job_id: str) -> None:
        """Makes sure a planned-or-not bulk job gets run to the end."""

    def stop(self) -> None: ...
