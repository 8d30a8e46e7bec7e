"""The vectors a control's classes are scored against: zero-shot prompt ensembles, or a learned head's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cliplabel.core.domain import Control, Head, PromptEnsemble
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.vision import prompts


class ClassVectors:
    """Prompt-ensemble class vectors per control, computed once per label set (the embedding service caches them)."""

    def __init__(self, embeddings: EmbeddingService, templates: Sequence[str]) -> None:
        self.embeddings = embeddings
        self.templates = tuple(templates)

    def ensembles(self, control: Control) -> list[PromptEnsemble]:
        """One prompt ensemble per class of the control, in class order."""
        return [prompts.build_ensemble(c, self.templates) for c in control.classes]

    def zero_shot(self, control: Control, wait_s: float | None = None) -> np.ndarray:
        """(K, D) float32, L2-normalised: the prompt-ensemble vector of each class.

        Args:
            wait_s: how long to wait for vectors still being computed (None: until they are ready).

        Raises:
            ModelWarmingError: not ready within `wait_s` (their computation goes on).
        """
        return self.embeddings.ensemble_vectors(self.ensembles(control), wait_s)

    def for_control(self, control: Control, head: Head | None) -> tuple[np.ndarray, float]:
        """(class vectors (K, D), logit scale) served for a control: the learned head's when it fits the control's
        labels, else zero-shot at the encoder's temperature."""
        if head is not None and head.labels == control.values:
            return head.class_vecs, head.logit_scale
        return self.zero_shot(control), self.embeddings.logit_scale

    def top_choice(self, control: Control, emb: np.ndarray, head: Head | None) -> str:
        """The control's value whose vector is closest to one (D,) image embedding."""
        vecs, _ = self.for_control(control, head)
        return control.values[int(np.argmax(vecs @ emb))]
