"""Bulk jobs through the HTTP API beside a real Label Studio: two rq workers share a job (or the embedded default runs
it), each task is predicted once, progress is visible; after a retrain the unlabelled tasks are re-scored and pushed;
the quality report.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from cliplabel.services.bulk.service import IN_FLIGHT
from tests import synthetic
from tests.e2e import labelstudio
from tests.e2e.cliplabel_procs import ROOT, _label_of, _upload, _versions, _wait_version, backend_env, start_backend, stop_all
from tests.e2e.labelstudio import StepError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SHAPES = ("Circle", "Square", "Triangle", "Star")
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{s}"/>' for s in SHAPES) + "</Choices></View>")
N_TASKS = 120


def _wait_job(url: str, job_id: str, step: str, timeout_s: float = 300) -> tuple[dict, list[dict]]:
    """Polls the job until it is done; returns its last status and every status seen."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/jobs/{job_id}", timeout=5).json()
        seen.append(status)
        if status["state"] in ("done", "failed"):
            if status["state"] == "failed":
                raise StepError(f"{step}: job failed: {status}")
            return status, seen
        time.sleep(0.1)
    raise StepError(f"{step}: job not done in {timeout_s} s: {seen[-1] if seen else None}")


@pytest.mark.parametrize("mode", ["redis", "embedded"])
def test_bulk_job_then_rescore_and_report(mode: str, ls_ready, tiny_model_dir, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    """With Redis, two rq workers share the job; on the embedded default, `cliplabel serve` runs it in a thread."""
    redis = (request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")) if mode == "redis" else None
    ls = labelstudio.start(tmp_path)
    extra = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": labelstudio.TOKEN,
             "CLIPLABEL_RESCORE_AFTER_TRAIN": "true"}
    url, procs = start_backend(tmp_path, tiny_model_dir, redis, workers=2, **extra)
    try:
        project = ls.api("POST", "/api/projects", "1 create project", json={"title": "bulk jobs",
                                                                             "label_config": CONFIG})["id"]
        rng = np.random.default_rng(3)
        images = []
        for i in range(N_TASKS):
            shape = SHAPES[i % 4]
            img = synthetic.object_image(rng, str(rng.choice(list(synthetic.COLOURS))), shape.lower(), 64)
            images.append((f"{shape}_{i}.png", synthetic.encode_png(img)))
        tasks = []
        for start in range(0, N_TASKS, 60):
            tasks = _upload(ls, project, images[start:start + 60], "1 upload", expected_total=start + 60)
        ml = ls.api("POST", "/api/ml", "1 register backend", json={"url": url, "project": project,
                                                                   "title": "cliplabel", "is_interactive": False})
        r0 = _versions(url, project)[-1]

        # 2. one bulk job over HTTP, in chunks of 8: both workers take chunks, each task is predicted once
        resp = requests.post(f"{url}/jobs", json={"project": project, "chunk_size": 8}, timeout=10)
        if resp.status_code != 202:
            raise StepError(f"2 start job: {resp.status_code} {resp.text}")
        job = resp.json()
        twice = requests.post(f"{url}/jobs", json={"project": project, "chunk_size": 8}, timeout=10).json()
        if twice["job_id"] != job["job_id"]:
            raise StepError(f"2 second click: a second job {twice['job_id']} started beside {job['job_id']}")
        final, seen = _wait_job(url, job["job_id"], "2 bulk job")
        preds = ls.api("GET", f"/api/predictions?project={project}", "2 list predictions")
        per_task = Counter(p["task"] for p in preds if p["model_version"] == r0)
        if len(per_task) != N_TASKS or set(per_task.values()) != {1}:
            raise StepError(f"2 bulk job: {len(per_task)} tasks predicted, counts {Counter(per_task.values())}")
        complete = final["predicted"] == final["done"] == final["total"] == N_TASKS
        if len(final["workers"]) != (2 if redis else 1) or not complete:
            raise StepError(f"2 bulk job: final status {final}")
        partial = [s for s in seen if s["state"] == "running" and 0 < s["done"] < N_TASKS and s["eta_s"] is not None]
        if not partial:
            raise StepError(f"2 bulk job: no progress with an ETA seen among {len(seen)} polls")
        correct = sum(p["result"][0]["value"]["choices"][0] == _label_of(t)
                      for t in tasks for p in preds if p["task"] == t["id"] and p["model_version"] == r0)
        if correct != N_TASKS:
            raise StepError(f"2 bulk job: {correct}/{N_TASKS} choices correct, expected all")
        print(f"\n[{mode}] bulk job: {N_TASKS} tasks by workers {final['workers']} at {final['rate_tasks_per_s']} tasks/s, "
              f"{correct}/{N_TASKS} correct; a poll midway: {partial[0]['done']}/{partial[0]['total']} "
              f"eta {partial[0]['eta_s']} s")

        # the same job again changes nothing: every task already holds r0
        again = requests.post(f"{url}/jobs", json={"project": project}, timeout=10).json()
        again_final, _ = _wait_job(url, again["job_id"], "2 rerun")
        if again_final["skipped"] != N_TASKS or again_final["predicted"] != 0:
            raise StepError(f"2 rerun: {again_final}")

        # 3. annotate 12 tasks, train: r1, then a re-score job pushes r1 predictions to the unlabelled tasks only
        annotated = {t["id"] for t in tasks[:12]}
        for t in tasks[:12]:
            ls.api("POST", f"/api/tasks/{t['id']}/annotations", "3 annotate",
                   json={"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                     "value": {"choices": [_label_of(t)]}}], "project": project})
        ls.api("POST", f"/api/ml/{ml['id']}/train", "3 train", json={})
        r1 = r0.replace("-r0", "-r1")
        _wait_version(url, project, r1, "3 train")
        deadline = time.monotonic() + 60
        rescore = None
        while rescore is None and time.monotonic() < deadline:
            jobs = requests.get(f"{url}/jobs", params={"project": project}, timeout=5).json()["jobs"]
            rescore = next((j for j in jobs if j["kind"] == "rescore"), None)
            time.sleep(0.3)
        if rescore is None:
            raise StepError("3 re-score: no re-score job was started after the retrain")
        rescored, _ = _wait_job(url, rescore["job_id"], "3 re-score")
        preds = ls.api("GET", f"/api/predictions?project={project}", "3 list predictions")
        with_r1 = Counter(p["task"] for p in preds if p["model_version"] == r1)
        expected = {t["id"] for t in tasks} - annotated
        if set(with_r1) != expected or set(with_r1.values()) != {1} or rescored["model_version"] != r1:
            raise StepError(f"3 re-score: {len(with_r1)} tasks with {r1} (expected the {len(expected)} unlabelled), "
                            f"status {rescored}")
        print(f"re-score after training: {rescored['predicted']} unlabelled tasks pushed with {r1} at "
              f"{rescored['rate_tasks_per_s']} tasks/s")

        # 4. the quality report: counts, acceptance, learning curve, as Markdown with PNG plots
        out = tmp_path / "report"
        env = backend_env(tmp_path, tiny_model_dir, redis, **extra)
        run = subprocess.run([sys.executable, "-m", "cliplabel.cli", "report", "--project", str(project), "--out",
                              str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise StepError(f"4 report: exit {run.returncode}: {run.stderr[-2000:]}")
        text = (out / "report.md").read_text()
        for shape in SHAPES:
            row = next((line for line in text.splitlines() if line.startswith(f"| label | {shape} |")), None)
            if row is None:
                raise StepError(f"4 report: no row for {shape} in {text[:1500]}")
            cells = [c.strip() for c in row.strip("|").split("|")]
            if int(cells[2]) < 20 or int(cells[4]) != 3 or not cells[6].endswith("%"):
                raise StepError(f"4 report: row {row}")
        for png in ("class_counts.png", "scores.png", "learning_curve.png"):
            if not (out / png).is_file() or (out / png).read_bytes()[:4] != b"\x89PNG":
                raise StepError(f"4 report: {png} missing or not a PNG")
        print(text.split("\n\n")[1])
    finally:
        try:
            stop_all(procs, tmp_path)
        finally:
            ls.stop()



def test_an_embedded_job_survives_a_killed_server_and_a_job_can_be_cancelled(ls_ready, tiny_model_dir,
                                                                               tmp_path: Path) -> None:
    ls = labelstudio.start(tmp_path)
    extra = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": labelstudio.TOKEN}
    procs: list = []
    try:
        rng = np.random.default_rng(8)

        def project_with(n: int, title: str) -> int:
            pid = ls.api("POST", "/api/projects", "1 create project", json={"title": title, "label_config": CONFIG})["id"]
            images = [(f"{SHAPES[i % 4]}_{i}.png", synthetic.encode_png(synthetic.object_image(
                rng, str(rng.choice(list(synthetic.COLOURS))), SHAPES[i % 4].lower(), 64))) for i in range(n)]
            for start in range(0, n, 60):
                _upload(ls, pid, images[start:start + 60], "1 upload", expected_total=min(start + 60, n))
            return int(pid)

        project = project_with(240, "killed")
        url, procs = start_backend(tmp_path, tiny_model_dir, None, **extra)
        job = requests.post(f"{url}/jobs", json={"project": project, "chunk_size": 8}, timeout=10).json()
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/jobs/{job['job_id']}", timeout=5).json()["done"] < 40:
            if time.monotonic() > deadline:
                raise StepError("2 kill: the job did not reach 40 tasks")
            time.sleep(0.05)
        procs[0].kill()  # SIGKILL: no shutdown, a chunk may be cut off midway
        procs[0].wait(timeout=10)
        before = len(ls.api("GET", f"/api/predictions?project={project}", "2 count"))
        url, procs = start_backend(tmp_path, tiny_model_dir, None, **extra)
        final, _ = _wait_job(url, job["job_id"], "2 resumed after a restart")
        per_task = Counter(p["task"] for p in ls.api("GET", f"/api/predictions?project={project}", "2 count"))
        if len(per_task) != 240 or set(per_task.values()) != {1} or final["done"] != 240:
            raise StepError(f"2 resume: {len(per_task)} tasks, counts {Counter(per_task.values())}, status {final}")
        print(f"\nkilled with {before} predictions stored; the restarted server finished the job: {final['predicted']} "
              f"predicted by {final['workers']}")

        # cancelling midway: once progress is seen, the job stops within the chunks in progress (the embedded runner
        # keeps IN_FLIGHT chunks going: one talks to Label Studio while the other encodes) and stays cancelled
        chunk = 4
        bound = IN_FLIGHT * chunk
        other = project_with(240, "cancelled")
        job = requests.post(f"{url}/jobs", json={"project": other, "chunk_size": chunk}, timeout=10).json()
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/jobs/{job['job_id']}", timeout=5).json()["done"] < 2 * chunk:
            if time.monotonic() > deadline:
                raise StepError("3 cancel: the job made no progress")
            time.sleep(0.02)
        cancelled = requests.delete(f"{url}/jobs/{job['job_id']}", timeout=10).json()
        at_cancel = cancelled["done"]
        time.sleep(3.0)
        status = requests.get(f"{url}/jobs/{job['job_id']}", timeout=5).json()
        stored = len(ls.api("GET", f"/api/predictions?project={other}", "3 count"))
        time.sleep(1.0)
        later = len(ls.api("GET", f"/api/predictions?project={other}", "3 count"))
        midway = 2 * chunk <= at_cancel < 240 - 2 * chunk
        if (cancelled["state"] != "cancelled" or status["state"] != "cancelled" or not midway
                or not at_cancel <= stored <= at_cancel + bound or status["done"] > at_cancel + bound
                or later != stored):
            raise StepError(f"3 cancel: cancelled at {at_cancel} done, then {stored} then {later} predictions "
                            f"stored; status {status}")
        print(f"cancelled midway at {at_cancel}/240 tasks: {stored} predictions stored (at most the {IN_FLIGHT} "
              f"chunks of {chunk} in flight, {bound} more), none after")
    finally:
        try:
            stop_all(procs, tmp_path)
        finally:
            ls.stop()
