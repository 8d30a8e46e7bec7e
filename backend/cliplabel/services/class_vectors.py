"""The vectors a control's classes are scored against: zero-shot prompt ensembles, or a learned head's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cliplabel.core.domain import Control, Head, PromptEnsemble
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.vision import classify, prompts


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

    def served(self, control: Control, head: Head | None) -> Head:
        """The head a control is scored with: the learned one when it fits the control's labels, else zero-shot (the
        prompt-ensemble vectors at the encoder's temperature, no memory). Score it with `classify.head_probabilities`
        or `classify.similarities`, never with its class vectors alone (a learned head's memory adds to them)."""
        if head is not None and head.labels == control.values:
            return head
        vecs = self.zero_shot(control)
        return Head(control.from_name, control.values, vecs, np.zeros((0, vecs.shape[1]), np.float32),
                    self.embeddings.logit_scale)

    def top_choice(self, control: Control, emb: np.ndarray, head: Head | None) -> str:
        """The control's value the served head scores highest for one (D,) image embedding."""
        sims = classify.head_similarities(emb[None, :], self.served(control, head))
        return control.values[int(np.argmax(sims[0]))]
