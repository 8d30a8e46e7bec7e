"""The CLIP encoder: the only module that imports torch, open_clip, onnxruntime and openvino.

Loads any open_clip model once per process (a pretrained tag, `hf-hub:org/repo`, `local-dir:/path`, or a checkpoint
file as `pretrained`) and encodes batches of prepared uint8 images and of texts into L2-normalised float32 vectors.

On the CPU the towers can run in ONNX Runtime instead of torch (`runtime="onnx"`): the loaded model's image and text
towers are exported once per encoder id into a cache directory, checked on every load (file digests, export format,
and a probe batch that must match torch's embeddings), and rebuilt when the check fails. Prompts run on tokens cut
after the batch's longest prompt (`trim_tokens`), in torch: the ONNX text tower takes the full context length.
`runtime="openvino"` compiles the same export with OpenVINO, in bf16 where the CPU has it (AVX-512 BF16 or AMX), and
is used under the same checks; its prompts run in OpenVINO too, on trimmed tokens, from a text tower converted by
OpenVINO's PyTorch front end (which, unlike the ONNX export, keeps the token axis dynamic), cached and checked the
same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnxruntime as ort
import open_clip
import openvino as ov
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import InterpolationMode, resize

from cliplabel.core.domain import ResizeMode
from cliplabel.core.errors import SettingsError
from cliplabel.model.files import file_digest, weights_identity, write_atomic

logger = logging.getLogger(__name__)
_TEXT_BATCH = 256
# CLIP's `logit_scale` is clamped to ln(100) in training: the temperature of models that do not learn one.
_DEFAULT_LOGIT_SCALE = 100.0
Runtime = Literal["auto", "torch", "onnx", "openvino"]
# Bump when the exported graphs change: exports of an older format are then stale and rebuilt.
_EXPORT_FORMAT = 1
_OPSET = 17
# Bump when the trimmed text graph converted for OpenVINO changes.
_TEXT_IR_FORMAT = 1
# The text probe: prompts of many lengths (an empty one, one word, a long one), so the check covers the trimmed
# lengths prompts really have.
_TEXT_PROBE = ("", "x", "a photo of a cat.", "a drawing of a red square.", "a blurry photo of the large blue circle.",
               "itap of a green triangle", "a photo of a " + "very " * 8 + "small yellow star on a dark background.",
               "a close-up photo of the part of a car.")
# An export whose probe embeddings are further than this from torch's (cosine) is never used: in OpenVINO's bf16 too,
# which measured 0.99992 on ViT-B-32 (bench/bench_runtime.py).
_PROBE_MIN_COSINE = 0.9999
# What ONNX Runtime raises for a file it cannot load or run (each derives from Exception alone).
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name) for name in  # type: ignore[attr-defined]
    ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "RuntimeException"))
# What OpenVINO's PyTorch front end raises for a graph it cannot convert (each derives from Exception alone).
_OV_ERRORS: tuple[type[Exception], ...] = (ov.frontend.OpConversionFailure, ov.frontend.GeneralFailure)


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


def _trims_text(model: Any) -> bool:
    """Whether the text tower may run on tokens cut after the batch's longest prompt (`trim_tokens`).

    In open_clip's CLIP the text transformer is causal (position i attends to positions ≤ i only) and the output is
    read at the end-of-text token: the padding after it changes nothing, yet costs most of the work (a prompt is
    5–20 of the 77 positions). Other text towers (Hugging Face ones, other pooling) always get the full length.
    """
    return (type(model) is open_clip.CLIP and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "attn_mask", None) is not None)


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(N, L) token ids → (N, L') cut after the longest row's end-of-text token (the highest id in each row)."""
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]


