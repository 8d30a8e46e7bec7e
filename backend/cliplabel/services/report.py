"""The quality report of a project: what we predict, how sure we are, how often annotators accept it, how it learns.

Pure: built from a project's tasks and predictions (as `cliplabel.labelstudio` reads them from Label Studio) and from
the store's feedback and versions; `cliplabel.offline.plots` draws it, `markdown` writes it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cliplabel.core.domain import FeedbackExample, ModelVersion, ProjectTask, StoredPrediction

ACCEPTANCE_WINDOW = 20  # annotations per point of the acceptance curve
MAX_SUSPECTS_SHOWN = 20


@dataclass(frozen=True)
class ClassStats:
    control: str
    label: str
    predicted: int  # results of the current version with this label
    mean_score: float | None
    annotated: int  # annotated choices or boxes with this label
    confirmed: int  # ... that the version serving at the time had predicted
    acceptance_rate: float | None  # confirmed / annotated (feedback with a prediction to compare)


@dataclass(frozen=True)
class VersionPoint:
    name: str
    revision: int
    examples: int
    heldout_accuracy: float | None  # leave-one-out accuracy of the head when it was accepted
    previous_accuracy: float | None  # the version before it, on the same examples


@dataclass(frozen=True)
class QualityReport:
    project_id: str
    model_version: str
    tasks: int
    annotated_tasks: int
    predicted_tasks: int
    classes: tuple[ClassStats, ...]
    scores: dict[str, tuple[float, ...]]  # "control/label" → the current version's scores
    versions: tuple[VersionPoint, ...]
    acceptance_curve: tuple[tuple[int, float], ...]  # (annotations so far, acceptance over the last window)
    rejected_boxes: int
    # The label audit (`services.audit`): human labels audited, and the suspects, most suspect first, as
    # (task id, annotated label, the label the held-out head finds most probable, mislabeling score).
    audited_labels: int = 0
    suspect_labels: tuple[tuple[int, str, str, float], ...] = ()


def build_report(project_id: str, model_version: str, tasks: Sequence[ProjectTask],
                 predictions: Iterable[StoredPrediction], versions: Sequence[ModelVersion],
                 feedback: Sequence[FeedbackExample], classes: Sequence[tuple[str, str]]) -> QualityReport:
    """The quality report of a project as served by `model_version`.

    Args:
        tasks: the project's tasks, with their annotation counts.
        predictions: the project's predictions (any version; only `model_version`'s count).
        classes: (control, label) of every class in the label config, in config order.
    """
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    predicted_labels: dict[tuple[str, str], int] = defaultdict(int)
    predicted_tasks = set()
    for pred in predictions:
        if pred.model_version != model_version:
            continue
        predicted_tasks.add(pred.task_id)
        for control, label, score in pred.labels:
            predicted_labels[(control, label)] += 1
            if score is not None:
                scores[(control, label)].append(score)
    annotated: dict[tuple[str, str], int] = defaultdict(int)
    confirmed: dict[tuple[str, str], int] = defaultdict(int)
    for ex in feedback:
        if ex.label is not None:
            annotated[(ex.from_name, ex.label)] += 1
            confirmed[(ex.from_name, ex.label)] += ex.kind == "confirm"
    stats = tuple(ClassStats(control=c, label=lab, predicted=predicted_labels[(c, lab)],
                             mean_score=float(np.mean(scores[(c, lab)])) if scores[(c, lab)] else None,
                             annotated=annotated[(c, lab)], confirmed=confirmed[(c, lab)],
                             acceptance_rate=confirmed[(c, lab)] / annotated[(c, lab)] if annotated[(c, lab)] else None)
                  for c, lab in classes)
    annotated_tasks = sum(1 for t in tasks if t.annotations > 0)  # a skipped task counts: an annotator saw it
    return QualityReport(project_id=project_id, model_version=model_version, tasks=len(tasks),
                         annotated_tasks=annotated_tasks, predicted_tasks=len(predicted_tasks), classes=stats,
                         scores={f"{c}/{lab}": tuple(v) for (c, lab), v in scores.items() if v},
                         versions=tuple(_version_point(v) for v in versions),
                         acceptance_curve=acceptance_curve(feedback),
                         rejected_boxes=sum(1 for e in feedback if e.kind == "reject"))


def _version_point(version: ModelVersion) -> VersionPoint:
    def first(suffix: str) -> float | None:
        values = [v for k, v in version.metrics.items() if k.endswith(suffix)]
        return float(np.mean(values)) if values else None

    examples = first(".examples")
    return VersionPoint(name=version.name, revision=version.revision, examples=int(examples or 0),
                        heldout_accuracy=first(".loo_accuracy"), previous_accuracy=first(".current_accuracy"))


def acceptance_curve(feedback: Sequence[FeedbackExample], window: int = ACCEPTANCE_WINDOW
                     ) -> tuple[tuple[int, float], ...]:
    """Share of annotated labels that the serving version had predicted, over a sliding window, in annotation order.

    This is the learning curve annotators feel: it rises when retrained versions start predicting what they mark.
    """
    marks = [1.0 if e.kind == "confirm" else 0.0 for e in sorted(feedback, key=lambda e: e.annotation_id)
             if e.label is not None]
    if not marks:
        return ()
    step = max(1, window // 4)
    points = []
    for end in range(min(window, len(marks)), len(marks) + 1, step):
        points.append((end, float(np.mean(marks[max(0, end - window):end]))))
    if points[-1][0] != len(marks):
        points.append((len(marks), float(np.mean(marks[-window:]))))
    return tuple(points)


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)


def markdown(report: QualityReport, plots: dict[str, str]) -> str:
    """A short Markdown summary; `plots` maps a plot's title to its file name (next to the Markdown file)."""
    lines = [f"# Quality report: project {report.project_id}", "",
             f"Model version **{report.model_version}**: {report.predicted_tasks} of {report.tasks} tasks predicted, "
             f"{report.annotated_tasks} annotated, {len(report.versions)} versions, "
             f"{report.rejected_boxes} predicted boxes rejected by annotators.", "",
             "| control | class | predicted | mean score | annotated | accepted | acceptance |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in report.classes:
        lines.append(f"| {c.control} | {c.label} | {c.predicted} | {_fmt(c.mean_score)} | {c.annotated} | "
                     f"{c.confirmed} | {_fmt(c.acceptance_rate, '{:.0%}')} |")
    lines += ["", "*Acceptance*: of the labels annotators set, the share the serving version had already predicted.",
              ""]
    if report.versions:
        lines += ["| version | examples | held-out accuracy | previous version, same examples |",
                  "| --- | ---: | ---: | ---: |"]
        for v in report.versions:
            lines.append(f"| {v.name} | {v.examples} | {_fmt(v.heldout_accuracy)} | {_fmt(v.previous_accuracy)} |")
        lines.append("")
    if report.audited_labels:
        lines += [f"## Suspect labels: {len(report.suspect_labels)} of {report.audited_labels} human labels", "",
                  "Confident learning on out-of-sample probabilities (k-fold heads) flags labels that likely "
                  "disagree with their image (`cliplabel audit`).", ""]
        if report.suspect_labels:
            lines += ["| task | annotated | looks like | mislabeling |", "| ---: | --- | --- | ---: |"]
            lines += [f"| {t} | {label} | {suggested} | {score:.3f} |"
                      for t, label, suggested, score in report.suspect_labels[:MAX_SUSPECTS_SHOWN]]
        lines.append("")
    for title, path in plots.items():
        lines += [f"## {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines)
