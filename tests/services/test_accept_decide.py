"""Auto-accept's decision (`services.accept.decide`): which tasks it takes, and the ones it must never touch.

Constructed embeddings (no model, no Label Studio): two classes along two axes, every task scored by the served head.
"""

from __future__ import annotations

import numpy as np

from cliplabel.core.domain import Control, Head, LabelClass, ModelVersion, ProjectTask, StoredPrediction
from cliplabel.services.accept import decide, untouched
from cliplabel.services.accepted import accept_predictions, accepted_version, is_auto_accepted
from cliplabel.services.audit import LabelledSet
from cliplabel.services.search import ProjectEmbeddings

D = 4
CONTROL = Control("choices", "label", "image", "image", (LabelClass("cat"), LabelClass("dog")))


def _labelled(unlabelled: np.ndarray, annotated: set[int], auto: set[int], n_heldout: int = 400) -> LabelledSet:
    rng = np.random.default_rng(0)
    n = len(unlabelled)
    y = np.arange(n) % 2
    emb = np.zeros((n, D), np.float32)
    emb[np.arange(n), y] = 1.0  # every task sits exactly on its class's axis: the served head is sure of all
    head = Head("label", ("cat", "dog"), np.eye(2, D, dtype=np.float32), np.zeros((0, D), np.float32), 20.0)
    # held-out evidence: n_heldout human labels, all predicted right with high probability
    labels = rng.integers(0, 2, n_heldout)
    oos = np.full((n_heldout, 2), 0.02, np.float32)
    oos[np.arange(n_heldout), labels] = 0.98
    found = ProjectEmbeddings("1", "image", np.arange(1, n + 1, dtype=np.int64), emb, unlabelled, missing=3)
    return LabelledSet(project_id="1", control=CONTROL, version=ModelVersion("1", "enc", 1, "tiny-r1", 0.0),
                       served=head, found=found, task_ids=np.arange(1000, 1000 + n_heldout), labels=labels,
                       annotation_ids=np.arange(n_heldout), oos=oos, annotated_tasks=annotated,
                       auto_accepted_tasks=auto)


def test_accepts_only_tasks_without_any_annotation() -> None:
    unlabelled = np.ones(10, bool)
    unlabelled[[0, 1]] = False  # tasks 1 and 2 hold a kept human annotation
    # task 3 was skipped by a person (an annotation, though not a label); task 4 was auto-accepted before
    labelled = _labelled(unlabelled, annotated={1, 2, 3}, auto={4})
    report, decisions = decide(labelled, 0.98, 0.95)
    taken = {d.task_id for d in decisions}
    assert taken == {5, 6, 7, 8, 9, 10}
    assert not taken & {1, 2, 3, 4}  # never a task a person annotated or skipped, never twice
    assert (report.candidates, report.accepted, report.not_encoded) == (6, 6, 3)
    assert report.coverage == 1.0 and report.heldout == 400
    assert all(t.source == "class" and t.lower_bound >= 0.98 for t in report.thresholds)
    assert {d.label for d in decisions if d.task_id % 2 == 1} == {"cat"}


def test_too_little_evidence_accepts_nothing() -> None:
    labelled = _labelled(np.ones(6, bool), annotated=set(), auto=set(), n_heldout=100)
    report, decisions = decide(labelled, 0.98, 0.95)
    assert decisions == [] and report.accepted == 0 and report.candidates == 6
    assert all(t.threshold is None for t in report.thresholds)
    assert report.expected_errors == 0.0


def test_untouched_counts_skips_and_auto_annotations_as_annotations() -> None:
    tasks = [ProjectTask(1, {}, 0, 0), ProjectTask(2, {}, 1, 1), ProjectTask(3, {}, 1, 0), ProjectTask(4, {}, 2, 0)]
    assert untouched(tasks) == {1}


def test_an_auto_accepted_annotation_is_told_from_a_persons() -> None:
    preds = [StoredPrediction(1, "tiny-r1.accepted", (("label", "cat", 0.99),), prediction_id=7),
             StoredPrediction(2, "tiny-r1", (("label", "dog", 0.9),), prediction_id=8),
             StoredPrediction(3, "tiny-r1.accepted", (("other", "x", 0.9),), prediction_id=None)]
    accepted = accept_predictions(preds, "label")
    assert accepted == {7: ("cat",)}
    assert accepted_version("tiny-r1") == "tiny-r1.accepted"
    assert is_auto_accepted(("cat",), 7, accepted)
    assert not is_auto_accepted(("dog",), 7, accepted)  # a person changed its label: theirs now
    assert not is_auto_accepted(("dog",), 8, accepted)  # made from an ordinary prediction: a person's
    assert not is_auto_accepted(("cat",), None, accepted)