def _encode_text(model: Any, tokens: torch.Tensor, trimmed: bool) -> torch.Tensor:
    """open_clip's `CLIP.encode_text(tokens, normalize=True)`, for tokens of any length up to the context length
    when `trimmed` (the positional embedding and the causal mask cut to it)."""
    if not trimmed:
        return model.encode_text(tokens, normalize=True)
    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return torch.nn.functional.normalize(x, dim=-1)


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
                 input_dtype: torch.dtype = torch.float32, towers: OnnxTowers | None = None) -> None:
        # `model` is an open_clip CLIP (typed Any: nn.Module's __getattr__ hides its methods from mypy). With ONNX
        # towers it is kept only for the text tower where torch runs it on trimmed tokens (`trim_tokens`: 7× the
        # prompts/s of the ONNX Runtime text tower, which takes the full context length; bench/RESULTS.md).
        self._trim_text = _trims_text(model)
        # Prompts run in the towers where their text tower takes the tokens this model's prompts come as.
        self._text_in_towers = towers is not None and towers.text_input == ("trimmed" if self._trim_text else "full")
        self._model: Any = None if self._text_in_towers else model
        self._towers = towers
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

    @property
    def runtime(self) -> str:
        """`onnx`, `openvino` or `torch`: what runs the image tower (texts run in torch where it trims their padding)."""
        return self._towers.runtime if self._towers is not None else "torch"

    @property
    def precision(self) -> str:
        """The image tower's arithmetic: `fp32`, `fp16` (torch on CUDA) or `bf16` (OpenVINO on CPUs that have it)."""
        if self._towers is not None:
            return self._towers.precision
        return "fp16" if self._dtype == torch.float16 else "fp32"

    @property
    def text_runtime(self) -> str:
        """What encodes prompts: `torch`, or the runtime of the towers."""
        return self._towers.runtime if self._text_in_towers and self._towers is not None else "torch"

    @property
    def text_precision(self) -> str:
        """The text tower's arithmetic (as `precision`)."""
        if self._text_in_towers and self._towers is not None:
            return self._towers.text_precision
        return "fp16" if self._dtype == torch.float16 else "fp32"

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB → (N, D) float32, L2-normalised."""
        if images_u8.ndim != 4 or images_u8.shape[1:] != (self._image_size, self._image_size, 3):
            raise ValueError(f"expected (N, {self._image_size}, {self._image_size}, 3) uint8, got {images_u8.shape}")
        if len(images_u8) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        if self._towers is not None:
            with self._lock:
                return self._towers.images(np.ascontiguousarray(images_u8, dtype=np.uint8))
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
        if self._towers is not None:
            nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())
            with self._lock:
                return self._towers.images(nhwc)
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
        tokens = self._tokenizer(texts)
        if self._trim_text:
            tokens = trim_tokens(tokens)
        if self._text_in_towers and self._towers is not None:
            with self._lock:
                return self._towers.texts(tokens.numpy().astype(np.int64, copy=False))
        tokens = tokens.to(self._device)
        with self._lock, torch.inference_mode():
            return _encode_text(self._model, tokens, self._trim_text).float().cpu().numpy()


class OnnxTowers:
    """A CLIP's towers from its ONNX export, run on the CPU by ONNX Runtime or OpenVINO (input preprocessing inside
    the graph). Each tower is a call from its one input array to its output array."""

    def __init__(self, image: Callable[[np.ndarray], Any], text: Callable[[np.ndarray], Any] | None,
                 runtime: str = "onnx", precision: str = "fp32",
                 text_input: Literal["full", "trimmed"] | None = "full", text_precision: str = "fp32") -> None:
        # `text` is None where prompts never reach it: the encoder runs them in torch on trimmed tokens.
        # `text_input`: the text tower takes tokens at the full context length, or cut by `trim_tokens`.
        self._image = image
        self._text = text
        self.runtime = runtime
        self.precision = precision
        self.text_input = text_input if text is not None else None
        self.text_precision = text_precision

    @property
    def has_text(self) -> bool:
        return self._text is not None

    def with_text(self, text: Callable[[np.ndarray], Any], text_input: Literal["full", "trimmed"],
                  text_precision: str) -> OnnxTowers:
        """These towers with another text tower."""
        return OnnxTowers(self._image, text, self.runtime, self.precision, text_input, text_precision)

    def images(self, images_u8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB → (N, D) float32, L2-normalised."""
        return np.asarray(self._image(images_u8), dtype=np.float32)

    def texts(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L) int64 token ids → (N, D) float32, L2-normalised."""
        if self._text is None:
            raise RuntimeError(f"the {self.runtime} towers were built without the text tower")
        return np.asarray(self._text(tokens), dtype=np.float32)


class _ImageGraph(torch.nn.Module):
    """uint8 NHWC pixels → normalised embeddings: the preprocessing of `ClipEncoder._encode_nchw`, then the tower."""

    def __init__(self, model: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = images_u8.permute(0, 3, 1, 2).float().div(255.0)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.model.encode_image((x - mean) / std, normalize=True)


class _TextGraph(torch.nn.Module):
    """(N, L) token ids → normalised embeddings (`_encode_text`): L is the context length, or with `trimmed` any
    length up to it (`trim_tokens`)."""

    def __init__(self, model: Any, trimmed: bool = False) -> None:
        super().__init__()
        self.model = model
        self.trimmed = trimmed

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _encode_text(self.model, tokens, self.trimmed)


def export_paths(cache_dir: Path, encoder_id: str) -> tuple[Path, Path, Path]:
    """The image tower's, the text tower's and the manifest's files of an encoder's ONNX export."""
    return (cache_dir / f"{encoder_id}-image.onnx", cache_dir / f"{encoder_id}-text.onnx",
            cache_dir / f"{encoder_id}-manifest.json")


def _expected_manifest(encoder_id: str) -> dict[str, object]:
    return {"format": _EXPORT_FORMAT, "encoder_id": encoder_id, "opset": _OPSET, "torch": torch.__version__,
            "open_clip": open_clip.__version__}


def _valid_export(cache_dir: Path, encoder_id: str) -> bool:
    """Whether the cached export exists, is of this encoder and export format, and has the bytes it was written with."""
    image_path, text_path, manifest_path = export_paths(cache_dir, encoder_id)
    return _valid_files((image_path, text_path), manifest_path, _expected_manifest(encoder_id),
                        f"onnx export of encoder_id={encoder_id}")


def _valid_files(files: Sequence[Path], manifest_path: Path, identity: dict[str, object], what: str) -> bool:
    """Whether `manifest_path` names `identity` and the SHA-256 of each of `files` as they are now."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("identity") != identity:
        logger.info("%s is stale; rebuilding it", what)
        return False
    try:
        digests = {p.name: file_digest(p) for p in files}
    except OSError:
        return False
    if manifest.get("sha256") != digests:
        logger.warning("%s does not match its manifest (corrupt); rebuilding it", what)
        return False
    return True


