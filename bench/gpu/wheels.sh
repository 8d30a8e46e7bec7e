#!/bin/bash
# Downloads the wheels the device machine lacks into bench/gpu/wheels (git-ignored; about 6 MiB), at the versions of
# requirements.lock, for its Python 3.12 on x86_64. Then `bash bench/gpu/run.sh --dry-run` checks them.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels \
    open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
    opentelemetry-api==1.45.2 sniffio==1.3.1 uvicorn==0.55.0 redis==7.4.1 rq==3.0.0 croniter==7.0.0 \
    defusedxml==0.7.1 cleanlab==2.9.0 termcolor==3.3.0
du -sh wheels
