"""The shared store for deployments: Redis, keys from `cliplabel.store.keys`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import redis

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectState
from cliplabel.core.errors import StoreUnavailableError
from cliplabel.store import codec, matrix, records
from cliplabel.store.base import event_lease
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

# Removes events and adds to the project's counters in one step, only while ARGV[1] (when not empty) holds the lease.
# KEYS: all events, the project's events, projects with events, the lease, the counters.
# ARGV: owner, project id, number of counters n, n × (field, delta), sequence numbers...
_ACK = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
for i = 4 + 2 * n, #ARGV do
  if redis.call('ZCOUNT', KEYS[2], ARGV[i], ARGV[i]) == 0 then return 0 end
end
for i = 1, n do redis.call('HINCRBY', KEYS[5], ARGV[2 + 2 * i], ARGV[3 + 2 * i]) end
for i = 4 + 2 * n, #ARGV do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[i], ARGV[i])
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return 1
"""
# Takes a free lease, or renews one already held by ARGV[1]; ARGV[2] is its time to live in milliseconds.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# Extends a lease only while ARGV[1] still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# Gives a lease back (ARGV[2] == 0) or holds it for nobody for ARGV[2] milliseconds, only when ARGV[1] holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], '', 'PX', ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1
"""
# Compare-and-set of a string key; ARGV[1] == '0' means "expected absent".
_CLAIM = """
local now = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if now then return 0 end
elseif now ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, prefix: str = "cliplabel") -> None:
        self.keys = Keys(prefix)
        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0,
                                           health_check_interval=30)
        self._add_version = self._redis.register_script(_ADD_VERSION)
        self._ack = self._redis.register_script(_ACK)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._claim = self._redis.register_script(_CLAIM)

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

    def push_event(self, payload: str, project_id: str = "") -> int:
        seq = int(self._call(self._redis.incr, self.keys.event_seq()))
        member = f"{seq}:{payload}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self.keys.events(), {member: seq})
        pipe.zadd(self.keys.project_events(project_id), {member: seq})
        pipe.sadd(self.keys.event_projects(), project_id)
        self._call(pipe.execute)
        return seq

    def pending_events(self, limit: int, project_id: str | None = None) -> list[tuple[int, str]]:
        key = self.keys.events() if project_id is None else self.keys.project_events(project_id)
        out = []
        for raw in self._call(self._redis.zrange, key, 0, limit - 1):
            seq, _, payload = _text(raw).partition(":")
            out.append((int(seq), payload))
        return out

    def event_projects(self) -> list[str]:
        return sorted(_text(p) for p in self._call(self._redis.smembers, self.keys.event_projects()))

    def ack_events(self, seqs: Sequence[int], project_id: str = "", owner: str | None = None,
                   counts: Mapping[str, int] | None = None) -> bool:
        fields = [x for k, v in (counts or {}).items() for x in (k, int(v))]
        keys = [self.keys.events(), self.keys.project_events(project_id), self.keys.event_projects(),
                self.keys.lease(event_lease(project_id)), self.keys.event_counts(project_id)]
        args = [owner or "", project_id, len(fields) // 2, *fields, *(int(s) for s in seqs)]
        return bool(self._call(self._ack, keys, args))

    def event_counts(self, project_id: str) -> dict[str, int]:
        items = self._call(self._redis.hgetall, self.keys.event_counts(project_id))
        return {_text(k): int(v) for k, v in items.items()}

    def add_counts(self, project_id: str, deltas: Mapping[str, int]) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=True)
        for name, delta in deltas.items():
            pipe.hincrby(self.keys.event_counts(project_id), name, int(delta))
        values = self._call(pipe.execute)
        return {name: int(v) for name, v in zip(deltas, values)}

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self._call(self._acquire, [self.keys.lease(name)], [owner, max(1, int(ttl_s * 1000))]))

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self._call(self._renew, [self.keys.lease(name)], [owner, max(1, int(ttl_s * 1000))]))

    def release_lease(self, name: str, owner: str, hold_s: float = 0.0) -> None:
        self._call(self._release, [self.keys.lease(name)], [owner, int(hold_s * 1000)])

    def claim_blob(self, namespace: str, key: str, expected: str | None, data: str) -> bool:
        args = ["0", "", data] if expected is None else ["1", expected, data]
        return bool(self._call(self._claim, [self.keys.blob(namespace, key)], args))

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

    # -- embeddings in bulk (cliplabel.store.matrix) ---------------------------------------------------------------
    def append_matrix(self, namespace: str, encoder_id: str, group: str, segment: bytes) -> None:
        self._call(self._redis.rpush, self.keys.matrix(namespace, encoder_id, group), segment)

    def get_matrix(self, namespace: str, encoder_id: str, group: str) -> matrix.EmbeddingMatrix:
        blobs = self._call(self._redis.lrange, self.keys.matrix(namespace, encoder_id, group), 0, -1)
        return matrix.join_segments([bytes(b) for b in blobs], group)

    def matrix_tail(self, namespace: str, encoder_id: str, group: str, cursor: int) -> matrix.MatrixTail:
        # The cursor is a list position. The list is only appended to; shorter than the cursor means it was deleted
        # (or evicted) and rewritten: start over from its first segment.
        key = self.keys.matrix(namespace, encoder_id, group)
        pipe = self._redis.pipeline(transaction=True)
        pipe.llen(key)
        pipe.lrange(key, cursor, -1)
        length, blobs = self._call(pipe.execute)
        if int(length) < cursor:
            blobs = self._call(self._redis.lrange, key, 0, -1)
            return matrix.MatrixTail([bytes(b) for b in blobs], len(blobs), restarted=True)
        return matrix.MatrixTail([bytes(b) for b in blobs], cursor + len(blobs))

    def close(self) -> None:
        self._redis.close()
