"""Embeddings in bulk: a group's cached vectors (e.g. a project's images) as one contiguous matrix with an index.

`get_vectors` reads one vector per key; re-scoring 100,000 tasks that way is 100,000 lookups. Here a group's vectors
are appended in segments (one per encoded batch) and read back with one range read: segments are concatenated into a
(N, D) matrix, and the index maps each key to its row (a key appended again points at its latest row).

A segment on the wire (both stores): magic `CLM1`, dtype code (`e` float16, `f` float32), then little-endian
uint32 N, D and the byte length of the keys, then the keys (UTF-8, newline-separated), the (N, D) matrix, and a
CRC-32 of everything before it. A segment that fails its checks is skipped with a warning (its rows are then missing:
callers encode or fetch them like any cache miss).

A stored key may carry a tag before its first space (`"<tag> <key>"`, e.g. an image's content hash and the reference
that pointed at it): the index is by the key alone, `tag(row)` gives the tag. A key with a space must carry a tag.

`GrowingMatrix` keeps a group in memory and reads only the segments appended since its last read (`MatrixTail`):
the store holds an append-only list, so this copy is never stale, and a job that asks for the group once per chunk
reads it once.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)
_MAGIC = b"CLM1"
_HEADER = struct.Struct("<4scIII")
_DTYPES: dict[bytes, np.dtype] = {b"e": np.dtype("<f2"), b"f": np.dtype("<f4")}


@dataclass(frozen=True)
class EmbeddingMatrix:
    """A group's cached vectors: `emb` (N, D) in the stored dtype, row i belongs to `keys[i]`."""

    keys: tuple[str, ...]
    emb: np.ndarray
    # key (without its tag) → its latest row. A `GrowingMatrix` shares one index among its snapshots, so it may name
    # rows past this snapshot's end: `rows` treats those as missing.
    index: dict[str, int]

    def __post_init__(self) -> None:
        if self.emb.ndim != 2 or len(self.keys) != self.emb.shape[0]:
            raise ValueError(f"expected ({len(self.keys)}, D) rows, got {self.emb.shape}")

    def rows(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (M,) bool, row numbers (M,) int64 with -1 where missing) of `keys`."""
        rows = np.fromiter((self.index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        rows[rows >= self.emb.shape[0]] = -1
        return rows >= 0, rows

    def tag(self, row: int) -> str:
        """The tag a row's stored key carries ("" when none)."""
        tag, sep, _ = self.keys[row].partition(" ")
        return tag if sep else ""

    def nbytes(self) -> int:
        return int(self.emb.nbytes)


def empty(dim: int = 0, dtype: str = "float32") -> EmbeddingMatrix:
    return EmbeddingMatrix((), np.zeros((0, dim), dtype), {})


def pack_segment(keys: Sequence[str], matrix: np.ndarray, dtype: str = "float16") -> bytes:
    """One segment of `len(keys)` rows; `dtype` float16 halves the bytes (see bench/bench_matrix.py for the cost)."""
    if matrix.ndim != 2 or matrix.shape[0] != len(keys):
        raise ValueError(f"expected ({len(keys)}, D) rows, got {matrix.shape}")
    if any("\n" in k for k in keys):
        raise ValueError("matrix keys cannot contain a newline")
    code = b"e" if dtype == "float16" else b"f"
    key_bytes = "\n".join(keys).encode("utf-8")
    body = (_HEADER.pack(_MAGIC, code, matrix.shape[0], matrix.shape[1], len(key_bytes)) + key_bytes
            + np.ascontiguousarray(matrix, dtype=_DTYPES[code]).tobytes())
    return body + struct.pack("<I", zlib.crc32(body))


