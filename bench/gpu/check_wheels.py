"""Checks the wheels carried to the device machine: they install on its Python 3.12 (x86_64 manylinux), fit the
carry limit, and with the packages that machine has they cover every module the GPU suite imports.

    python bench/gpu/check_wheels.py bench/gpu/wheels

The import chain is followed in this interpreter (which has every package): each top-level module it loads must
belong to a distribution the device image has (its package list, as KINDS.md of the device tool records it) or to a
carried wheel. Exits 1 and names what is missing otherwise.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MIB = 60
# What the device's pip accepts (glibc 2.28 or newer); pip matches each tag exactly, so each is named.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
# The device image's Python packages (nvidia-h200, read 2026-11-17), those the suite's import chain can touch.
DEVICE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler einops filelock fonttools fsspec h11 hf-xet httpcore
httpx huggingface-hub idna jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath
networkx numpy onnx onnxruntime opencv-python-headless packaging pandas pillow protobuf psutil pygments pyparsing
python-dateutil pyyaml regex requests rich safetensors scikit-learn scipy setuptools six sortedcontainers sympy
threadpoolctl timm tokenizers torch torchvision tqdm triton typing-extensions urllib3 uvloop xxhash zipp""".split())
# Distributions that exist here only because this machine's versions differ (the device has other versions of their
# importers, or they are imported only if present): each named with why.
NOT_NEEDED = {
    "opencv-contrib-python-headless": "the device has opencv-python-headless; the GPU run uses no selective search",
    "cryptography": "redis imports it only if installed (TLS/metrics helpers)",
    "httpx2": "huggingface-hub 2.x here; the device has huggingface-hub 1.x with httpx",
    "httpcore2": "as httpx2",
    "trio": "as httpx2",
    "outcome": "as httpx2",
    "truststore": "as httpx2",
    "orjson": "imported by this machine's newer packages only if installed",
    "narwhals": "this machine's scikit-learn; the device has its own scikit-learn",
    "cuda-bindings": "part of the device's torch",
    "cuda-pathfinder": "part of the device's torch",
    "nvidia-ml-py": "part of the device's torch",
    "cliplabel": "the repository itself, on PYTHONPATH",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    wheels = sorted(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench/gpu/wheels").glob("*.whl"))
    names = [norm(w.name.split("-")[0]) for w in wheels]
    problems = [f"two versions of {n}" for n in set(names) if names.count(n) > 1]
    mib = sum(w.stat().st_size for w in wheels) / 2**20
    if mib > MAX_MIB:
        problems.append(f"{mib:.1f} MiB of wheels > {MAX_MIB} MiB")
    with tempfile.TemporaryDirectory() as tmp:  # pip's own check that each wheel installs on the device's Python
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", tmp,
                               "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                               *(a for tag in PLATFORMS for a in ("--platform", tag)), *map(str, wheels)],
                              capture_output=True, text=True)
        if done.returncode:
            problems.append(f"pip cannot install them for cp312 on {PLATFORMS[0]}: {done.stderr.strip()[-400:]}")
    code = ("import sys; before = set(sys.modules); import bench.suite, bench.bench_rescore, cliplabel.container, "
            "cliplabel.api.app; print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    tops = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, env={"PYTHONPATH": f"{ROOT / 'backend'}:{ROOT}", "PATH": "/usr/bin:/bin"}
                          ).stdout.split()
    dists = md.packages_distributions()
    carried = set(names)
    for top in tops:
        for dist in {norm(d) for d in dists.get(top, [])}:
            if dist not in DEVICE and dist not in carried and dist not in NOT_NEEDED:
                problems.append(f"module {top} (distribution {dist}) is neither on the device nor carried")
    print(f"{len(wheels)} wheels, {mib:.1f} MiB; {len(tops)} top-level modules imported by the GPU suite's chain")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
