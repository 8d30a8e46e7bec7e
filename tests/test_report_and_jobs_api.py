"""The quality report (pure part and plots) and the bulk-job endpoints' answers to bad requests."""

from __future__ import annotations

import time

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectTask
from cliplabel.labelstudio import format as ls_format
from cliplabel.offline.plots import write_plots
from cliplabel.services import report


def _example(aid: int, label: str | None, kind: str) -> FeedbackExample:
    return FeedbackExample("7", aid, "label", f"h{aid}", label, kind, np.ones(4, np.float32))  # type: ignore[arg-type]


def _prediction(task: int, version: str, label: str, score: float) -> dict:
    return {"task": task, "model_version": version,
            "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]},
                        "score": score}]}


def test_report_counts_scores_acceptance_and_learning_curve(tmp_path) -> None:  # type: ignore[no-untyped-def]
    preds = [_prediction(i, "m-r1", "cat" if i % 3 else "dog", 0.5 + i / 100) for i in range(30)]
    preds += [_prediction(i, "m-r0", "dog", 0.9) for i in range(30)]  # an older version: not counted
    # the first 20 annotations mostly corrected, the next 20 mostly confirmed: acceptance rises
    feedback = [_example(i, "cat", "confirm" if i % 4 == 0 else "correct") for i in range(20)]
    feedback += [_example(20 + i, "dog" if i % 2 else "cat", "confirm" if i % 5 else "correct") for i in range(20)]
    feedback += [_example(40, None, "reject")]
    versions = [ModelVersion("7", "e", 0, "m-r0", time.time()),
                ModelVersion("7", "e", 1, "m-r1", time.time(), metrics={"label.examples": 40.0,
                                                                        "label.loo_accuracy": 0.9,
                                                                        "label.current_accuracy": 0.6})]
    # Label Studio's JSON, read as the client reads it
    tasks = [ls_format.project_task({"id": i, "total_annotations": 1 if i < 40 else 0}) for i in range(50)]
    known: list[ProjectTask] = [t for t in tasks if t is not None]
    rep = report.build_report("7", "m-r1", known, ls_format.stored_predictions(preds), versions, feedback,
                              [("label", "cat"), ("label", "dog"), ("label", "bird")])
    cat, dog, bird = rep.classes
    assert (cat.predicted, dog.predicted, bird.predicted) == (20, 10, 0)
    assert cat.mean_score is not None and abs(cat.mean_score - np.mean([0.5 + i / 100 for i in range(30) if i % 3])) < 1e-9
    assert bird.mean_score is None and bird.acceptance_rate is None
    assert (cat.annotated, dog.annotated) == (30, 10)
    assert cat.confirmed == 5 + sum(1 for i in range(20) if i % 2 == 0 and i % 5)
    assert rep.predicted_tasks == 30 and rep.annotated_tasks == 40 and rep.rejected_boxes == 1
    curve = rep.acceptance_curve
    assert curve[0][0] == 20 and curve[-1][0] == 40 and curve[-1][1] > curve[0][1] + 0.4
    assert [v.heldout_accuracy for v in rep.versions] == [None, 0.9]

    plots = write_plots(rep, tmp_path)
    assert set(plots) == {"Per-class counts", "Score histograms", "Learning curve"}
    for name in plots.values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    text = report.markdown(rep, plots)
    assert "| label | cat | 20 |" in text and "| label | bird | 0 | – | 0 | 0 | – |" in text
    assert "| m-r1 | 40 | 0.90 | 0.60 |" in text and "![Learning curve](learning_curve.png)" in text


def test_an_empty_project_gives_a_report_without_plots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rep = report.build_report("1", "m-r0", [], [], [], [], [("label", "cat")])
    assert rep.acceptance_curve == () and rep.classes[0].predicted == 0
    assert write_plots(rep, tmp_path) == {"Per-class counts": "class_counts.png"}


def test_job_endpoints_refuse_bad_requests_clearly(serve, make_store, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    # no Label Studio URL or token, and the project never connected: a 400 that says what to set
    resp = http.post(f"{live.url}/jobs", json={"project": 5})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
    assert "LABEL_STUDIO_URL" in resp.json()["detail"]
    resp = http.get(f"{live.url}/report", params={"project": 5})
    assert resp.status_code == 400 and "LABEL_STUDIO_URL" in resp.json()["detail"]
    for body in ({"project": 5, "chunk_size": 0}, {"project": 5, "kind": "everything"}, {"chunk_size": 8}):
        resp = http.post(f"{live.url}/jobs", json=body)
        assert resp.status_code == 422 and resp.json()["error"] == "invalid_request", body
    resp = http.get(f"{live.url}/jobs/0123456789abcdef")
    assert resp.status_code == 404 and resp.json() == {"error": "not_found", "detail": "no bulk job '0123456789abcdef'"}
    assert http.get(f"{live.url}/jobs/..%2f..%2fetc").status_code in (404, 422)
    assert http.get(f"{live.url}/jobs", params={"project": 5}).json() == {"jobs": []}
