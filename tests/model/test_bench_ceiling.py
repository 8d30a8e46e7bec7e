"""The fp32 ceiling of bench/bench_runtime.py: its FLOP count of a ViT's image tower is the arithmetic the tower
does (RESULTS.md argues from it that 2× torch in fp32 is out of reach on a CPU), and its matmul rate is a rate."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import open_clip
import pytest


@pytest.fixture(scope="module")
def bench_runtime() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_runtime.py"
    spec = importlib.util.spec_from_file_location("bench_runtime", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_runtime", module)
    spec.loader.exec_module(module)
    return module


def _vit_flops(width: int, layers: int, patch: int, image_size: int, mlp: int, out_dim: int) -> float:
    """FLOPs per image of an open_clip ViT's image tower (2 per multiply-add), from its shapes."""
    grid = image_size // patch
    tokens = grid * grid + 1
    patches = 2 * grid * grid * 3 * patch * patch * width
    per_layer = (2 * tokens * width * 3 * width  # q, k, v
                 + 2 * tokens * width * width  # attention output projection
                 + 2 * 2 * tokens * tokens * width  # scores and their weighted sum
                 + 2 * 2 * tokens * width * mlp)  # MLP up and down
    return patches + layers * per_layer + 2 * width * out_dim


def test_tower_flops_count_the_attention_projections(bench_runtime: ModuleType) -> None:
    model = open_clip.create_model("ViT-B-32").eval()
    want = _vit_flops(width=768, layers=12, patch=32, image_size=224, mlp=3072, out_dim=512) / 1e9
    got = bench_runtime.tower_gflop_per_image(model.visual, 224)
    # Within 2 %: torch's counter does not see the attention scores (1 % of this tower).
    assert want * 0.98 <= got <= want, (got, want)


def test_gemm_rate_is_positive_and_names_its_shape(bench_runtime: ModuleType) -> None:
    rate, shape = bench_runtime.gemm_gflops(None, batch=1, threads=1, repeats=1)
    assert rate > 1.0 and shape == "2048×2048 · 2048×2048"
