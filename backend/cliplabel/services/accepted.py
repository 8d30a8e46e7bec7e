"""The mark auto-accept leaves on the annotations it makes, and how the rest of the backend recognises them.

Auto-accepted annotations are made by Label Studio's own action "Create Annotations From Predictions" from
predictions stored under the version `<model version>.accepted`; the annotation links its prediction
(`parent_prediction`). An annotation whose parent prediction is one of those, with the same labels, is auto-accepted
(not a person's): the audit and the next accept do not count it as a human label, and feedback learning does not
learn from it (a head trained on its own accepted guesses would only grow more sure of them). Once a person changes
its labels, it is theirs and teaches like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from cliplabel.core.domain import AnnotatedRegion, StoredPrediction

ACCEPTED_SUFFIX = ".accepted"


def accepted_version(version: str) -> str:
    """The model version auto-accept stores its predictions under (a Data Manager filter finds its tasks)."""
    return f"{version}{ACCEPTED_SUFFIX}"


def is_accept_version(version: str | None) -> bool:
    """True for a model version auto-accept stored its predictions under."""
    return (version or "").endswith(ACCEPTED_SUFFIX)


def accept_predictions(predictions: Iterable[StoredPrediction], from_name: str) -> dict[int, tuple[str, ...]]:
    """Prediction id → labels of `from_name`, of every prediction auto-accept stored."""
    return {p.prediction_id: tuple(label for name, label, _ in p.labels if name == from_name)
            for p in predictions if p.prediction_id is not None and is_accept_version(p.model_version)}


def is_auto_accepted(labels: tuple[str, ...], parent: int | None, accepted: dict[int, tuple[str, ...]]) -> bool:
    """True for an annotation made from one of auto-accept's predictions and still holding its labels."""
    return parent is not None and parent in accepted and accepted[parent] == labels


def made_by_auto_accept(regions: Iterable[AnnotatedRegion], parent: int | None,
                        predictions: Iterable[StoredPrediction]) -> bool:
    """True for an annotation (its labelled regions and `parent_prediction`) made from one of auto-accept's
    predictions (among `predictions`, e.g. its task's) whose labels nobody has changed since, on any control."""
    if parent is None:
        return False
    found = next((p for p in predictions if p.prediction_id == parent), None)
    if found is None or not is_accept_version(found.model_version):
        return False
    return sorted((name, label) for name, label, _ in found.labels) == sorted(
        (r.from_name, label) for r in regions for label in r.labels)
