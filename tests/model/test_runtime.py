"""The ONNX Runtime and OpenVINO encoders: the same embeddings and zero-shot answers as torch, and an export cache
that never serves a bad export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from cliplabel.core.errors import SettingsError
from cliplabel.model import encoder as encoder_module
from cliplabel.model.encoder import ClipEncoder, Runtime, load_encoder, resolve_runtime
from cliplabel.model.files import file_digest
from tests import synthetic, tinyclip

MIN_COSINE = 0.9999
TEXTS = ["a photo of a red circle.", "a blue square", "a drawing of a green triangle on a white background.", "x"]


def _onnx(model_dir: Path, cache: Path, runtime: Runtime = "onnx") -> ClipEncoder:
    """The model in a runtime that runs its ONNX export (`onnx` or `openvino`), exported into `cache`."""
    return load_encoder(f"local-dir:{model_dir}", None, "cpu", runtime=runtime, cache_dir=cache)


def _images(size: int, n: int = 12) -> np.ndarray:
    """Synthetic scenes (what the test models know) and noise (what they do not), (n, size, size, 3) uint8."""
    rng = np.random.default_rng(7)
    scenes = [np.asarray(synthetic.scene(rng, size, size)[0].convert("RGB")) for _ in range(n // 2)]
    noise = rng.integers(0, 256, (n - len(scenes), size, size, 3), dtype=np.uint8)
    return np.concatenate([np.stack(scenes).astype(np.uint8), noise])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.min(np.sum(a * b, axis=1)))


def _assert_matches_torch(onnx_enc: ClipEncoder, torch_enc: ClipEncoder) -> None:
    imgs = _images(torch_enc.image_size)
    assert _min_cosine(onnx_enc.encode_images(imgs), torch_enc.encode_images(imgs)) >= MIN_COSINE
    assert _min_cosine(onnx_enc.encode_texts(TEXTS), torch_enc.encode_texts(TEXTS)) >= MIN_COSINE


def test_onnx_embeddings_match_torch(any_model_dir: Path, any_encoder: ClipEncoder, tmp_path: Path) -> None:
    enc = _onnx(any_model_dir, tmp_path)
    assert (enc.runtime, any_encoder.runtime) == ("onnx", "torch")
    # Same identity: vectors cached by one runtime are served to the other.
    assert (enc.encoder_id, enc.embed_dim, enc.image_size) == (any_encoder.encoder_id, any_encoder.embed_dim,
                                                              any_encoder.image_size)
    _assert_matches_torch(enc, any_encoder)
    # A batch of one and an empty batch keep their shapes.
    one = _images(enc.image_size, 2)[:1]
    assert enc.encode_images(one).shape == (1, enc.embed_dim)
    assert enc.encode_images(one[:0]).shape == (0, enc.embed_dim)
    assert enc.encode_texts([]).shape == (0, enc.embed_dim)


def test_openvino_embeddings_match_torch(any_model_dir: Path, any_encoder: ClipEncoder, tmp_path: Path) -> None:
    """OpenVINO (bf16 where the CPU has it, else f32) compiles the export ONNX Runtime uses, from the same cache."""
    _onnx(any_model_dir, tmp_path)
    files = _export_files(tmp_path, any_encoder.encoder_id)
    stamps = [p.stat().st_mtime_ns for p in files]
    enc = _onnx(any_model_dir, tmp_path, "openvino")
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert (enc.runtime, enc.encoder_id, enc.embed_dim) == ("openvino", any_encoder.encoder_id, any_encoder.embed_dim)
    assert enc.precision in ("bf16", "fp32") and any_encoder.precision == "fp32"
    _assert_matches_torch(enc, any_encoder)
    one = _images(enc.image_size, 2)[:1]
    assert enc.encode_images(one).shape == (1, enc.embed_dim)
    assert enc.encode_images(one[:0]).shape == (0, enc.embed_dim)


def test_openvino_encodes_trimmed_prompts(any_model_dir: Path, any_encoder: ClipEncoder, tmp_path: Path) -> None:
    """Prompts run in OpenVINO on trimmed tokens (the converted text tower takes any length): the vectors match
    open_clip's own over the full context length, whatever a batch's lengths; torch's model is not kept."""
    import torch

    enc = _onnx(any_model_dir, tmp_path, "openvino")
    assert (enc.text_runtime, enc._model) == ("openvino", None)
    assert enc.text_precision in ("bf16", "fp32")
    texts = [*TEXTS, "", "a photo of a " + "very " * 8 + "large red circle in the middle of a dark blue background."]
    tokens = any_encoder._tokenizer(texts)
    with torch.inference_mode():
        want = any_encoder._model.encode_text(tokens, normalize=True).float().numpy()
    for batch in (texts, texts[:2], texts[3:4], texts[-1:]):
        assert _min_cosine(enc.encode_texts(batch), want[[texts.index(t) for t in batch]]) >= MIN_COSINE


