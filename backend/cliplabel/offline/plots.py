"""PNG plots of a quality report: the only module that imports matplotlib (headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in containers

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from cliplabel.services.report import QualityReport  # noqa: E402


def write_plots(report: QualityReport, out_dir: Path) -> dict[str, str]:
    """Writes the report's plots into `out_dir`; returns title → file name, for the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if report.classes:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(report.classes) + 2), 3.6))
        names = [c.label if len({x.control for x in report.classes}) == 1 else f"{c.control}/{c.label}"
                 for c in report.classes]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [c.predicted for c in report.classes], width=0.4, label="predicted")
        ax.bar([x + 0.2 for x in xs], [c.annotated for c in report.classes], width=0.4, label="annotated")
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("count")
        ax.set_title(f"Per class ({report.model_version})")
        ax.legend()
        written["Per-class counts"] = _save(fig, out_dir / "class_counts.png")
    if report.scores:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, values in sorted(report.scores.items()):
            ax.hist(values, bins=20, range=(0, 1), histtype="step", linewidth=1.4, label=name.split("/", 1)[1])
        ax.set_xlabel("prediction score")
        ax.set_ylabel("results")
        ax.set_title("Score histograms per class")
        if len(report.scores) <= 12:
            ax.legend(fontsize=7)
        written["Score histograms"] = _save(fig, out_dir / "scores.png")
    if report.acceptance_curve or len(report.versions) > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        if report.acceptance_curve:
            left.plot([n for n, _ in report.acceptance_curve], [a for _, a in report.acceptance_curve], marker="o")
        left.set_ylim(0, 1.05)
        left.set_xlabel("annotated labels")
        left.set_ylabel("accepted (sliding window)")
        left.set_title("Annotators accepting pre-labels")
        learned = [v for v in report.versions if v.heldout_accuracy is not None]
        if learned:
            right.plot([v.revision for v in learned], [v.heldout_accuracy for v in learned], marker="o",
                       label="new version (held out)")
            right.plot([v.revision for v in learned], [v.previous_accuracy for v in learned], marker="x",
                       linestyle="--", label="version before it")
            right.legend(fontsize=7)
        right.set_ylim(0, 1.05)
        right.set_xlabel("revision")
        right.set_ylabel("accuracy on annotations")
        right.set_title("Learning curve over versions")
        written["Learning curve"] = _save(fig, out_dir / "learning_curve.png")
    return written


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
