"""Learning from annotators, in three rooms: `record` (webhook events, queued durably, then applied), `examples`
(an annotation → labelled embeddings) and `trainer` (feedback → new heads → a new model version)."""

from cliplabel.services.feedback.examples import ExampleMaker
from cliplabel.services.feedback.record import FeedbackService
from cliplabel.services.feedback.trainer import Trainer

__all__ = ["ExampleMaker", "FeedbackService", "Trainer"]
