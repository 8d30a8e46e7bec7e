#!/bin/bash
# The GPU suite on the device machine (Python 3.12 with torch, torchvision, onnxruntime, opencv-python-headless, no
# package registry). Installs the pure-Python wheels it lacks from bench/gpu/wheels (made by bench/gpu/wheels.sh,
# carried with the call), then records ViT-B-32 and ViT-L-14 end to end from JPEG bytes (nvjpeg and PIL decode), the
# raw encoder, 16 concurrent clients, interactive latency, re-scoring 100,000 cached tasks (embedded store: no Redis
# there) and retraining. Sized to finish in about 6 minutes on one H200; the table goes to stdout and $OUT.
#
#   bash bench/gpu/run.sh             # on the device machine (the `run` tool: carry bench/gpu/wheels)
#   bash bench/gpu/run.sh --dry-run   # here, on the CPU: the same steps with the tiny CLIP and small sizes
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-bench/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--dry-run" ]; then
    # Here every package is installed already; check that the carried set covers what the device lacks.
    python bench/gpu/check_wheels.py bench/gpu/wheels
    export PYTHONPATH="$PWD/backend:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python bench/suite.py --device cpu --models tiny --runtimes torch,onnx --images 32 --scenes 4 --repeats 1 \
        --min-seconds 0.2 --selective-search off --rescore-tasks 2000 --rescore-stores embedded \
        --retrain-examples 1000 --out "$out/suite-gpu-dry.json"
    exit 0
fi
site=/tmp/cliplabel-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    bench/gpu/wheels/*.whl
export PYTHONPATH="$site:$PWD/backend:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, torchvision, open_clip, fastapi, uvicorn, redis, rq, onnxruntime, cliplabel.container
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchvision', torchvision.__version__,
      'open_clip', open_clip.__version__, 'fastapi', fastapi.__version__, 'onnxruntime', onnxruntime.__version__)"
# Boxes run without selective search (opencv-contrib is not there); images are read through Label Studio's
# local-files storage, so per-image HTTP in one Python process does not cap the GPU.
timeout 420 python3 bench/suite.py --device cuda --models ViT-B-32,ViT-L-14 --runtimes torch --source local \
    --images 512 --scenes 32 --batch 256 --repeats 3 --selective-search off --rescore-stores embedded \
    --retrain-examples 1000,10000 --out "$out/suite-gpu.json" 2>&1 | tee "$out/suite-gpu.log"
