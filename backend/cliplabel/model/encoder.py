"""The CLIP encoder: the only module that imports torch and open_clip.

Loads any open_clip model once per process (a pretrained tag, `hf-hub:org/repo`, `local-dir:/path`, or a checkpoint
file as `pretrained`) and encodes batches of prepared uint8 images and of texts into L2-normalised float32 vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import open_clip
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import InterpolationMode, resize

from cliplabel.core.domain import ResizeMode
from cliplabel.core.errors import SettingsError

logger = logging.getLogger(__name__)
_TEXT_BATCH = 256
# CLIP's `logit_scale` is clamped to ln(100) in training: the temperature of models that do not learn one.
_DEFAULT_LOGIT_SCALE = 100.0


def resolve_device(requested: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`.

    Raises:
        SettingsError: `cuda` was asked for and no GPU is visible.
    """
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SettingsError("CLIPLABEL_DEVICE=cuda, but torch sees no CUDA device")
    return requested


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_identity(model_name: str, pretrained: str | None) -> tuple[str, str]:
    """(readable slug, content identity) of the weights, without loading them."""
    if model_name.startswith("local-dir:"):
        directory = Path(model_name[len("local-dir:"):])
        files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".json"))
        digest = hashlib.sha256("".join(f"{p.name}:{_file_digest(p)}" for p in files).encode()).hexdigest()
        return directory.name or "local", digest
    if pretrained and Path(pretrained).is_file():
        return f"{model_name}-{Path(pretrained).stem}", _file_digest(Path(pretrained))
    slug = model_name.removeprefix("hf-hub:").replace("/", "-")
    return (f"{slug}-{pretrained}" if pretrained else slug), f"{model_name}|{pretrained}"


def _learned_temperature(model: Any) -> float:
    """exp(logit_scale) of an open_clip model. The probe is on open_clip's object, not one of ours: a model built
    without a learned temperature has no `logit_scale` parameter."""
    if hasattr(model, "logit_scale"):
        return float(model.logit_scale.exp().item())
    return _DEFAULT_LOGIT_SCALE