def _write_manifest(files: Sequence[Path], manifest_path: Path, identity: dict[str, object]) -> None:
    """Written last, after the files it names: a crash before it leaves a manifest that no longer matches."""
    manifest = {"identity": identity, "sha256": {p.name: file_digest(p) for p in files}}
    write_atomic(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def _export(model: Any, tokenizer: Any, cache_dir: Path, encoder_id: str, image_size: int,
            mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Exports both towers (batch axis dynamic), then writes the manifest naming their digests."""
    started = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    image_path, text_path, manifest_path = export_paths(cache_dir, encoder_id)
    images = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    tokens = tokenizer(["a photo.", "a photo of a thing."])
    graphs = [(_ImageGraph(model, mean, std), images, "images_u8", image_path),
              (_TextGraph(model), tokens, "tokens", text_path)]
    for graph, example, name, path in graphs:
        def write(tmp: Path, graph: torch.nn.Module = graph, example: torch.Tensor = example, name: str = name) -> None:
            # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for these graphs. Grad mode
            # stays on: without it nn.MultiheadAttention takes a fused fast path that has no ONNX export. The
            # token axis stays at the context length: traced through nn.MultiheadAttention's packed projection, a
            # dynamic one keeps the example's length in a reshape (so the ONNX text tower cannot take `trim_tokens`).
            with warnings.catch_warnings(), torch.inference_mode(False):
                warnings.simplefilter("ignore")
                torch.onnx.export(graph.eval(), (example,), str(tmp), opset_version=_OPSET, input_names=[name],
                                  output_names=["emb"], dynamic_axes={name: {0: "n"}, "emb": {0: "n"}}, dynamo=False)
        write_atomic(path, write)
    _write_manifest((image_path, text_path), manifest_path, _expected_manifest(encoder_id))
    logger.info("exported encoder_id=%s to onnx in %.1fs", encoder_id, time.perf_counter() - started)


def trimmed_text_paths(cache_dir: Path, encoder_id: str) -> tuple[Path, Path, Path]:
    """The OpenVINO model (IR: graph and weights) of an encoder's trimmed text tower, and its manifest."""
    stem = cache_dir / f"{encoder_id}-text-trimmed"
    return stem.with_suffix(".xml"), stem.with_suffix(".bin"), cache_dir / f"{encoder_id}-text-trimmed-manifest.json"


def _trimmed_text_identity(encoder_id: str) -> dict[str, object]:
    return {"format": _TEXT_IR_FORMAT, "encoder_id": encoder_id, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "openvino": ov.__version__}


def _convert_trimmed_text(model: Any, tokenizer: Any, cache_dir: Path, encoder_id: str) -> None:
    """Converts the trimmed text tower with OpenVINO's PyTorch front end (token axis dynamic) and caches it."""
    started = time.perf_counter()
    xml_path, bin_path, manifest_path = trimmed_text_paths(cache_dir, encoder_id)
    cache_dir.mkdir(parents=True, exist_ok=True)
    example = trim_tokens(tokenizer(["a photo.", "a photo of a thing."]))
    # The front end traces with torch.jit, which warns that it is deprecated: not ours to act on.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(_TextGraph(model, trimmed=True).eval(), example_input=example,
                                     input=[ov.PartialShape([-1, -1])])
    # The IR is two files that name each other by stem: written side by side in a private folder, then moved.
    staging = cache_dir / f".{encoder_id}-text-trimmed.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        ov.save_model(converted, str(staging / "text.xml"), compress_to_fp16=False)
        os.replace(staging / "text.bin", bin_path)
        os.replace(staging / "text.xml", xml_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_manifest((xml_path, bin_path), manifest_path, _trimmed_text_identity(encoder_id))
    logger.info("converted the text tower of encoder_id=%s for openvino in %.1fs", encoder_id,
                time.perf_counter() - started)


def _sessions(cache_dir: Path, encoder_id: str, threads: int) -> OnnxTowers:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between ops: the backend shares its CPUs with Label Studio and its own fetch threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    image_path, text_path, _ = export_paths(cache_dir, encoder_id)
    image, text = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                   for p in (image_path, text_path))
    return OnnxTowers(lambda x: image.run(None, {"images_u8": x})[0], lambda t: text.run(None, {"tokens": t})[0])


def _openvino_precision(core: ov.Core) -> Literal["bf16", "f32"]:
    """bf16 where the CPU computes it natively (AVX-512 BF16 or AMX; twice torch's fp32 images/s on ViT-B-32 in
    bench/bench_runtime.py, where OpenVINO's f32 gains 1.1×), else f32."""
    return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def _openvino_config(threads: int, precision: str) -> dict[str, object]:
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}


