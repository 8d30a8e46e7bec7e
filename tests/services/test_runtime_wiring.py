"""CLIPLABEL_RUNTIME reaches the encoder: the services built from settings run ONNX Runtime or OpenVINO, exports in
the data dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliplabel.container import build_services
from cliplabel.core.errors import SettingsError
from cliplabel.core.settings import Settings
from cliplabel.labelstudio import label_config
from cliplabel.model.batcher import MicroBatcher
from cliplabel.vision import prompts
from tests import synthetic

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c} {s}"/>' for c in synthetic.COLOURS for s in synthetic.SHAPES)
          + "</Choices></View>")


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_exported_runtime_from_settings(tiny_model_dir: Path, encoder, tmp_path: Path, runtime: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env({"CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_PRETRAINED": "",
                                  "CLIPLABEL_DEVICE": "cpu", "CLIPLABEL_RUNTIME": runtime,
                                  "CLIPLABEL_DATA_DIR": str(tmp_path / "data")})
    services = build_services(settings, worker=True)
    try:
        enc = services.encoder.encoder if isinstance(services.encoder, MicroBatcher) else services.encoder
        assert enc.runtime == runtime  # type: ignore[attr-defined]
        # OpenVINO adds its own conversion of the text tower, which takes trimmed prompts.
        trimmed = ["text-trimmed-manifest.json", "text-trimmed.bin", "text-trimmed.xml"] if runtime == "openvino" else []
        assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "data" / "onnx").glob("*")) == sorted([
            "image.onnx", "manifest.json", "text.onnx", *trimmed])
        # The same zero-shot class vectors as the torch encoder's (both served from one cache key).
        control = label_config.parse_label_config(CONFIG).of_kind("choices")[0]
        vecs = services.class_vectors.zero_shot(control)
        ensembles = services.class_vectors.ensembles(control)
        texts = sorted({p for e in ensembles for p in e.prompts})
        want = prompts.class_vectors(ensembles, dict(zip(texts, encoder.encode_texts(texts))))
        assert float(np.min(np.sum(vecs * want, axis=1))) >= 0.9999
    finally:
        services.close(close_store=True)


def test_unknown_runtime_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="CLIPLABEL_RUNTIME"):
        Settings.from_env({"CLIPLABEL_RUNTIME": "tensorrt"})
