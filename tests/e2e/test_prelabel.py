"""`cliplabel prelabel` against a real Label Studio: 300 tasks, killed midway, rerun, each task predicted once."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests import synthetic
from tests.e2e import labelstudio
from tests.e2e.labelstudio import StepError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
N_TASKS = 300


def test_prelabel_300_tasks_killed_and_resumed(ls_ready, tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ls = labelstudio.start(tmp_path)
    try:
        config = (ROOT / "label_config.xml").read_text()
        project = ls.api("POST", "/api/projects", "create project", json={"title": "bulk",
                                                                           "label_config": config})["id"]
        rng = np.random.default_rng(5)
        for start in range(0, N_TASKS, 100):
            files = {}
            for i in range(start, start + 100):
                img = synthetic.object_image(rng, str(rng.choice(list(synthetic.COLOURS))),
                                             str(rng.choice(synthetic.SHAPES)), 64)
                files[f"f{i}"] = (f"t{i}.png", io.BytesIO(synthetic.encode_png(img)), "image/png")
            ls.api("POST", f"/api/projects/{project}/import", "upload", files=files)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_"))}
        env.update({"CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_DATA_DIR": str(tmp_path / "b"),
                    "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": labelstudio.TOKEN})
        command = [sys.executable, "-m", "cliplabel.cli", "prelabel", "--project", str(project), "--batch", "32"]

        def predictions() -> list[dict]:
            return list(ls.api("GET", f"/api/predictions?project={project}", "list predictions"))

        # first run: killed once some predictions are stored
        with (tmp_path / "run1.log").open("wb") as log:
            first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while len(predictions()) < 40 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        partial = len(predictions())
        if not 0 < partial < N_TASKS:
            raise StepError(f"kill midway: {partial} predictions stored before the kill")
        # second run: finishes the rest, with a progress bar
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if second.returncode != 0:
            raise StepError(f"resume: exit {second.returncode}: {second.stderr[-2000:]}")
        if f"{N_TASKS}/{N_TASKS}" not in second.stderr:
            raise StepError(f"resume: no finished progress bar in {second.stderr[-500:]}")
        preds = predictions()
        per_task = Counter(p["task"] for p in preds)
        versions = {p["model_version"] for p in preds}
        print(f"\nprelabel: {partial} predictions before the kill; rerun: {second.stdout.strip()}")
        if len(per_task) != N_TASKS or set(per_task.values()) != {1} or len(versions) != 1:
            raise StepError(f"resume: {len(per_task)} tasks predicted, counts {Counter(per_task.values())}, "
                            f"versions {versions}")
    finally:
        ls.stop()
