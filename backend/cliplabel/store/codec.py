"""Byte format of a cached vector: a small header with a checksum, so a corrupt entry is detected, not served."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_MAGIC = b"CLV1"
_HEADER = struct.Struct("<4sII")  # magic, dimension, crc32 of the float32 payload


def pack(vec: np.ndarray) -> bytes:
    """(D,) float → bytes."""
    payload = np.ascontiguousarray(vec, dtype="<f4").tobytes()
    return _HEADER.pack(_MAGIC, vec.shape[0], zlib.crc32(payload)) + payload


def unpack(blob: bytes) -> np.ndarray | None:
    """bytes → (D,) float32, or None when the entry is corrupt (wrong magic, length or checksum)."""
    if len(blob) < _HEADER.size:
        return None
    magic, dim, crc = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size:]
    if magic != _MAGIC or len(payload) != 4 * dim or zlib.crc32(payload) != crc:
        return None
    return np.frombuffer(payload, dtype="<f4").astype(np.float32)
