"""Settings: the one module that reads the environment.

`Settings.from_env()` is called once at process start; the resulting object is passed down explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from cliplabel.core.errors import SettingsError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "datacomp_xl_s13b_b90k"

# Environment variable → settings field. The README's table lists the same names.
ENV_FIELDS: dict[str, str] = {
    "CLIPLABEL_MODEL": "model",
    "CLIPLABEL_PRETRAINED": "pretrained",
    "CLIPLABEL_DEVICE": "device",
    "CLIPLABEL_REDIS_URL": "redis_url",
    "CLIPLABEL_REDIS_PREFIX": "redis_prefix",
    "CLIPLABEL_DATA_DIR": "data_dir",
    "CLIPLABEL_TEMPLATES": "templates_file",
    "CLIPLABEL_BATCH_SIZE": "batch_size",
    "CLIPLABEL_FETCH_WORKERS": "fetch_workers",
    "CLIPLABEL_TORCH_THREADS": "torch_threads",
    "CLIPLABEL_RUNTIME": "runtime",
    "CLIPLABEL_MICROBATCH": "microbatch",
    "CLIPLABEL_DECODE": "decode",
    "CLIPLABEL_MICROBATCH_WAIT_MS": "microbatch_wait_ms",
    "CLIPLABEL_SELECTIVE_SEARCH": "selective_search",
    "CLIPLABEL_PROPOSAL_SIDE": "proposal_side",
    "CLIPLABEL_MAX_CROPS": "max_crops",
    "CLIPLABEL_MAX_BOXES": "max_boxes",
    "CLIPLABEL_BOX_CONTEXT": "box_context",
    "CLIPLABEL_BACKGROUND_PROMPTS": "background_prompts_file",
    "CLIPLABEL_RETRAIN_EVERY": "retrain_every",
    "CLIPLABEL_EVENT_LEASE_S": "event_lease_s",
    "CLIPLABEL_RESCORE_AFTER_TRAIN": "rescore_after_train",
    "CLIPLABEL_MATRIX_DTYPE": "matrix_dtype",
    "CLIPLABEL_ALLOWED_HOSTS": "allowed_hosts",
    "CLIPLABEL_LOCAL_FILES_ROOT": "local_files_root",
    "CLIPLABEL_MAX_IMAGE_BYTES": "max_image_bytes",
    "CLIPLABEL_MAX_IMAGE_PIXELS": "max_image_pixels",
    "CLIPLABEL_FETCH_TIMEOUT_S": "fetch_timeout_s",
    "CLIPLABEL_MAX_BODY_BYTES": "max_body_bytes",
    "CLIPLABEL_LOG_LEVEL": "log_level",
    "LABEL_STUDIO_URL": "label_studio_url",
    "LABEL_STUDIO_API_KEY": "label_studio_api_key",
    "BASIC_AUTH_USER": "basic_auth_user",
    "BASIC_AUTH_PASS": "basic_auth_pass",
}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cliplabel"


class Settings(BaseModel):
    """Validated configuration of one cliplabel process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    device: Literal["auto", "cpu", "cuda"] = "auto"
    redis_url: str | None = None
    redis_prefix: str = Field(default="cliplabel", pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: Path = Field(default_factory=_default_data_dir)
    templates_file: Path | None = None
    batch_size: int = Field(default=32, ge=1, le=4096)
    fetch_workers: int = Field(default=8, ge=1, le=256)
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    # What runs the encoder's forward passes. `auto` is OpenVINO on CPUs with native bf16 (2-3.5x torch there), torch
    # elsewhere (bench/bench_runtime.py; bench/RESULTS.md). The default stays torch: OpenVINO's bf16 vectors are
    # torch's to a cosine of 0.9999, not bit for bit, and its first load exports and converts the model (~20 s).
    runtime: Literal["auto", "torch", "onnx", "openvino"] = "torch"
    microbatch: bool = True
    decode: Literal["auto", "cpu", "device"] = "auto"
    microbatch_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    selective_search: Literal["fast", "quality", "off"] = "fast"
    proposal_side: int = Field(default=256, ge=32, le=4096)  # the box benchmark's setting (bench/bench_boxes.py)
    max_crops: int = Field(default=128, ge=1, le=10_000)
    max_boxes: int = Field(default=20, ge=1, le=1_000)
    box_context: bool = True
    background_prompts_file: Path | None = None
    retrain_every: int = Field(default=10, ge=1, le=1_000_000)
    # How long a worker holds a project's feedback events without renewing: a dead worker's are reclaimed after it.
    event_lease_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    rescore_after_train: bool = False
    # Precision of the bulk embedding matrices re-scoring reads: float16 halves memory and disk, at a cost
    # bench/bench_rescore.py measures (top-1 agreement with float32, largest probability change).
    matrix_dtype: Literal["float16", "float32"] = "float16"
    allowed_hosts: tuple[str, ...] = ()
    local_files_root: Path | None = None
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=64_000_000, ge=1024)
    fetch_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    label_studio_url: str | None = None
    label_studio_api_key: SecretStr | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("label_studio_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://localhost:8080")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// , rediss:// or unix:// URL")
        return value

    @field_validator("templates_file", "local_files_root", "background_prompts_file")
    @classmethod
    def _must_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _auth_pair(self) -> Settings:
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        return self

    @property
    def onnx_cache_dir(self) -> Path:
        """Where the encoder's ONNX exports are cached (one set per encoder id)."""
        return self.data_dir / "onnx"

    @property
    def basic_auth_enabled(self) -> bool:
        return self.basic_auth_user is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Builds settings from environment variables (unset or empty ones keep their defaults).

        Raises:
            SettingsError: naming the variable and what is wrong with it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for var, name in ENV_FIELDS.items():
            raw = env.get(var)
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        if env.get("CLIPLABEL_PRETRAINED") is not None and env["CLIPLABEL_PRETRAINED"].strip() == "":
            values["pretrained"] = None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            field_to_env = {v: k for k, v in ENV_FIELDS.items()}
            problems = []
            for err in exc.errors():
                loc = str(err["loc"][0]) if err["loc"] else ""
                problems.append(f"{field_to_env.get(loc, loc or 'settings')}: {err['msg']}")
            # `from None`: pydantic's own message would repeat the input values, secrets included.
            raise SettingsError("invalid settings: " + "; ".join(problems)) from None
