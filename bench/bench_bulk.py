"""Bulk pre-labelling against a real Label Studio: tasks/s of a whole-project job next to the raw encoder.

    python bench/bench_bulk.py                          # tiny CLIP (300 tasks) and ViT-B-32 random weights (96)
    python bench/bench_bulk.py --models tiny --tasks 1000 --chunk 128

Uses the end-to-end harness's Label Studio 1.23.2 (installed once under ~/.cache/cliplabel). Uploads 640×480 JPEGs
as tasks of a Choices project (24 classes), then runs the same job `cliplabel prelabel` and `POST /jobs` run: list
the tasks, predict them chunk by chunk, store each chunk's predictions with one Label Studio request. Reports tasks/s
end to end, the split between predicting and writing, and the ratio to the raw encoder on the same images, measured
in the same run. Prints a table and writes bench/out/bulk.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import CHOICES, jpegs, raw  # noqa: E402
from cliplabel.container import build_services  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.labelstudio import label_config  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from tests import tinyclip  # noqa: E402
from tests.e2e import labelstudio  # noqa: E402


def run(name: str, n_tasks: int, chunk: int, tmp: Path) -> dict[str, object]:
    model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
    encoder = load_encoder(model, None, "cpu")
    blobs = jpegs(n_tasks, 640, 480, seed=3)
    raw_img_s = raw(encoder, blobs[:min(n_tasks, 128)], 32, 8)["raw_img_s"]
    ls = labelstudio.start(tmp / name)
    try:
        project = ls.api("POST", "/api/projects", "create project", json={"title": "bulk bench",
                                                                           "label_config": CHOICES})["id"]
        for start in range(0, n_tasks, 100):
            files = {f"f{i}": (f"i{i}.jpg", io.BytesIO(blobs[i]), "image/jpeg")
                     for i in range(start, min(start + 100, n_tasks))}
            ls.api("POST", f"/api/projects/{project}/import", "upload", files=files)
        settings = Settings(model="bench", data_dir=tmp / name / "store", batch_size=32, fetch_workers=8,
                            label_studio_url=ls.url, label_studio_api_key=labelstudio.TOKEN)
        services = build_services(settings, encoder=encoder, worker=True)
        try:
            # The prompt ensembles are encoded once per label set and then cached in the store: timed apart.
            t0 = time.perf_counter()
            for control in label_config.parse_label_config(CHOICES).controls:
                services.class_vectors.zero_shot(control)
            prompts_s = time.perf_counter() - t0
            spec = services.bulk.create(str(project), "prelabel", chunk)
            started = time.perf_counter()
            status = services.bulk.run_all(spec.job_id)
            seconds = time.perf_counter() - started
        finally:
            services.close(close_store=True)
        stored = ls.api("GET", f"/api/predictions?project={project}", "count predictions")
        if len(stored) != n_tasks or status.predicted != n_tasks:
            raise RuntimeError(f"{len(stored)} predictions stored, status {status}")
    finally:
        ls.stop()
    tasks_s = n_tasks / seconds
    return {"model": name, "tasks": n_tasks, "chunk": chunk, "raw_img_s": round(raw_img_s, 1),
            "bulk_tasks_s": round(tasks_s, 1), "ratio": round(tasks_s / raw_img_s, 3),
            "predict_s": status.predict_s, "label_studio_s": status.label_studio_s, "total_s": round(seconds, 1),
            "prompt_ensembles_once_s": round(prompts_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,ViT-B-32")
    parser.add_argument("--tasks", type=int, default=300, help="tasks for the tiny model")
    parser.add_argument("--big-tasks", type=int, default=96, help="tasks for other models (≈20 img/s on 2 cores)")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "bulk.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(run(name, args.tasks if name == "tiny" else args.big_tasks, args.chunk, Path(tmp)))
    header = list(rows[0])
    print("# bulk pre-labelling against Label Studio 1.23.2, 640×480 JPEG, Choices (24 classes)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
