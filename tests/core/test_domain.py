"""Domain types: a prediction's probabilities read lazily from a scored row."""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.core.domain import ChoicePrediction, ClassProbabilities


def test_class_probabilities_is_the_dict_of_its_row() -> None:
    row = np.array([0.25, 0.5, 0.25], np.float32)
    probs = ClassProbabilities(("a", "b", "c"), row)
    assert probs == {"a": 0.25, "b": 0.5, "c": 0.25}
    assert dict(probs) == {"a": 0.25, "b": 0.5, "c": 0.25} and list(probs) == ["a", "b", "c"] and len(probs) == 3
    assert isinstance(probs["b"], float) and probs.get("z") is None
    with pytest.raises(KeyError):
        probs["z"]
    assert probs != {"a": 0.25, "b": 0.5}


def test_class_probabilities_needs_one_value_per_class() -> None:
    with pytest.raises(ValueError, match="expected 2 probabilities"):
        ClassProbabilities(("a", "b"), np.zeros(3, np.float32))


def test_a_prediction_compares_without_its_probabilities() -> None:
    one = ChoicePrediction("label", "image", ("a",), 0.5, ClassProbabilities(("a", "b"), np.array([0.5, 0.5])))
    other = ChoicePrediction("label", "image", ("a",), 0.5, {"a": 0.9, "b": 0.1})
    assert one == other