class ClipEncoder:
    """An open_clip model in eval mode on one device; encoding calls are serialised by a lock.

    Implements `cliplabel.core.domain.Encoder`.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str, encoder_id: str, slug: str,
                 image_size: int, mean: tuple[float, ...], std: tuple[float, ...], resize_mode: ResizeMode,
                 input_dtype: torch.dtype = torch.float32) -> None:
        # `model` is an open_clip CLIP (typed Any: nn.Module's __getattr__ hides its methods from mypy).
        self._model = model
        self._tokenizer = tokenizer
        self._device = torch.device(device)
        # The image tower's input dtype is the precision the weights were loaded in. No parameter says it: open_clip's
        # fp16 keeps norms and embeddings (the model's first parameter among them) in fp32.
        self._dtype = input_dtype
        self._lock = threading.Lock()
        self._mean = torch.tensor(mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self._device).view(1, 3, 1, 1)
        self._encoder_id = encoder_id
        self._slug = slug
        self._image_size = image_size
        self._resize_mode: ResizeMode = resize_mode
        self._logit_scale = _learned_temperature(model)
        self._channels_last = device == "cpu"
        # D measured by one forward pass, whatever the tower type.
        self._embed_dim = int(self._encode_text_batch(["a photo."]).shape[1])

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def slug(self) -> str:
        return self._slug

    @property
    def resize_mode(self) -> ResizeMode:
        return self._resize_mode

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB → (N, D) float32, L2-normalised."""
        if images_u8.ndim != 4 or images_u8.shape[1:] != (self._image_size, self._image_size, 3):
            raise ValueError(f"expected (N, {self._image_size}, {self._image_size}, 3) uint8, got {images_u8.shape}")
        if len(images_u8) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(images_u8))
        if self._device.type == "cuda":
            x = x.pin_memory().to(self._device, non_blocking=True)
        return self._encode_nchw(x.permute(0, 3, 1, 2))

    def encode_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        """JPEG bytes → (N, D) float32, decoded and resized on the model's device (nvjpeg on CUDA).

        The caller sends only upright RGB or greyscale JPEGs within its pixel cap (`images.device_decodable`), for
        models with the `shortest` resize mode. Resizing matches `images.prepare` (bicubic, antialiased, centre crop).

        Raises:
            RuntimeError: a JPEG the decoder cannot read (the caller falls back to the CPU path).
        """
        if not blobs:
            return np.zeros((0, self.embed_dim), np.float32)
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self._device)
        size = self._image_size
        batch = torch.empty((len(decoded), 3, size, size), dtype=torch.uint8, device=self._device)
        for i, img in enumerate(decoded):
            h, w = int(img.shape[1]), int(img.shape[2])
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            if (nh, nw) != (h, w):
                img = resize(img, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=True)
            top, left = (nh - size) // 2, (nw - size) // 2
            batch[i] = img[:, top:top + size, left:left + size]
        return self._encode_nchw(batch)

    def _encode_nchw(self, x: torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) uint8 on the model's device → (N, D) float32, L2-normalised."""
        x = x.to(self._dtype).div_(255.0)
        x = (x - self._mean.to(self._dtype)) / self._std.to(self._dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            emb = self._model.encode_image(x, normalize=True)
        return emb.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """N strings → (N, D) float32, L2-normalised."""
        if not texts:
            return np.zeros((0, self._embed_dim), np.float32)
        return np.concatenate([self._encode_text_batch(texts[i:i + _TEXT_BATCH])
                               for i in range(0, len(texts), _TEXT_BATCH)])

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self._tokenizer(texts).to(self._device)
        with self._lock, torch.inference_mode():
            return self._model.encode_text(tokens, normalize=True).float().cpu().numpy()


def _resize_mode(model_name: str, value: object) -> ResizeMode:
    for mode in get_args(ResizeMode):
        if value == mode:
            return mode
    raise SettingsError(f"CLIP model {model_name!r} asks for resize_mode={value!r}; cliplabel knows "
                        f"{', '.join(get_args(ResizeMode))}")


def load_encoder(model_name: str, pretrained: str | None, device: str = "auto",
                 torch_threads: int | None = None) -> ClipEncoder:
    """Loads an open_clip model for inference (fp16 on CUDA, fp32 channels-last on CPU).

    Raises:
        SettingsError: the model or its weights cannot be found or loaded; the message names what was asked for.
    """
    started = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    dev = resolve_device(device)
    schema_name = model_name.startswith(("local-dir:", "hf-hub:"))
    half = dev == "cuda"
    try:
        slug, identity = _weights_identity(model_name, None if schema_name else pretrained)
        model = open_clip.create_model(model_name, pretrained=None if schema_name else pretrained, device=dev,
                                       precision="fp16" if half else "fp32")
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, ValueError, FileNotFoundError, OSError, KeyError) as exc:
        raise SettingsError(f"could not load CLIP model {model_name!r} (pretrained={pretrained!r}): {exc}") from exc
    # open_clip returns models in training mode; BatchNorm towers give garbage that way.
    model.eval()
    if dev == "cpu":
        model = model.to(memory_format=torch.channels_last)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
    resize_mode = _resize_mode(model_name, cfg.get("resize_mode", "shortest"))
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    preprocess_identity = json.dumps([image_size, resize_mode, mean, std])
    encoder_id = hashlib.sha256(f"{identity}|{preprocess_identity}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", slug)[:48]
    enc = ClipEncoder(model, tokenizer, dev, encoder_id, slug, image_size, mean, std, resize_mode,
                      torch.float16 if half else torch.float32)
    logger.info("loaded model=%s device=%s encoder_id=%s image_size=%d in %.2fs", model_name, dev, encoder_id,
                image_size, time.perf_counter() - started)
    return enc
