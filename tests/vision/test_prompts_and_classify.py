from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cliplabel.core.domain import Control, LabelClass
from cliplabel.core.errors import SettingsError
from cliplabel.vision import classify, prompts


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


@pytest.mark.parametrize(("raw", "natural"), [("", ""), ("traffic_light", "traffic light"),
                                              ("Red  Circle", "Red Circle"), ("x-ray", "x-ray")])
def test_natural_name(raw: str, natural: str) -> None:
    assert prompts.natural_name(raw) == natural


def test_ensemble_is_templates_times_names_without_duplicates() -> None:
    ens = prompts.build_ensemble(LabelClass("Cat", aliases=("kitten", "cat")), ("a {}.", "a photo of a {}."))
    # "cat" repeats "Cat" (case-insensitively) and is dropped
    assert ens.prompts == ("a Cat.", "a photo of a Cat.", "a kitten.", "a photo of a kitten.")
    assert ens.weights == (1.0,) * 4


def test_class_vector_is_the_normalised_weighted_mean() -> None:
    from cliplabel.core.domain import PromptEnsemble

    emb = {"a": _unit([1, 0]), "b": _unit([0, 1])}
    uniform = prompts.class_vectors([PromptEnsemble("x", ("a", "b"), (1.0, 1.0))], emb)
    np.testing.assert_allclose(uniform[0], _unit([1, 1]), atol=1e-6)
    skewed = prompts.class_vectors([PromptEnsemble("x", ("a", "b"), (3.0, 1.0))], emb)
    np.testing.assert_allclose(skewed[0], _unit([3, 1]), atol=1e-6)


@pytest.mark.parametrize(("text", "error"), [("", "no prompts"), ("# only a comment\n", "no prompts"),
                                             ("a photo\n", "'a photo'"), ("a {} and {}\n", "exactly one"),
                                             ("".join(f"{{}} {i}\n" for i in range(300)), "at most 256")])
def test_bad_templates(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        prompts.parse_templates(text)


def test_templates_keep_their_order_without_comments_blanks_or_repeats() -> None:
    text = "# ours\na satellite image of {}.\n\nan aerial photo of a {}.\na satellite image of {}.\n"
    assert prompts.parse_templates(text) == ("a satellite image of {}.", "an aerial photo of a {}.")


@pytest.mark.parametrize(("text", "error"), [("", "CLIPLABEL_TEMPLATES: .*no prompts"),
                                             ("a photo\n", "CLIPLABEL_TEMPLATES: .*'a photo'"),
                                             (b"\xff\xfe{}", "CLIPLABEL_TEMPLATES: cannot read")])
def test_bad_template_files_name_the_variable(tmp_path: Path, text: str | bytes, error: str) -> None:
    from cliplabel.container import prompt_templates
    from cliplabel.core.settings import Settings

    path = tmp_path / "t.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SettingsError, match=error):
        prompt_templates(Settings(templates_file=path))


def test_a_bad_background_prompt_file_names_the_variable(tmp_path: Path) -> None:
    from cliplabel.container import detector_config
    from cliplabel.core.settings import Settings

    path = tmp_path / "bg.txt"
    path.write_text("# nothing but comments\n")
    with pytest.raises(SettingsError, match="CLIPLABEL_BACKGROUND_PROMPTS: .*no prompts"):
        detector_config(Settings(background_prompts_file=path))


def test_template_file_overrides_defaults(tmp_path: Path) -> None:
    from cliplabel.container import prompt_templates
    from cliplabel.core.settings import Settings

    path = tmp_path / "t.txt"
    path.write_text("# ours\na satellite image of {}.\n\nan aerial photo of a {}.\n")
    assert prompt_templates(Settings(templates_file=path)) == ("a satellite image of {}.", "an aerial photo of a {}.")
    assert prompt_templates(Settings()) == prompts.DEFAULT_TEMPLATES


def test_softmax_rows_sum_to_one_and_sharpen_with_scale() -> None:
    img = np.stack([_unit([1, 0.2]), _unit([0.1, 1])])
    cls = np.stack([_unit([1, 0]), _unit([0, 1])])
    soft = classify.softmax_probabilities(img, cls, 10.0)
    sharp = classify.softmax_probabilities(img, cls, 100.0)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
    assert soft.argmax(1).tolist() == [0, 1]
    assert sharp[0, 0] > soft[0, 0] > 0.5


def test_softmax_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected"):
        classify.softmax_probabilities(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), 1.0)


def _control(multiple: bool = False, threshold: float | None = None) -> Control:
    return Control(kind="choices", from_name="c", to_name="image", image_key="image",
                   classes=(LabelClass("A"), LabelClass("B"), LabelClass("C")), multiple=multiple,
                   score_threshold=threshold)


@pytest.mark.parametrize(
    ("multiple", "threshold", "probs", "choices"),
    [
        # single choice: the most probable class, whatever its probability, without a threshold
        (False, None, [0.2, 0.5, 0.3], ("B",)),
        # single choice under the control's threshold: nothing
        (False, 0.6, [0.2, 0.5, 0.3], None),
        # multiple choice: every class at or above the default threshold, most probable first
        (True, None, [0.15, 0.45, 0.4], ("B", "C")),
        # multiple choice with the control's threshold
        (True, 0.42, [0.15, 0.45, 0.4], ("B",)),
        (True, 0.9, [0.15, 0.45, 0.4], None),
    ],
)
def test_choose(multiple: bool, threshold: float | None, probs: list[float], choices: tuple[str, ...] | None) -> None:
    pred = classify.choose(_control(multiple, threshold), np.asarray(probs, np.float32))
    if choices is None:
        assert pred is None
    else:
        assert pred is not None and pred.choices == choices
        assert pred.score == pytest.approx(float(np.mean([probs["ABC".index(c)] for c in choices])))
        assert pred.probabilities == pytest.approx(dict(zip("ABC", probs)))
