"""The trainer on the real embedded store, with constructed embeddings: counting, retraining, announcing a version."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from cliplabel.core.domain import Control, FeedbackExample, ProjectState, PromptEnsemble
from cliplabel.core.errors import CliplabelError
from cliplabel.core.metrics import Metrics
from cliplabel.services.feedback import Trainer
from cliplabel.services.versions import current_version
from cliplabel.store.heads import HeadStore
from cliplabel.vision.classify import head_probabilities

D = 8
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
          '<Choice value="A"/><Choice value="B"/></Choices></View>')


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _axis(i: int) -> np.ndarray:
    return np.eye(D, dtype=np.float32)[i]


class _Texts:
    """Prompt "A …" points along axis 0, "B …" along axis 1."""

    def texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {t: _axis(0 if t.startswith("A") else 1) for t in texts}


class _ClassVectors:
    def ensembles(self, control: Control) -> list[PromptEnsemble]:
        return [PromptEnsemble(v, (f"{v} photo",), (1.0,)) for v in control.values]

    def zero_shot(self, control: Control) -> np.ndarray:
        return np.stack([_axis(0), _axis(1)])


@dataclass(frozen=True)
class _Encoder:
    encoder_id: str = "enc"
    logit_scale: float = 100.0


def _trainer(store, retrain_every: int, on_new_version=None) -> Trainer:  # type: ignore[no-untyped-def]
    # No box control in CONFIG, so no detector is needed.
    return Trainer(store, HeadStore(store), _Texts(), _ClassVectors(), None, _Encoder(), "m", Metrics(),  # type: ignore[arg-type]
                   retrain_every, on_new_version)


def _feedback(store) -> None:  # type: ignore[no-untyped-def]
    # "A" was renamed: its images look like axis 3, "B"'s like axis 1 (what its prompt says). Five of each: with
    # fewer, the head's sign test (SIGNIFICANCE_Z) keeps text-only.
    rng = np.random.default_rng(0)
    store.put_project(ProjectState("1", CONFIG))
    for aid, (label, axis) in enumerate([("A", 3)] * 5 + [("B", 1)] * 5, start=1):
        # A hint of "B" in every image: zero-shot calls the renamed "A" images "B".
        emb = _unit(_axis(D - 1) + 0.5 * _axis(axis) + 0.1 * _axis(1) + 0.02 * rng.standard_normal(D))
        store.put_feedback("1", aid, [FeedbackExample("1", aid, "kind", f"h{aid}", label, "correct", emb)])


def test_a_project_is_due_after_retrain_every_annotations(make_store) -> None:  # type: ignore[no-untyped-def]
    trainer = _trainer(make_store("embedded"), retrain_every=3)
    assert [trainer.count("1", 1) for _ in range(4)] == [False, False, True, True]
    assert not trainer.count("2", 2)  # per project


def test_an_accepted_retrain_adds_a_version_and_announces_it(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    _feedback(store)
    announced = []
    trainer = _trainer(store, retrain_every=1, on_new_version=announced.append)
    trainer.count("1", 5)
    version = trainer.train_project("1")
    assert version is not None and version.name == "m-r1" and announced == [version]
    assert current_version(store, "1", "enc", "m") == version
    # The served head learned the rename: a new "A"-looking image (axis 3) now scores A, which zero-shot cannot
    # (its "A" vector is axis 0). Whether by prototype (alpha) or by memory is the head's own cross-validated choice.
    head = HeadStore(store).heads_for(version)["kind"]
    assert head.alpha > 0 or head.memory is not None
    renamed_a = _unit(_axis(D - 1) + 0.5 * _axis(3) + 0.1 * _axis(1))[None]
    assert (renamed_a @ _ClassVectors().zero_shot(None).T)[0].argmax() == 1  # type: ignore[arg-type]
    assert head_probabilities(renamed_a, head)[0].argmax() == 0
    assert not trainer.count("1", 0)  # the count starts again after a retrain


def test_a_failing_announcement_leaves_the_version_standing(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    _feedback(store)

    def refuse(version: object) -> None:
        raise CliplabelError("no bulk jobs here")

    version = _trainer(store, retrain_every=1, on_new_version=refuse).train_project("1")
    assert version is not None and current_version(store, "1", "enc", "m") == version


@pytest.mark.parametrize("project", ["1", "unknown"])
def test_nothing_to_learn_adds_no_version(make_store, project: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    store.put_project(ProjectState("1", CONFIG))  # set up, but no feedback yet
    announced: list[object] = []
    assert _trainer(store, retrain_every=1, on_new_version=announced.append).train_project(project) is None
    assert announced == []
