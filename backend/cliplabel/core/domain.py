"""Domain types shared by every layer: frozen dataclasses with their invariants, and the `Encoder` protocol.

Nothing here knows Label Studio's JSON names, HTTP, Redis or torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

ControlKind = Literal["choices", "rectanglelabels"]
# How an encoder fits an image into its square input (open_clip's `resize_mode`).
ResizeMode = Literal["shortest", "squash", "longest"]


class Encoder(Protocol):
    """What the services need of a CLIP model; `cliplabel.model.encoder.ClipEncoder` is the real one."""

    @property
    def encoder_id(self) -> str:
        """Stable identity of weights + preprocessing; part of every cached vector's key."""

    @property
    def image_size(self) -> int:
        """Side in pixels of the square uint8 input that `encode_images` takes."""

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax temperature (CLIP's `logit_scale.exp()`)."""

    @property
    def slug(self) -> str:
        """Readable name of the weights; model versions are named `<slug>-r<revision>`."""

    @property
    def device(self) -> str:
        """Where the model runs, as torch names it (`cpu`, `cuda`, `cuda:1`)."""

    @property
    def resize_mode(self) -> ResizeMode:
        """How images are fitted into the square input (the preprocessing the weights were trained with)."""

    @property
    def embed_dim(self) -> int:
        """D, the length of every embedding."""

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB → (N, D) float32, L2-normalised."""

    def encode_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        """N JPEG files → (N, D) float32, L2-normalised, decoded and resized on the model's device.

        Only for upright RGB or greyscale JPEGs within the pixel cap and models with the `shortest` resize mode.

        Raises:
            RuntimeError: a JPEG the device decoder cannot read (callers fall back to decoding on the CPU).
        """

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """N strings → (N, D) float32, L2-normalised."""


@dataclass(frozen=True)
class LabelClass:
    """One label of a control: the value results carry, and the names prompts use for it.

    `value` is what Label Studio stores (a `<Choice alias="…">` replaces the visible value there); `aliases` are the
    visible value (when an alias hides it) and the `predicted_values`. An alias is an id, not a description, so with
    `value_in_prompts=False` it is kept out of the prompts.
    """

    value: str
    aliases: tuple[str, ...] = ()
    value_in_prompts: bool = True

    def __post_init__(self) -> None:
        if not self.value.strip():
            raise ValueError("a label value must not be empty")

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """The label itself plus its `predicted_values` aliases, de-duplicated, in order."""
        seen: dict[str, None] = {}
        for name in ((self.value,) if self.value_in_prompts else ()) + self.aliases:
            name = name.strip()
            if name and name.lower() not in {k.lower() for k in seen}:
                seen[name] = None
        return tuple(seen)


@dataclass(frozen=True)
class Control:
    """A `<Choices>` or `<RectangleLabels>` bound to an `<Image>`."""

    kind: ControlKind
    from_name: str
    to_name: str
    image_key: str
    classes: tuple[LabelClass, ...]
    multiple: bool = False
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError(f"control {self.from_name!r} has no labels")
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values):
            raise ValueError(f"control {self.from_name!r} repeats a label value")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"control {self.from_name!r}: model_score_threshold must be in [0, 1]")

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(c.value for c in self.classes)


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a Label Studio label config that cliplabel predicts for."""

    controls: tuple[Control, ...]
    ignored: tuple[str, ...] = ()

    def of_kind(self, kind: ControlKind) -> tuple[Control, ...]:
        return tuple(c for c in self.controls if c.kind == kind)


@dataclass(frozen=True)
class PromptEnsemble:
    """The prompts of one class and their weights (uniform until feedback learning re-weights them)."""

    label: str
    prompts: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"class {self.label!r} has no prompts")
        if len(self.weights) != len(self.prompts):
            raise ValueError(f"class {self.label!r}: {len(self.prompts)} prompts but {len(self.weights)} weights")
        if any(w < 0 or not math.isfinite(w) for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"class {self.label!r}: weights must be finite, non-negative and not all zero")


class ClassProbabilities(Mapping[str, float]):
    """A prediction's probability per class, read from its row of a scored (N, K) matrix only when asked.

    A re-score makes one per task, 100,000 at a time, and nothing in the product reads them on that path: with a dict
    per task, a warm re-score of 100,000 tasks took 0.88 s instead of 0.52 s (bench/bench_rescore.py, one run each,
    2026-12-05). Equal to the dict of the same pairs (Mapping's equality).
    """

    __slots__ = ("_row", "_values")

    def __init__(self, values: tuple[str, ...], row: np.ndarray) -> None:
        if row.shape != (len(values),):
            raise ValueError(f"expected {len(values)} probabilities, got shape {row.shape}")
        self._values = values
        self._row = row

    def __getitem__(self, key: str) -> float:
        try:
            return float(self._row[self._values.index(key)])
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ClassProbabilities({dict(self)!r})"


