"""Prompt ensembles: templates × class names, and the weighted class vectors they give.

Pure logic: prompt files come in as text (read by whoever builds the services), text embeddings as arrays.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cliplabel.core.domain import LabelClass, PromptEnsemble

# Drawn from the templates CLIP's authors published for ImageNet zero-shot (Radford et al., 2021): generic photo
# templates that hold for most labelling projects, without the ImageNet-specific ones (origami, tattoo, plushie …).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a photo of the {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a low resolution photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a drawing of a {}.",
    "art of the {}.",
    "itap of a {}.",
)
MAX_TEMPLATES = 256


def parse_prompt_lines(text: str, max_lines: int = MAX_TEMPLATES) -> tuple[str, ...]:
    """The prompts of a prompt file's text: its non-empty lines, without `#` comments and repeats, in order.

    Raises:
        ValueError: no prompt, or more than `max_lines`.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    kept = tuple(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
    if not kept:
        raise ValueError("no prompts: every line is empty or a comment")
    if len(kept) > max_lines:
        raise ValueError(f"{len(kept)} prompts; at most {max_lines}")
    return kept


def parse_templates(text: str) -> tuple[str, ...]:
    """Templates from a template file's text: prompt lines (see `parse_prompt_lines`) with one `{}` each.

    Raises:
        ValueError: no template, too many, or a line lacks exactly one `{}`.
    """
    templates = parse_prompt_lines(text)
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"{template!r} must contain exactly one {{}}")
    return templates


def natural_name(name: str) -> str:
    """Turns label spellings such as `traffic_light` or `Red-Circle` into words a caption would use."""
    return re.sub(r"\s+", " ", re.sub(r"[_]+", " ", name)).strip()


def build_ensemble(label: LabelClass, templates: Sequence[str]) -> PromptEnsemble:
    """Every template with every name of the class (label + `predicted_values` aliases), uniformly weighted."""
    prompts = tuple(dict.fromkeys(t.format(natural_name(n)) for n in label.prompt_names for t in templates))
    return PromptEnsemble(label=label.value, prompts=prompts, weights=(1.0,) * len(prompts))


def class_vectors(ensembles: Sequence[PromptEnsemble], prompt_emb: dict[str, np.ndarray]) -> np.ndarray:
    """The normalised weighted mean of each class's prompt embeddings.

    Args:
        ensembles: K classes.
        prompt_emb: prompt text → (D,) float32 L2-normalised embedding; must hold every prompt.

    Returns:
        (K, D) float32, L2-normalised rows.
    """
    rows = []
    for ens in ensembles:
        emb = np.stack([prompt_emb[p] for p in ens.prompts])
        w = np.asarray(ens.weights, np.float32)
        v = (w[:, None] * emb).sum(0) / w.sum()
        rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return np.stack(rows).astype(np.float32)
