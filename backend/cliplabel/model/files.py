"""Files behind an encoder: content digests of weights, and atomic writes of what is cached beside them."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(model_name: str, pretrained: str | None) -> tuple[str, str]:
    """(readable slug, content identity) of the weights, without loading them."""
    if model_name.startswith("local-dir:"):
        directory = Path(model_name[len("local-dir:"):])
        files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".json"))
        digest = hashlib.sha256("".join(f"{p.name}:{file_digest(p)}" for p in files).encode()).hexdigest()
        return directory.name or "local", digest
    if pretrained and Path(pretrained).is_file():
        return f"{model_name}-{Path(pretrained).stem}", file_digest(Path(pretrained))
    slug = model_name.removeprefix("hf-hub:").replace("/", "-")
    return (f"{slug}-{pretrained}" if pretrained else slug), f"{model_name}|{pretrained}"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Writes `path` through a temporary file beside it, so a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