def test_openvino_text_falls_back_to_f32_then_torch(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A text tower whose probe disagrees with torch is not used: bf16 gives way to f32, and f32 (after converting
    again once) to torch; the image tower stays in OpenVINO."""
    real = encoder_module._text_probe_cosine
    calls: list[float] = []

    def first_fails(text, model, tokenizer):  # type: ignore[no-untyped-def]
        calls.append(real(text, model, tokenizer))
        return 0.5 if len(calls) == 1 else calls[-1]

    monkeypatch.setattr(encoder_module, "_openvino_precision", lambda core: "bf16")
    monkeypatch.setattr(encoder_module, "_text_probe_cosine", first_fails)
    enc = _onnx(tiny_model_dir, tmp_path / "a", "openvino")
    assert (enc.text_runtime, enc.text_precision, len(calls)) == ("openvino", "fp32", 2)
    _assert_matches_torch(enc, encoder)

    monkeypatch.setattr(encoder_module, "_text_probe_cosine", lambda text, model, tokenizer: 0.5)
    xml, _, _ = encoder_module.trimmed_text_paths(tmp_path / "b", encoder.encoder_id)
    enc = _onnx(tiny_model_dir, tmp_path / "b", "openvino")
    assert (enc.runtime, enc.text_runtime, enc.text_precision) == ("openvino", "torch", "fp32")
    assert enc._model is not None and xml.exists()
    _assert_matches_torch(enc, encoder)


def test_openvino_text_that_cannot_convert_stays_in_torch(tiny_model_dir: Path, encoder: ClipEncoder,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object) -> None:
        raise RuntimeError("no converter for this tower")

    monkeypatch.setattr(encoder_module, "_convert_trimmed_text", fails)
    enc = _onnx(tiny_model_dir, tmp_path, "openvino")
    assert (enc.runtime, enc.text_runtime) == ("openvino", "torch")
    _assert_matches_torch(enc, encoder)


def test_corrupt_openvino_text_tower_is_rebuilt_not_used(tiny_model_dir: Path, encoder: ClipEncoder,
                                                         tmp_path: Path) -> None:
    _onnx(tiny_model_dir, tmp_path, "openvino")
    xml, weights, manifest = encoder_module.trimmed_text_paths(tmp_path, encoder.encoder_id)
    stamps = [p.stat().st_mtime_ns for p in (xml, weights, manifest)]
    _onnx(tiny_model_dir, tmp_path, "openvino")
    assert [p.stat().st_mtime_ns for p in (xml, weights, manifest)] == stamps  # valid: reused
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    weights.write_bytes(bytes(data))
    enc = _onnx(tiny_model_dir, tmp_path, "openvino")
    assert weights.read_bytes() != bytes(data) and enc.text_runtime == "openvino"
    assert json.loads(manifest.read_text())["sha256"][weights.name] == file_digest(weights)
    _assert_matches_torch(enc, encoder)


def test_openvino_f32_where_the_cpu_has_no_bf16(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module, "_openvino_precision", lambda core: "f32")
    enc = _onnx(tiny_model_dir, tmp_path, "openvino")
    assert (enc.runtime, enc.precision, enc.text_precision) == ("openvino", "fp32", "fp32")
    _assert_matches_torch(enc, encoder)


def test_openvino_text_tower_where_prompts_cannot_be_trimmed(tiny_model_dir: Path, encoder: ClipEncoder,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text towers that cannot take trimmed tokens (Hugging Face ones) run in OpenVINO too, probed like the images."""
    monkeypatch.setattr(encoder_module, "_trims_text", lambda model: False)
    enc = _onnx(tiny_model_dir, tmp_path, "openvino")
    assert enc._model is None and enc._towers is not None and enc._towers.has_text
    _assert_matches_torch(enc, encoder)


def _zero_shot(enc: ClipEncoder, images: np.ndarray, classes: list[str]) -> np.ndarray:
    """(N,) top-1 class indices, with prompt ensembles of templates the test models never saw in training."""
    vecs = np.stack([enc.encode_texts([t.format(c) for t in tinyclip.HELD_OUT_TEMPLATES]).mean(axis=0)
                     for c in classes])
    return np.argmax(enc.encode_images(images) @ vecs.T, axis=1)


def test_openvino_keeps_zero_shot_answers(any_model_dir: Path, any_encoder: ClipEncoder, tmp_path: Path) -> None:
    """The accuracy gate of a lower-precision runtime: top-1 agreement with torch fp32 ≥ 99 % and held-out accuracy
    within 1 point, on 512 single-object images of the 24 colour-shape classes."""
    rng = np.random.default_rng(11)
    size = any_encoder.image_size
    drawn = [synthetic.random_object_image(rng, size, background_rate=0.0) for _ in range(512)]
    images = np.stack([np.asarray(img.convert("RGB")) for img, _, _ in drawn]).astype(np.uint8)
    classes = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
    truth = np.array([classes.index(f"{c} {s}") for _, c, s in drawn])
    want = _zero_shot(any_encoder, images, classes)
    got = _zero_shot(_onnx(any_model_dir, tmp_path, "openvino"), images, classes)
    agreement = float(np.mean(got == want))
    accuracy = (float(np.mean(got == truth)), float(np.mean(want == truth)))
    assert agreement >= 0.99 and abs(accuracy[0] - accuracy[1]) <= 0.01, (agreement, accuracy)


def test_trimmed_prompts_match_full_context(any_encoder: ClipEncoder) -> None:
    """The torch text path cuts the padding after a batch's longest prompt: the vectors are open_clip's own, over the
    full context length, whatever the batch's lengths (one word, an empty prompt, a long one)."""
    import open_clip
    import torch

    model = any_encoder._model
    texts = [*TEXTS, "", "a photo of a " + "very " * 8 + "large red circle in the middle of a dark blue background."]
    tokens = any_encoder._tokenizer(texts)
    with torch.inference_mode():
        want = model.encode_text(tokens, normalize=True).float().numpy()
    assert type(model) is open_clip.CLIP  # the test models are the kind the trimming applies to
    assert int(tokens[:2].argmax(dim=-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    for batch in (texts, texts[:2], texts[3:4]):
        got = any_encoder.encode_texts(batch)
        assert _min_cosine(got, want[[texts.index(t) for t in batch]]) >= 0.99999


def _export_files(cache: Path, encoder_id: str) -> tuple[Path, Path, Path]:
    return (cache / f"{encoder_id}-image.onnx", cache / f"{encoder_id}-text.onnx",
            cache / f"{encoder_id}-manifest.json")


def test_export_is_reused_when_valid(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path) -> None:
    _onnx(tiny_model_dir, tmp_path)
    files = _export_files(tmp_path, encoder.encoder_id)
    stamps = [p.stat().st_mtime_ns for p in files]
    _onnx(tiny_model_dir, tmp_path)
    assert [p.stat().st_mtime_ns for p in files] == stamps


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_corrupt_export_is_rebuilt_not_used(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path,
                                            runtime: Runtime) -> None:
    _onnx(tiny_model_dir, tmp_path, runtime)
    image, text, manifest = _export_files(tmp_path, encoder.encoder_id)
    # Flip bytes in the middle of the weights: the file still has its length, and may still parse.
    data = bytearray(image.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    image.write_bytes(bytes(data))
    enc = _onnx(tiny_model_dir, tmp_path, runtime)
    assert image.read_bytes() != bytes(data) and enc.runtime == runtime
    _assert_matches_torch(enc, encoder)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_stale_export_is_rebuilt(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path, runtime: Runtime) -> None:
    _onnx(tiny_model_dir, tmp_path, runtime)
    _, _, manifest = _export_files(tmp_path, encoder.encoder_id)
    recorded = json.loads(manifest.read_text())
    stale = {**recorded, "identity": {**recorded["identity"], "format": 0, "torch": "0.0"}}
    manifest.write_text(json.dumps(stale))
    enc = _onnx(tiny_model_dir, tmp_path, runtime)
    assert json.loads(manifest.read_text())["identity"] == recorded["identity"]
    _assert_matches_torch(enc, encoder)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_unloadable_export_is_rebuilt(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path,
                                      runtime: Runtime) -> None:
    """Bytes that are no ONNX model, with a manifest that agrees with them: the runtime's load error rebuilds."""
    _onnx(tiny_model_dir, tmp_path, runtime)
    image, _, manifest = _export_files(tmp_path, encoder.encoder_id)
    image.write_bytes(b"not an onnx model")
    recorded = json.loads(manifest.read_text())
    recorded["sha256"][image.name] = file_digest(image)
    manifest.write_text(json.dumps(recorded))
    enc = _onnx(tiny_model_dir, tmp_path, runtime)
    assert image.read_bytes() != b"not an onnx model"
    _assert_matches_torch(enc, encoder)


def test_export_without_manifest_is_rebuilt(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path) -> None:
    """An export interrupted before its manifest was written (the manifest comes last) is never trusted."""
    _onnx(tiny_model_dir, tmp_path)
    image, _, manifest = _export_files(tmp_path, encoder.encoder_id)
    manifest.unlink()
    stamp = image.stat().st_mtime_ns
    enc = _onnx(tiny_model_dir, tmp_path)
    assert manifest.exists() and image.stat().st_mtime_ns != stamp
    _assert_matches_torch(enc, encoder)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_consistent_but_wrong_export_is_rebuilt(tiny_model_dir: Path, plain_model_dir: Path, encoder: ClipEncoder,
                                                tmp_path: Path, runtime: Runtime) -> None:
    """Another model's towers under this encoder id, with a manifest that agrees with them: the probe against torch
    catches what the digests cannot."""
    other = _onnx(plain_model_dir, tmp_path / "other")
    own = _export_files(tmp_path, encoder.encoder_id)
    foreign = _export_files(tmp_path / "other", other.encoder_id)
    for src, dst in zip(foreign[:2], own[:2]):
        dst.write_bytes(src.read_bytes())
    recorded = json.loads(foreign[2].read_text())
    recorded["identity"]["encoder_id"] = encoder.encoder_id
    recorded["sha256"] = {own[i].name: recorded["sha256"][foreign[i].name] for i in range(2)}
    own[2].write_text(json.dumps(recorded))
    enc = _onnx(tiny_model_dir, tmp_path, runtime)
    assert own[0].read_bytes() != foreign[0].read_bytes()
    _assert_matches_torch(enc, encoder)


@pytest.mark.parametrize(("runtime", "device", "expected"), [
    ("auto", "cuda", "torch"),  # ONNX Runtime's CUDA provider is not used
    ("torch", "cpu", "torch"),
    ("onnx", "cpu", "onnx"),
    ("openvino", "cpu", "openvino"),
])
def test_resolve_runtime(runtime: str, device: str, expected: str) -> None:
    assert resolve_runtime(runtime, device) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("cpu_precision", "expected"), [("bf16", "openvino"), ("f32", "torch")])
def test_auto_runtime_is_openvino_only_where_the_cpu_has_bf16(monkeypatch: pytest.MonkeyPatch, cpu_precision: str,
                                                              expected: str) -> None:
    # bench/bench_runtime.py: OpenVINO bf16 2.2-3.5x torch; no fp32 runtime gains enough to pay for an export.
    monkeypatch.setattr(encoder_module, "_openvino_precision", lambda core: cpu_precision)
    assert resolve_runtime("auto", "cpu") == expected


def test_auto_runtime_falls_back_to_torch_where_its_pick_cannot_serve(
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path) -> None:
    """A bf16 CPU whose OpenVINO vectors miss the probe: `auto` serves in torch; `openvino` asked for by name is
    refused as before."""
    monkeypatch.setattr(encoder_module, "_openvino_precision", lambda core: "bf16")

    def refuse(*args: object, **kwargs: object) -> None:
        raise SettingsError("the ONNX export of this model disagrees with torch in openvino (cosine 0.99980 < 0.9999)")

    monkeypatch.setattr(encoder_module, "onnx_towers", refuse)
    enc = load_encoder(f"local-dir:{tiny_model_dir}", None, "cpu", runtime="auto", cache_dir=tmp_path)
    assert enc.runtime == "torch"
    _assert_matches_torch(enc, encoder)
    with pytest.raises(SettingsError, match="disagrees with torch"):
        load_encoder(f"local-dir:{tiny_model_dir}", None, "cpu", runtime="openvino", cache_dir=tmp_path)
    assert load_encoder(f"local-dir:{tiny_model_dir}", None, "cpu", runtime="auto").runtime == "torch"


def test_auto_runtime_reads_this_cpu() -> None:
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert resolve_runtime("auto", "cpu") == ("openvino" if bf16 else "torch")


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_cpu_runtime_on_cuda_is_a_settings_error(runtime: Runtime) -> None:
    with pytest.raises(SettingsError, match=f"CLIPLABEL_RUNTIME={runtime}"):
        resolve_runtime(runtime, "cuda")


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_exported_runtime_without_cache_dir_is_a_settings_error(tiny_model_dir: Path, runtime: Runtime) -> None:
    with pytest.raises(SettingsError, match="cache directory"):
        load_encoder(f"local-dir:{tiny_model_dir}", None, "cpu", runtime=runtime)


def test_onnx_encodes_jpegs_like_torch(tiny_model_dir: Path, encoder: ClipEncoder, tmp_path: Path) -> None:
    """The device-decode path (JPEG bytes decoded and resized by torchvision) feeds the ONNX image tower too."""
    enc = _onnx(tiny_model_dir, tmp_path)
    rng = np.random.default_rng(3)
    blobs = [synthetic.encode_jpeg(synthetic.scene(rng, 96, 80)[0]) for _ in range(3)]
    assert _min_cosine(enc.encode_jpegs(blobs), encoder.encode_jpegs(blobs)) >= MIN_COSINE
