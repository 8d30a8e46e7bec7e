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

    def blob(self, namespace: str, key: str) -> str:
        return f"{self.base}:blob:{namespace}:{key}"

    def parts(self, namespace: str, key: str) -> str:
        return f"{self.base}:parts:{namespace}:{key}"

    def lock(self, name: str) -> str:
        return f"{self.base}:lock:{name}"

    def all_keys_pattern(self) -> str:
        return f"{self.base}:*"