def _compiled(cache_dir: Path, encoder_id: str, threads: int, with_text: bool) -> OnnxTowers:
    """The export compiled by OpenVINO for the CPU, at `_openvino_precision`."""
    core = ov.Core()
    precision = _openvino_precision(core)
    image_path, text_path, _ = export_paths(cache_dir, encoder_id)
    image = core.compile_model(str(image_path), "CPU", _openvino_config(threads, precision))
    # The full-length text tower (models whose prompts cannot be trimmed) stays f32: prompts are encoded once per
    # label set, and these towers are rare.
    text = core.compile_model(str(text_path), "CPU", _openvino_config(threads, "f32")) if with_text else None
    return OnnxTowers(lambda x: image(x)[0], None if text is None else lambda t: text(t)[0], "openvino",
                      "bf16" if precision == "bf16" else "fp32")


def _text_probe_cosine(text: Callable[[np.ndarray], Any], model: Any, tokenizer: Any) -> float:
    """The lowest cosine between a trimmed text tower's and torch's embeddings of `_TEXT_PROBE`, in batches of one
    length and of many."""
    tokens = tokenizer(list(_TEXT_PROBE))
    lowest = 1.0
    for batch in (tokens, tokens[:3], tokens[6:7]):
        trimmed = trim_tokens(batch)
        with torch.inference_mode():
            want = _encode_text(model, trimmed, True).float().numpy()
        got = np.asarray(text(trimmed.numpy().astype(np.int64)), dtype=np.float32)
        lowest = min(lowest, float(np.min(np.sum(got * want, axis=1))))
    return lowest


