"""Every Redis key cliplabel uses, built here and nowhere else: `<prefix>:<schema>:<kind>:…`."""

from __future__ import annotations

SCHEMA = "v1"


class Keys:
    """Key builder for one deployment (the prefix lets several deployments or test runs share one Redis)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("the Redis key prefix must be a non-empty word")
        self.base = f"{prefix}:{SCHEMA}"

    def vector(self, namespace: str, encoder_id: str, key: str) -> str:
        return f"{self.base}:vec:{namespace}:{encoder_id}:{key}"

    def project(self, project_id: str) -> str:
        return f"{self.base}:project:{project_id}"

    def versions(self, project_id: str, encoder_id: str) -> str:
        return f"{self.base}:versions:{project_id}:{encoder_id}"

    def feedback(self, project_id: str) -> str:
        return f"{self.base}:feedback:{project_id}"

    def events(self) -> str:
        return f"{self.base}:events"

    def event_seq(self) -> str:
        return f"{self.base}:events:seq"

    def project_events(self, project_id: str) -> str:
        return f"{self.base}:events:project:{project_id}"

    def event_projects(self) -> str:
        return f"{self.base}:events:projects"

    def event_counts(self, project_id: str) -> str:
        return f"{self.base}:events:counts:{project_id}"

    def lease(self, name: str) -> str:
        return f"{self.base}:lease:{name}"

    def blob(self, namespace: str, key: str) -> str:
        return f"{self.base}:blob:{namespace}:{key}"

    def parts(self, namespace: str, key: str) -> str:
        return f"{self.base}:parts:{namespace}:{key}"

    def lock(self, name: str) -> str:
        return f"{self.base}:lock:{name}"

    def matrix(self, namespace: str, encoder_id: str, group: str) -> str:
        """A list of embedding segments (`cliplabel.store.matrix`)."""
        return f"{self.base}:matrix:{namespace}:{encoder_id}:{group}"

    def all_keys_pattern(self) -> str:
        return f"{self.base}:*"
