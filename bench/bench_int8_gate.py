"""The issue's accuracy gate for an int8 image tower, on both tiny CLIPs: would ONNX Runtime's dynamic int8
quantisation keep zero-shot top-1 agreement with fp32 ≥ 99 % and held-out accuracy within 1 point?

    python bench/bench_int8_gate.py

The gate is `tests/model/test_runtime.py::test_openvino_keeps_zero_shot_answers`' (512 single-object images of the
24 colour-shape classes, prompt ensembles of templates the models never saw), with the image tower of the product's
ONNX export quantised by `onnxruntime.quantization.quantize_dynamic` (weights int8 per tensor or per output
channel, activations quantised per call). Prompts stay in torch fp32. A table per model and weight scheme:
agreement with fp32, accuracy in int8 and fp32, and the lowest cosine of int8 image vectors to fp32's.

The tiny CLIPs' task is easy (fp32 accuracy 0.99–1.00), so passing says little about a real CLIP's accuracy in
int8; speed is `bench/bench_runtime.py --extras int8`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.model.encoder import ClipEncoder, export_paths, load_encoder  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402

N_IMAGES = 512


def class_vectors(enc: ClipEncoder, classes: list[str]) -> np.ndarray:
    return np.stack([enc.encode_texts([t.format(c) for t in tinyclip.HELD_OUT_TEMPLATES]).mean(axis=0)
                     for c in classes])


def main() -> int:
    print(f"{N_IMAGES} single-object images, 24 classes, held-out prompt templates; prompts in torch fp32")
    print("| model | int8 weights | top-1 agreement with fp32 | accuracy int8 | accuracy fp32 | cosine to fp32 (min) "
          "| gate (≥ 99 %, ≤ 1 point) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for variant in tinyclip.VARIANTS:
        model = f"local-dir:{tinyclip.ensure_model(variant=variant)}"
        enc = load_encoder(model, None, "cpu", runtime="torch")
        rng = np.random.default_rng(11)
        drawn = [synthetic.random_object_image(rng, enc.image_size, background_rate=0.0) for _ in range(N_IMAGES)]
        images = np.stack([np.asarray(img.convert("RGB")) for img, _, _ in drawn]).astype(np.uint8)
        classes = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
        truth = np.array([classes.index(f"{c} {s}") for _, c, s in drawn])
        vectors = class_vectors(enc, classes)
        fp32 = enc.encode_images(images)
        want = np.argmax(fp32 @ vectors.T, axis=1)
        with tempfile.TemporaryDirectory() as tmp:
            exported = load_encoder(model, None, "cpu", runtime="onnx", cache_dir=Path(tmp))
            image_path = export_paths(Path(tmp), exported.encoder_id)[0]
            for per_channel in (False, True):
                quantised = Path(tmp) / f"image-int8-{per_channel}.onnx"
                quantize_dynamic(str(image_path), str(quantised), weight_type=QuantType.QInt8, per_channel=per_channel)
                session = ort.InferenceSession(str(quantised), providers=["CPUExecutionProvider"])
                int8 = np.concatenate([session.run(None, {"images_u8": images[i:i + 64]})[0]
                                       for i in range(0, N_IMAGES, 64)])
                got = np.argmax(int8 @ vectors.T, axis=1)
                agreement = float(np.mean(got == want))
                accuracy = (float(np.mean(got == truth)), float(np.mean(want == truth)))
                cosine = float(np.min(np.sum(int8 * fp32, axis=1)))
                passed = agreement >= 0.99 and abs(accuracy[0] - accuracy[1]) <= 0.01
                print(f"| {variant} | {'per channel' if per_channel else 'per tensor'} | {agreement:.4f} | "
                      f"{accuracy[0]:.4f} | {accuracy[1]:.4f} | {cosine:.5f} | {'pass' if passed else 'FAIL'} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
