"""Parse a Label Studio label config (XML) into the controls cliplabel predicts for.

Pure: string in, `LabelConfig` out. Parsed with defusedxml because the config comes from the network.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from functools import lru_cache

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from cliplabel.core.domain import Control, ControlKind, LabelClass, LabelConfig
from cliplabel.core.errors import LabelConfigError

MAX_CONFIG_CHARS = 1_000_000
MAX_LABELS_PER_CONTROL = 2_000

# Label Studio tag (lower-cased) → (our control kind, the tag of its labels).
_CONTROL_TAGS: dict[str, tuple[ControlKind, str]] = {
    "choices": ("choices", "choice"),
    "rectanglelabels": ("rectanglelabels", "label"),
}
# Controls that users commonly put beside an image and that we knowingly leave alone.
_KNOWN_UNHANDLED = {"labels", "rectangle", "polygonlabels", "keypointlabels", "brushlabels", "textarea", "rating",
                    "number", "taxonomy", "ellipselabels", "polygon", "keypoint", "brush", "relations", "pairwise"}


def config_hash(label_config: str) -> str:
    """A short content hash of a label config, for cache keys and logs."""
    return hashlib.sha256(label_config.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@lru_cache(maxsize=256)
def parse_label_config(label_config: str) -> LabelConfig:
    """Finds every `<Choices>` and `<RectangleLabels>` bound to an `<Image>`.

    Args:
        label_config: the `<View>…</View>` XML as Label Studio sends it.

    Returns:
        The supported controls, in document order, and the names of controls that are left alone.

    Raises:
        LabelConfigError: the config is not XML, has no `<Image>` with a `$key` value, a control points at a name
            that does not exist, a control has no or duplicate labels, or nothing in it can be predicted.
    """
    if not isinstance(label_config, str) or not label_config.strip():
        raise LabelConfigError("the label config is empty")
    if len(label_config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the label config has {len(label_config)} characters; at most {MAX_CONFIG_CHARS}")
    try:
        root = SafeET.fromstring(label_config)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from exc

    images: dict[str, str] = {}
    all_names: set[str] = set()
    for el in root.iter():
        name = el.get("name")
        if name:
            all_names.add(name)
        if _tag(el) == "image" and name:
            value = (el.get("value") or "").strip()
            if value.startswith("$") and len(value) > 1:
                images[name] = value[1:]
    if not images:
        raise LabelConfigError('the label config has no <Image name="..." value="$key"/> to predict for')

    controls: list[Control] = []
    ignored: list[str] = []
    for el in root.iter():
        tag = _tag(el)
        if tag not in _CONTROL_TAGS:
            if tag in _KNOWN_UNHANDLED and el.get("name"):
                ignored.append(el.get("name", ""))
            continue
        controls.append(_control(el, tag, images, all_names))
    if not controls:
        raise LabelConfigError("the label config has no <Choices> or <RectangleLabels> bound to an <Image>")
    return LabelConfig(controls=tuple(controls), ignored=tuple(ignored))


def _tag(el: ET.Element) -> str:
    return str(el.tag).rsplit("}", 1)[-1].lower()


def _control(el: ET.Element, tag: str, images: dict[str, str], all_names: set[str]) -> Control:
    kind, label_tag = _CONTROL_TAGS[tag]
    name = el.get("name")
    if not name:
        raise LabelConfigError(f"a <{el.tag}> has no name attribute")
    to_names = [t.strip() for t in (el.get("toName") or "").split(",") if t.strip()]
    if not to_names:
        raise LabelConfigError(f'<{el.tag} name="{name}"> has no toName')
    for t in to_names:
        if t not in all_names:
            raise LabelConfigError(f'<{el.tag} name="{name}"> points at toName="{t}", which is not in the config')
    targets = [t for t in to_names if t in images]
    if not targets:
        raise LabelConfigError(f'<{el.tag} name="{name}"> is not bound to an <Image> with a $key value')
    to_name = targets[0]

    classes: list[LabelClass] = []
    for child in el.iter():
        if child is el or _tag(child) != label_tag:
            continue
        value = child.get("value")
        if value is None or not value.strip():
            raise LabelConfigError(f'<{el.tag} name="{name}"> has a <{child.tag}> without a value')
        alias = child.get("alias")
        extra = [v.strip() for v in (child.get("predicted_values") or "").split(",") if v.strip()]
        # An alias replaces the value in results; the visible value still describes the class for prompts.
        if alias and alias.strip():
            classes.append(LabelClass(value=alias.strip(), aliases=(value.strip(), *extra), value_in_prompts=False))
        else:
            classes.append(LabelClass(value=value.strip(), aliases=tuple(extra)))
        if len(classes) > MAX_LABELS_PER_CONTROL:
            raise LabelConfigError(f'<{el.tag} name="{name}"> has more than {MAX_LABELS_PER_CONTROL} labels')
    threshold = _threshold(el, name)
    try:
        return Control(kind=kind, from_name=name, to_name=to_name, image_key=images[to_name], classes=tuple(classes),
                       multiple=(el.get("choice") or "").lower() == "multiple", score_threshold=threshold)
    except ValueError as exc:
        raise LabelConfigError(str(exc)) from exc


def _threshold(el: ET.Element, name: str) -> float | None:
    raw = el.get("model_score_threshold")
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise LabelConfigError(f'<{el.tag} name="{name}">: model_score_threshold="{raw}" is not a number') from exc
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(f'<{el.tag} name="{name}">: model_score_threshold="{raw}" must be in [0, 1]')
    return value