def _openvino_trimmed_text(model: Any, tokenizer: Any, cache_dir: Path, encoder_id: str, threads: int
                           ) -> tuple[Callable[[np.ndarray], Any], str] | None:
    """The trimmed text tower in OpenVINO and its precision, or None (prompts then stay in torch).

    bf16 where the CPU has it and the probe agrees with torch (cosine ≥ `_PROBE_MIN_COSINE`: bf16 text embeddings
    measured 0.99991 on ViT-B-32 in bench/bench_runtime.py, close to the bar, so some models will fall back), else
    f32 under the same probe. A cached conversion that fails both is converted again once.
    """
    core = ov.Core()
    xml_path, bin_path, manifest_path = trimmed_text_paths(cache_dir, encoder_id)
    what = f"openvino text tower of encoder_id={encoder_id}"
    precisions = ["bf16", "f32"] if _openvino_precision(core) == "bf16" else ["f32"]
    for attempt in range(2):
        try:
            if attempt or not _valid_files((xml_path, bin_path), manifest_path, _trimmed_text_identity(encoder_id),
                                           what):
                _convert_trimmed_text(model, tokenizer, cache_dir, encoder_id)
            for precision in precisions:
                compiled = core.compile_model(str(xml_path), "CPU", _openvino_config(threads, precision))

                def text(t: np.ndarray, compiled: Any = compiled) -> Any:
                    return compiled(t)[0]

                cosine = _text_probe_cosine(text, model, tokenizer)
                if cosine >= _PROBE_MIN_COSINE:
                    return text, "bf16" if precision == "bf16" else "fp32"
                logger.info("%s in %s gives cosine %.6f to torch", what, precision, cosine)
        except (RuntimeError, ValueError, TypeError, OSError, *_OV_ERRORS) as exc:  # type: ignore[misc]
            logger.warning("%s could not be built or run (%s)", what, exc)
    logger.warning("%s disagrees with torch; prompts are encoded in torch", what)
    return None


