from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliplabel.core.errors import LabelConfigError
from cliplabel.labelstudio.label_config import parse_label_config

IMG = '<Image name="image" value="$image"/>'


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # nothing at all
        ("", "empty"),
        # not XML
        ("<View><Image name='image' value='$image'>", "not valid XML"),
        # an entity-expansion bomb is refused by defusedxml, not expanded
        ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><View>&b;</View>', "not valid XML"),
        # no image to predict for
        ('<View><Choices name="c" toName="t"><Choice value="A"/></Choices><Text name="t" value="$t"/></View>',
         "no <Image"),
        # an image whose value is a literal, not a task key
        ('<View><Image name="image" value="http://x/a.png"/></View>', "no <Image"),
        # only controls we do not predict
        (f'<View>{IMG}<TextArea name="t" toName="image"/></View>', "no <Choices>"),
        # toName that does not exist
        (f'<View>{IMG}<Choices name="c" toName="nope"><Choice value="A"/></Choices></View>', "toName=\"nope\""),
        # no labels
        (f'<View>{IMG}<Choices name="c" toName="image"></Choices></View>', "has no labels"),
        # duplicate labels
        (f'<View>{IMG}<Choices name="c" toName="image"><Choice value="A"/><Choice value="A"/></Choices></View>',
         "repeats"),
        # a label without a value
        (f'<View>{IMG}<Choices name="c" toName="image"><Choice/></Choices></View>', "without a value"),
        # a threshold that is not a number / out of range
        (f'<View>{IMG}<Choices name="c" toName="image" model_score_threshold="high"><Choice value="A"/></Choices>'
         '</View>', "not a number"),
        (f'<View>{IMG}<Choices name="c" toName="image" model_score_threshold="1.5"><Choice value="A"/></Choices>'
         '</View>', "must be in [0, 1]"),
    ],
)
def test_broken_configs_name_the_problem(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_label_config(config)


def test_choices_and_rectangles_with_aliases_and_thresholds() -> None:
    cfg = parse_label_config(
        '<View><Image name="img" value="$photo"/>'
        '<Choices name="kind" toName="img" choice="multiple" model_score_threshold="0.3">'
        '<Choice value="Cat" predicted_values="kitten, tabby"/><Choice value="Dog" alias="d-17"/></Choices>'
        '<RectangleLabels name="bbox" toName="img"><Label value="Car"/></RectangleLabels>'
        '<TextArea name="notes" toName="img"/></View>')
    kind, bbox = cfg.controls
    assert (kind.kind, kind.from_name, kind.to_name, kind.image_key) == ("choices", "kind", "img", "photo")
    assert kind.multiple and kind.score_threshold == 0.3
    # predicted_values become extra prompt names; an alias replaces the value in results
    assert kind.values == ("Cat", "d-17")
    assert kind.classes[0].prompt_names == ("Cat", "kitten", "tabby")
    assert kind.classes[1].prompt_names == ("Dog",)
    assert (bbox.kind, bbox.values, bbox.multiple, bbox.score_threshold) == ("rectanglelabels", ("Car",), False, None)
    assert cfg.ignored == ("notes",)


def test_control_bound_to_several_names_uses_the_image() -> None:
    cfg = parse_label_config('<View><Text name="t" value="$t"/><Image name="im" value="$img"/>'
                             '<Choices name="c" toName="t,im"><Choice value="A"/></Choices></View>')
    assert cfg.controls[0].to_name == "im" and cfg.controls[0].image_key == "img"


def test_repository_default_config_parses() -> None:
    from pathlib import Path

    cfg = parse_label_config((Path(__file__).parents[2] / "label_config.xml").read_text())
    assert {c.kind for c in cfg.controls} == {"choices", "rectanglelabels"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_gives_a_config_or_a_label_config_error(text: str) -> None:
    try:
        parse_label_config(text)
    except LabelConfigError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20),
                min_size=1, max_size=8, unique=True))
def test_any_label_values_round_trip(values: list[str]) -> None:
    from xml.sax.saxutils import quoteattr

    choices = "".join(f"<Choice value={quoteattr(v)}/>" for v in values)
    try:
        cfg = parse_label_config(f'<View>{IMG}<Choices name="c" toName="image">{choices}</Choices></View>')
    except LabelConfigError:
        # blank or whitespace-only labels, or labels equal after stripping, are refused by name
        assert any(not v.strip() for v in values) or len({v.strip() for v in values}) < len(values)
        return
    assert cfg.controls[0].values == tuple(v.strip() for v in values)