@dataclass(frozen=True)
class ChoicePrediction:
    """A classification result for one control of one task."""

    from_name: str
    to_name: str
    choices: tuple[str, ...]
    score: float
    probabilities: Mapping[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} outside [0, 1]")


@dataclass(frozen=True)
class RegionPrediction:
    """A labelled box for one `<RectangleLabels>` control, in pixels of the EXIF-upright image."""

    from_name: str
    to_name: str
    label: str
    score: float
    bbox_xyxy: tuple[float, float, float, float]
    image_wh: tuple[int, int]

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} outside [0, 1]")
        x0, y0, x1, y1 = self.bbox_xyxy
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"degenerate box {self.bbox_xyxy}")
        if self.image_wh[0] <= 0 or self.image_wh[1] <= 0:
            raise ValueError(f"image size {self.image_wh} must be positive")


@dataclass(frozen=True)
class TaskPrediction:
    """Everything predicted for one task; nothing at all means nothing could be predicted."""

    task_id: int | None
    model_version: str
    choices: tuple[ChoicePrediction, ...] = ()
    regions: tuple[RegionPrediction, ...] = ()
    error: str | None = None

    @property
    def score(self) -> float:
        """The prediction's overall score: the mean of its results' scores (0 when there are none). For one
        `<Choices>` it is the calibrated probability of the top choice: the chance the pre-label is right, so the
        lowest score is the task whose human answer corrects (and teaches) the most."""
        scores = [c.score for c in self.choices] + [r.score for r in self.regions]
        return float(sum(scores) / len(scores)) if scores else 0.0


@dataclass(frozen=True)
class DrawnRegion:
    """What an annotator drew in interactive mode: a box or a point, in Label Studio percent of the image."""

    from_name: str
    to_name: str
    kind: Literal["rectangle", "keypoint"]
    box_pct: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    point_pct: tuple[float, float] | None = None


@dataclass(frozen=True)
class ProjectState:
    """What `/setup` told us about a project: its label config and where its images live."""

    project_id: str
    label_config: str
    hostname: str | None = None
    access_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ModelVersion:
    """One served model of a project: `<encoder slug>-r<revision>`, monotonic per project and encoder."""

    project_id: str
    encoder_id: str
    revision: int
    name: str
    created_at: float
    metrics: dict[str, float] = field(default_factory=dict, compare=False)
    note: str = ""

    def __post_init__(self) -> None:
        if self.revision < 0:
            raise ValueError("revision must be non-negative")
        if not self.name:
            raise ValueError("a model version needs a name")


FeedbackKind = Literal["confirm", "correct", "reject", "new"]


@dataclass(frozen=True)
class AnnotatedRegion:
    """One labelled thing in an annotation: a whole-image choice (`box_pct` None) or a box, for one control."""

    from_name: str
    labels: tuple[str, ...]
    box_pct: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in percent of the image


@dataclass(frozen=True)
class AnnotationEvent:
    """An annotation as a webhook (or Label Studio's export) carries it."""

    project_id: str
    annotation_id: int
    task_id: int | None
    task_data: dict[str, object] = field(repr=False)
    regions: tuple[AnnotatedRegion, ...]
    cancelled: bool = False
    # True when this is what Label Studio's API stores (its export, or the annotation fetched by id), not what a
    # webhook's body claims.
    confirmed: bool = False
    # Label Studio's `parent_prediction`: the prediction the annotation was made from (None: made by hand).
    parent_prediction: int | None = None
    # Made by auto-accept from one of its `<version>.accepted` predictions and unchanged since: no person's label
    # (set by whoever has seen the parent prediction: the export reader or the confirmer).
    auto_accepted: bool = False


@dataclass(frozen=True)
class FeedbackExample:
    """One labelled embedding: a whole image or a crop, its label (None = background, a rejected box), and how it
    relates to what we predicted."""

    project_id: str
    annotation_id: int
    from_name: str
    image_hash: str
    label: str | None
    kind: FeedbackKind
    embedding: np.ndarray = field(repr=False, compare=False)
    box_xyxy: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.embedding.ndim != 1:
            raise ValueError(f"expected a (D,) embedding, got shape {self.embedding.shape}")


