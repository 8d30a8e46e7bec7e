"""Review the uncertain first and search, against a real Label Studio 1.23.2 and real `cliplabel serve`.

A bulk job pre-labels the project; `POST /review` (and `cliplabel review`) switches the project to uncertainty
sampling over the current version, sets every stored prediction's cluster and neighbours and makes a Data Manager
view. Then Label Studio itself serves the least certain task first (`GET /api/projects/{id}/next`), then the least
certain of a cluster the annotator has not solved yet; the view lists the unlabelled tasks lowest score first; and a
text search (HTTP and CLI) returns the right tasks first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import synthetic
from tests.e2e import labelstudio
from tests.e2e.cliplabel_procs import ROOT, _label_of, _upload, backend_env, start_backend, stop_all, wait_final
from tests.e2e.labelstudio import StepError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SHAPES = ("Circle", "Square", "Triangle", "Star")
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{s}"/>' for s in SHAPES) + "</Choices></View>")
N_TASKS = 48
TITLE = "Review: least certain first"


def _images(n: int) -> list[tuple[str, bytes]]:
    """Shapes of every colour and size: the small, low-contrast ones get lower scores than the clear ones."""
    rng = np.random.default_rng(23)
    out = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        img = synthetic.object_image(rng, str(rng.choice(list(synthetic.COLOURS))), shape.lower(), 64)
        out.append((f"{shape}_{i}.png", synthetic.encode_png(img)))
    return out


def test_uncertain_first_views_and_search(ls_ready, tiny_model_dir, tmp_path: Path) -> None:
    ls = labelstudio.start(tmp_path)
    extra = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": labelstudio.TOKEN}
    url, procs = start_backend(tmp_path, tiny_model_dir, None, **extra)
    try:
        project = ls.api("POST", "/api/projects", "1 create project",
                         json={"title": "review", "label_config": CONFIG})["id"]
        tasks = _upload(ls, project, _images(N_TASKS), "1 upload")
        truth = {t["id"]: _label_of(t) for t in tasks}
        ls.api("POST", "/api/ml", "1 register backend", json={"url": url, "project": project, "title": "cliplabel",
                                                               "is_interactive": False})

        # 2. a bulk job stores the predictions with one request per chunk: Label Studio's bulk import keeps result,
        # score and model version only (it would drop a cluster), so every prediction starts without one
        job = requests.post(f"{url}/jobs", json={"project": project, "chunk_size": 16}, timeout=10).json()
        final = wait_final(url, f"/jobs/{job['job_id']}", "2 bulk job")
        version = final["model_version"]
        preds = [p for p in ls.api("GET", f"/api/predictions?project={project}", "2 predictions")
                 if p["model_version"] == version]
        if len(preds) != N_TASKS or any(p.get("cluster") is not None for p in preds):
            raise StepError(f"2 bulk job: {len(preds)} predictions; clusters {[p.get('cluster') for p in preds]}")

        # 3. review: sampling, every prediction placed, one view (a second run refreshes it, never adds one)
        started = time.monotonic()
        resp = requests.post(f"{url}/review", json={"project": project, "title": TITLE}, timeout=120)
        review_s = time.monotonic() - started
        if resp.status_code != 200:
            raise StepError(f"3 review: {resp.status_code} {resp.text}")
        setup = resp.json()
        run = subprocess.run([sys.executable, "-m", "cliplabel.cli", "review", "--project", str(project)], cwd=ROOT,
                             env=backend_env(tmp_path, tiny_model_dir, None, **extra), capture_output=True,
                             text=True, timeout=300)
        if run.returncode != 0 or f"view {setup['view_id']} " not in run.stdout:
            raise StepError(f"3 review CLI: exit {run.returncode}: {run.stdout} {run.stderr[-2000:]}")
        settings = ls.api("GET", f"/api/projects/{project}", "3 project")
        views = [v for v in ls.api("GET", f"/api/dm/views?project={project}", "3 views")
                 if v["data"].get("title") == TITLE]
        preds = {p["task"]: p for p in ls.api("GET", f"/api/predictions?project={project}", "3 predictions")
                 if p["model_version"] == version}
        clusters = {t: p.get("cluster") for t, p in preds.items()}
        neighbours_ok = all(len(p.get("neighbors") or []) == 5 and set(p["neighbors"]) <= set(truth) - {t}
                            for t, p in preds.items())
        if (settings["sampling"] != "Uncertainty sampling" or settings["model_version"] != version
                or setup["predictions_updated"] != N_TASKS or [v["id"] for v in views] != [setup["view_id"]]
                or not all(isinstance(c, int) for c in clusters.values()) or len(set(clusters.values())) < 2
                or not neighbours_ok):
            raise StepError(f"3 review: answer {setup}; project sampling {settings['sampling']!r} version "
                            f"{settings['model_version']!r}; views {views}; clusters {clusters}")
        print(f"review in {review_s:.1f} s: {setup}; CLI: {run.stdout.strip()}")

        # 4. the view: the unlabelled tasks, lowest score first
        listed = ls.api("GET", f"/api/tasks?view={setup['view_id']}&project={project}&page_size=100&fields=all",
                        "4 view tasks")["tasks"]
        order = [t["id"] for t in listed]
        by_score = sorted(preds, key=lambda t: (preds[t]["score"], t))
        scores = [preds[t]["score"] for t in order]
        if set(order) != set(truth) or scores != sorted(scores):
            raise StepError(f"4 view: tasks {order} with scores {scores}")

        # 5. Label Studio's own stream: the least certain task first ...
        first = ls.api("GET", f"/api/projects/{project}/next", "5 next")["id"]
        lowest = preds[by_score[0]]["score"]
        if preds[first]["score"] > lowest + 1e-6:
            raise StepError(f"5 next: task {first} (score {preds[first]['score']}) served, the lowest is {lowest}")
        ls.api("POST", f"/api/tasks/{first}/annotations", "5 annotate", json={"result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [truth[first]]}}]})
        # ... then the least certain task of a cluster the annotator has not solved
        second = ls.api("GET", f"/api/projects/{project}/next", "5 next again")["id"]
        others = [t for t in by_score if clusters[t] != clusters[first]]
        if preds[second]["score"] > preds[others[0]]["score"] + 1e-6 or clusters[second] == clusters[first]:
            raise StepError(f"5 next again: task {second} (cluster {clusters[second]}, score "
                            f"{preds[second]['score']}) served; expected {others[0]} (cluster {clusters[others[0]]},"
                            f" score {preds[others[0]]['score']}); first was cluster {clusters[first]}")
        rank = by_score.index(second)
        print(f"next task: {first} (lowest score {lowest:.3f}), then {second} (score rank {rank + 1}/{N_TASKS}, "
              f"another cluster)")

        # 6. text search: every circle before anything else, over HTTP and from the CLI
        circles = {t for t, label in truth.items() if label == "Circle"}
        body = requests.get(f"{url}/search", params={"project": project, "q": "circle", "k": len(circles)},
                            timeout=60).json()
        found = [r["task"] for r in body["results"]]
        if set(found) != circles or body["indexed"] != N_TASKS:
            raise StepError(f"6 search: {found} ({[truth[t] for t in found]}); {body['indexed']} indexed")
        cli = subprocess.run([sys.executable, "-m", "cliplabel.cli", "search", "--project", str(project), "--text",
                              "circle", "-k", "3"], cwd=ROOT, env=backend_env(tmp_path, tiny_model_dir, None, **extra),
                             capture_output=True, text=True, timeout=300)
        printed = [int(line.split()[2]) for line in cli.stdout.splitlines() if line.strip()[:1].isdigit()]
        if cli.returncode != 0 or printed != found[:3]:
            raise StepError(f"6 search CLI: exit {cli.returncode}, printed {printed}, HTTP {found[:3]}: "
                            f"{cli.stdout} {cli.stderr[-1500:]}")
        print(f"search 'circle': the {len(circles)} circles first; CLI top 3 {printed}")
    finally:
        try:
            stop_all(procs, tmp_path)
        finally:
            ls.stop()
