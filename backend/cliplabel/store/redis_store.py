"""The shared store for deployments: Redis, keys from `cliplabel.store.keys`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import redis

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState
from cliplabel.core.errors import StoreUnavailableError
from cliplabel.store import codec, records
from cliplabel.store.keys import Keys

logger = logging.getLogger(__name__)

# Appends version N only when the list holds exactly N entries: an atomic compare-and-append.
_ADD_VERSION = """
if redis.call('LLEN', KEYS[1]) == tonumber(ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, prefix: str = "cliplabel") -> None:
        self.keys = Keys(prefix)
        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0,
                                           health_check_interval=30)
        self._add_version = self._redis.register_script(_ADD_VERSION)

    def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis unavailable: {type(exc).__name__}") from exc

    def ping(self) -> None:
        self._call(self._redis.ping)

    def get_vectors(self, namespace: str, encoder_id: str, keys: Sequence[str]) -> list[np.ndarray | None]:
        if not keys:
            return []
        blobs = self._call(self._redis.mget, [self.keys.vector(namespace, encoder_id, k) for k in keys])
        out: list[np.ndarray | None] = []
        for key, blob in zip(keys, blobs):
            vec = codec.unpack(blob) if blob is not None else None
            if blob is not None and vec is None:
                logger.warning("corrupt cached vector namespace=%s key=%s: recomputing", namespace, key)
            out.append(vec)
        return out

    def put_vectors(self, namespace: str, encoder_id: str, items: Mapping[str, np.ndarray]) -> None:
        if items:
            self._call(self._redis.mset, {self.keys.vector(namespace, encoder_id, k): codec.pack(v)
                                          for k, v in items.items()})

    def get_project(self, project_id: str) -> ProjectState | None:
        raw = self._call(self._redis.get, self.keys.project(project_id))
        return records.load_project(raw) if raw else None

    def put_project(self, state: ProjectState) -> None:
        self._call(self._redis.set, self.keys.project(state.project_id), records.dump_project(state))

    def list_versions(self, project_id: str, encoder_id: str) -> list[ModelVersion]:
        raws = self._call(self._redis.lrange, self.keys.versions(project_id, encoder_id), 0, -1)
        return [records.load_version(r) for r in raws]

    def add_version(self, version: ModelVersion) -> bool:
        key = self.keys.versions(version.project_id, version.encoder_id)
        ok = self._call(self._add_version, [key], [version.revision, records.dump_version(version)])
        return bool(ok)

    def put_feedback(self, project_id: str, annotation_id: int, examples: list[FeedbackExample]) -> None:
        self._call(self._redis.hset, self.keys.feedback(project_id), str(annotation_id),
                   records.dump_examples(examples))

    def delete_feedback(self, project_id: str, annotation_id: int) -> None:
        self._call(self._redis.hdel, self.keys.feedback(project_id), str(annotation_id))

    def list_feedback(self, project_id: str) -> list[FeedbackExample]:
        items = self._call(self._redis.hgetall, self.keys.feedback(project_id))
        return [e for _, raw in sorted(items.items(), key=lambda kv: int(kv[0])) for e in records.load_examples(raw)]

    def push_event(self, payload: str) -> int:
        seq = int(self._call(self._redis.incr, self.keys.event_seq()))
        self._call(self._redis.zadd, self.keys.events(), {f"{seq}:{payload}": seq})
        return seq

    def pending_events(self, limit: int) -> list[tuple[int, str]]:
        raws = self._call(self._redis.zrange, self.keys.events(), 0, limit - 1)
        out = []
        for raw in raws:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            seq, _, payload = text.partition(":")
            out.append((int(seq), payload))
        return out

    def ack_events(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self._call(self._redis.zremrangebyscore, self.keys.events(), seq, seq)

    def put_blob(self, namespace: str, key: str, data: str) -> None:
        self._call(self._redis.set, self.keys.blob(namespace, key), data)

    def get_blob(self, namespace: str, key: str) -> str | None:
        raw = self._call(self._redis.get, self.keys.blob(namespace, key))
        return raw.decode() if isinstance(raw, bytes) else raw

    def add_part(self, namespace: str, key: str, part: str, data: str) -> bool:
        return bool(self._call(self._redis.hsetnx, self.keys.parts(namespace, key), part, data))

    def list_parts(self, namespace: str, key: str) -> dict[str, str]:
        items = self._call(self._redis.hgetall, self.keys.parts(namespace, key))
        return {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
                for k, v in items.items()}

    def close(self) -> None:
        self._redis.close()