@dataclass(frozen=True)
class HeadMemory:
    """A head's memory of what annotators labelled: image embeddings (or centroids of several) per class.

    `keys`: (M, D) float32, L2-normalised image embeddings, grouped by class (`labels` non-decreasing).
    `labels`: (M,) int64 class index of each key. `weights`: (M,) float32 > 0, how many examples each key stands for.
    `gap`: (D,) the modality gap the keys are moved across before they meet text vectors. `beta`: the affinity
    sharpness (small: a class's keys average into a prototype; large: the nearest key decides). `ratio`: the memory's
    share of a labelled class's score, in (0, 1]; the rest stays with the text-anchored class vector.
    """

    keys: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    gap: np.ndarray = field(repr=False)
    beta: float
    ratio: float

    def __post_init__(self) -> None:
        m = len(self.keys)
        if self.keys.ndim != 2 or m == 0 or self.labels.shape != (m,) or self.weights.shape != (m,) \
                or self.gap.shape != (self.keys.shape[1],):
            raise ValueError(f"memory of keys {self.keys.shape}, labels {self.labels.shape}, weights "
                             f"{self.weights.shape}, gap {self.gap.shape} does not fit together")
        if np.any(np.diff(self.labels) < 0) or np.any(self.weights <= 0):
            raise ValueError("memory keys must be grouped by class, with positive weights")
        if not (self.beta > 0 and 0 < self.ratio <= 1):
            raise ValueError(f"memory beta {self.beta} must be positive and ratio {self.ratio} in (0, 1]")


@dataclass(frozen=True)
class BoxVerifier:
    """A logistic model of which candidate boxes an annotator keeps (`cliplabel.vision.box_verifier`): features are
    standardised by `mean` and `scale` (F,), then `sigmoid(x · coef + intercept)`."""

    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    coef: np.ndarray = field(repr=False)
    intercept: float

    def __post_init__(self) -> None:
        f = self.coef.shape
        if len(f) != 1 or self.mean.shape != f or self.scale.shape != f or np.any(self.scale <= 0):
            raise ValueError(f"box verifier of mean {self.mean.shape}, scale {self.scale.shape} and coef {f} does "
                             "not fit together (scales must be positive)")


@dataclass(frozen=True)
class Head:
    """A control's learned classifier, served in place of its zero-shot class vectors while its labels match.

    `class_vecs`: (K, D) float32, L2-normalised, one row per label. `background_vecs`: (B, D) float32 learned from
    rejected boxes (B may be 0). `logit_scale`: the softmax temperature. `alpha`: the weight of the labelled
    examples' prototypes against the text vectors (0 = zero-shot). `memory`: labelled examples that add to their
    class's score (None: the class vectors alone); `cliplabel.vision.classify.head_similarities` is the one scorer.
    `box_threshold`: for a box head, the margin threshold chosen on annotated scenes (None: the detector's default;
    a `model_score_threshold` in the label config always wins). `box_verifier`: for a box head, a model of which
    candidate boxes annotators keep; its probability is then the box score, and `box_threshold` applies to it.
    """

    from_name: str
    labels: tuple[str, ...]
    class_vecs: np.ndarray = field(repr=False)
    background_vecs: np.ndarray = field(repr=False)
    logit_scale: float
    alpha: float = 0.0
    memory: HeadMemory | None = field(default=None, repr=False)
    box_threshold: float | None = None
    box_verifier: BoxVerifier | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.class_vecs.shape[0] != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but class vectors of shape {self.class_vecs.shape}")
        if self.background_vecs.ndim != 2 or (len(self.background_vecs) and
                                               self.background_vecs.shape[1] != self.class_vecs.shape[1]):
            raise ValueError(f"background vectors of shape {self.background_vecs.shape} do not fit")
        if not self.logit_scale > 0:
            raise ValueError("logit_scale must be positive")
        mem = self.memory
        if mem is not None and (mem.keys.shape[1] != self.class_vecs.shape[1] or mem.labels.min() < 0
                                or mem.labels.max() >= len(self.labels)):
            raise ValueError(f"memory keys {mem.keys.shape} or labels do not fit {len(self.labels)} classes")
        if self.box_threshold is not None and not 0.0 <= self.box_threshold <= 1.0:
            raise ValueError(f"box_threshold {self.box_threshold} must be in [0, 1]")


@dataclass(frozen=True)
class ProjectTask:
    """One task of a Label Studio project, as bulk jobs and the quality report see it.

    `data` is the task's data (image references) as Label Studio holds it; `annotations` counts every annotation,
    skipped (cancelled) ones included, and `cancelled_annotations` the skipped ones.
    """

    task_id: int
    data: dict[str, object] = field(repr=False)
    annotations: int = 0
    cancelled_annotations: int = 0

    @property
    def labelled(self) -> bool:
        """True once an annotator kept an annotation (a skipped task still wants a pre-label)."""
        return self.annotations - self.cancelled_annotations > 0


@dataclass(frozen=True)
class StoredPrediction:
    """A prediction Label Studio holds: its task, model version and (control, label, score) of each labelled result."""

    task_id: int | None
    model_version: str | None
    labels: tuple[tuple[str, str, float | None], ...] = ()
    prediction_id: int | None = None
    score: float | None = None
    cluster: int | None = None