def _unpack(blob: bytes) -> tuple[list[str], np.ndarray] | None:
    if len(blob) < _HEADER.size + 4 or struct.unpack("<I", blob[-4:])[0] != zlib.crc32(blob[:-4]):
        return None
    magic, code, n, d, key_len = _HEADER.unpack_from(blob)
    dtype = _DTYPES.get(code)
    start = _HEADER.size + key_len
    if magic != _MAGIC or dtype is None or len(blob) - 4 - start != n * d * dtype.itemsize:
        return None
    keys = blob[_HEADER.size:start].decode("utf-8").split("\n") if n else []
    if len(keys) != n:
        return None
    return keys, np.frombuffer(blob, dtype=dtype, count=n * d, offset=start).reshape(n, d)


def _index(keys: Sequence[str], start: int = 0) -> dict[str, int]:
    """key (without its tag) → row."""
    return {(k.partition(" ")[2] if " " in k else k): start + i for i, k in enumerate(keys)}


def join_segments(blobs: Sequence[bytes], group: str) -> EmbeddingMatrix:
    """Concatenates stored segments (oldest first) into one matrix; corrupt segments and other widths are skipped."""
    parts: list[tuple[list[str], np.ndarray]] = []
    for i, blob in enumerate(blobs):
        seg = _unpack(blob)
        if seg is None:
            logger.warning("corrupt embedding segment group=%s segment=%d: skipped", group, i)
            continue
        if parts and (seg[1].shape[1], seg[1].dtype) != (parts[0][1].shape[1], parts[0][1].dtype):
            logger.warning("embedding segment group=%s segment=%d has another width or dtype: skipped", group, i)
            continue
        parts.append(seg)
    if not parts:
        return empty()
    keys = tuple(k for seg_keys, _ in parts for k in seg_keys)
    emb = np.concatenate([m for _, m in parts]) if len(parts) > 1 else parts[0][1].copy()
    return EmbeddingMatrix(keys, emb, _index(keys))


@dataclass(frozen=True)
class MatrixTail:
    """What a store appended to a group after a cursor: the new segments, the cursor after them, and whether the
    group was reset (shorter than the cursor: deleted or evicted), in which case `segments` is the whole group."""

    segments: list[bytes]
    cursor: int
    restarted: bool = False


class GrowingMatrix:
    """One group's embeddings in memory, extended by the store's tail on each `refresh` (thread-safe).

    Rows live in a buffer that doubles when full, so appending a segment costs its own rows, not the group's.
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.cursor = 0
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._keys: tuple[str, ...] = ()
        self._buf = np.zeros((0, 0), np.float16)
        self._n = 0
        self._index: dict[str, int] = {}

    def refresh(self, read_tail: Callable[[int], MatrixTail]) -> EmbeddingMatrix:
        """Reads what was appended since the last refresh (`read_tail(cursor)`) and returns the group so far."""
        with self._lock:
            tail = read_tail(self.cursor)
            if tail.restarted:
                self._reset()
            if tail.segments:
                self._extend(join_segments(tail.segments, self.group))
            self.cursor = tail.cursor
            return EmbeddingMatrix(self._keys, self._buf[:self._n], self._index)

    def _extend(self, new: EmbeddingMatrix) -> None:
        n, add = self._n, new.emb.shape[0]
        if add == 0:
            return
        if n and (new.emb.shape[1], new.emb.dtype) != (self._buf.shape[1], self._buf.dtype):
            logger.warning("embedding segments of group=%s with another width or dtype: skipped", self.group)
            return
        if not n:  # the first read: the joined segments are the buffer and their index the index
            self._buf, self._keys, self._index = new.emb, new.keys, new.index
        else:
            if n + add > self._buf.shape[0]:
                grown = np.empty((max(2 * self._buf.shape[0], n + add), new.emb.shape[1]), new.emb.dtype)
                grown[:n] = self._buf[:n]
                self._buf = grown  # earlier snapshots keep the old buffer: their rows never change
            self._buf[n:n + add] = new.emb
            self._keys = self._keys + new.keys
            self._index.update(_index(new.keys, n))
        self._n = n + add