def _probe_cosine(towers: OnnxTowers, model: Any, tokenizer: Any, image_size: int,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> float:
    """The lowest cosine between the towers' and torch's embeddings of a fixed probe batch (images, and texts where
    the towers have a text tower)."""
    images = np.random.default_rng(0).integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    tokens = tokenizer(["a photo of a cat.", "a drawing of a red square."])
    with torch.inference_mode():
        pairs = [(towers.images(images), _ImageGraph(model, mean, std).eval()(torch.from_numpy(images)))]
        if towers.has_text:
            pairs.append((towers.texts(tokens.numpy()), model.encode_text(tokens, normalize=True)))
    return min(float(np.min(np.sum(got * want.float().numpy(), axis=1))) for got, want in pairs)


def onnx_towers(model: Any, tokenizer: Any, cache_dir: Path, encoder_id: str, image_size: int,
                mean: tuple[float, ...], std: tuple[float, ...], threads: int,
                runtime: Literal["onnx", "openvino"] = "onnx") -> OnnxTowers:
    """The model's towers in ONNX Runtime or OpenVINO, exported into `cache_dir` unless a valid export is there already.

    An export is used only if its files match its manifest (encoder id, export format, torch and open_clip versions,
    SHA-256 of each file) and its probe embeddings in `runtime` match torch's (cosine ≥ 0.9999); otherwise it is
    rebuilt once. OpenVINO runs prompts too: trimmed (`_openvino_trimmed_text`) for models whose prompts can be
    trimmed (`_trims_text`), else the export's full-length text tower in f32.

    Raises:
        SettingsError: the model cannot be exported, or a fresh export still disagrees with torch.
    """
    def load() -> OnnxTowers:
        if runtime == "openvino":
            return _compiled(cache_dir, encoder_id, threads, with_text=not _trims_text(model))
        return _sessions(cache_dir, encoder_id, threads)

    for attempt in range(2):
        if attempt or not _valid_export(cache_dir, encoder_id):
            try:
                _export(model, tokenizer, cache_dir, encoder_id, image_size, mean, std)
            except (RuntimeError, ValueError, TypeError, OSError) as exc:
                raise SettingsError(f"could not export the model to ONNX ({exc}); set CLIPLABEL_RUNTIME=torch") from exc
        try:
            towers = load()
            cosine = _probe_cosine(towers, model, tokenizer, image_size, mean, std)
        except (RuntimeError, ValueError, *_ORT_ERRORS) as exc:  # type: ignore[misc]
            logger.warning("onnx export of encoder_id=%s does not load in %s (%s); rebuilding it", encoder_id, runtime,
                           exc)
            cosine = -1.0
        if cosine >= _PROBE_MIN_COSINE:
            if runtime == "openvino" and _trims_text(model):
                text = _openvino_trimmed_text(model, tokenizer, cache_dir, encoder_id, threads)
                if text is not None:
                    towers = towers.with_text(text[0], "trimmed", text[1])
            return towers
        logger.warning("onnx export of encoder_id=%s gives cosine %.6f to torch in %s; rebuilding it", encoder_id,
                       cosine, runtime)
    raise SettingsError(f"the ONNX export of this model disagrees with torch in {runtime} (cosine {cosine:.6f} < "
                        f"{_PROBE_MIN_COSINE}); set CLIPLABEL_RUNTIME=torch")


def _resize_mode(model_name: str, value: object) -> ResizeMode:
    for mode in get_args(ResizeMode):
        if value == mode:
            return mode
    raise SettingsError(f"CLIP model {model_name!r} asks for resize_mode={value!r}; cliplabel knows "
                        f"{', '.join(get_args(ResizeMode))}")


def resolve_runtime(runtime: Runtime, device: str) -> Literal["torch", "onnx", "openvino"]:
    """`auto` → `openvino` on CPUs that compute bf16 natively, else `torch` (and on CUDA).

    OpenVINO's bf16 measured 2.1–2.2× (AVX-512 BF16) and 3.5× (AMX) torch's images/s on ViT-B-32 in
    bench/bench_runtime.py, with vectors at cosine ≥ 0.9999 to torch's. Without bf16 no fp32 runtime gained enough to
    pay for an export on a quiet machine (ONNX Runtime and OpenVINO fp32: 0.87–1.09×). `load_encoder` falls back to
    torch when the runtime `auto` picked cannot serve the model.

    Raises:
        SettingsError: `onnx` or `openvino` was asked for on a CUDA device (they run on the CPU only here).
    """
    if runtime == "auto":
        if device != "cpu":
            return "torch"
        return "openvino" if _openvino_precision(ov.Core()) == "bf16" else "torch"
    if runtime != "torch" and device != "cpu":
        raise SettingsError(f"CLIPLABEL_RUNTIME={runtime} runs on the CPU; the model is on {device} (use torch there)")
    return runtime


def load_encoder(model_name: str, pretrained: str | None, device: str = "auto",
                 torch_threads: int | None = None, runtime: Runtime = "torch",
                 cache_dir: Path | None = None) -> ClipEncoder:
    """Loads an open_clip model for inference (fp16 on CUDA, fp32 channels-last on CPU).

    Args:
        runtime: what runs the forward passes (see `resolve_runtime`); `onnx` and `openvino` need `cache_dir`,
            where the towers are exported once per encoder id. `auto` runs in torch where its pick cannot serve
            (no `cache_dir`, an export that fails or disagrees with torch).
        cache_dir: directory of the ONNX exports (shared by both runtimes).

    Raises:
        SettingsError: the model or its weights cannot be found or loaded, or cannot run in the runtime asked for;
            the message names what was asked for.
    """
    started = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    dev = resolve_device(device)
    chosen = resolve_runtime(runtime, dev)
    if runtime == "auto" and cache_dir is None:
        chosen = "torch"
    if chosen != "torch" and cache_dir is None:
        raise SettingsError(f"the {chosen} runtime needs a cache directory for its exports")
    schema_name = model_name.startswith(("local-dir:", "hf-hub:"))
    half = dev == "cuda"
    try:
        slug, identity = weights_identity(model_name, None if schema_name else pretrained)
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
    towers = None
    if chosen != "torch" and cache_dir is not None:
        try:
            towers = onnx_towers(model, tokenizer, cache_dir, encoder_id, image_size, mean, std,
                                 torch_threads or torch.get_num_threads(), chosen)
        except SettingsError as exc:
            if runtime != "auto":
                raise
            # `auto` asked for speed, not for this runtime: a model that cannot be exported, or whose bf16 vectors
            # miss the probe (ViT-B-32's measured 0.99992 against a bar of 0.9999), still serves, in torch.
            logger.warning("runtime=auto: %s is not used for model=%s (%s); running in torch", chosen, model_name,
                           exc)
            chosen = "torch"
    enc = ClipEncoder(model, tokenizer, dev, encoder_id, slug, image_size, mean, std, resize_mode,
                      torch.float16 if half else torch.float32, towers)
    logger.info("loaded model=%s device=%s runtime=%s precision=%s text=%s/%s encoder_id=%s image_size=%d in %.2fs",
                model_name, dev, chosen, enc.precision, enc.text_runtime, enc.text_precision, encoder_id, image_size,
                time.perf_counter() - started)
    return enc
