"""Bulk jobs on a whole Label Studio project: pre-label every task, or re-score the unlabelled ones after a retrain.

A job is planned once (`planner`): the project's tasks are listed, those already holding a prediction of the job's
model version are skipped, and the rest are cut into chunks. Each chunk is then run (`runner`) by whoever has time:
the API process's background thread on the embedded store, any number of `cliplabel worker` processes (on any
machine) with Redis, or the CLI inline. What happened is recorded once in the store (`journal`), and the job's state
is read off those records by a pure function (`status`). `model` holds the vocabulary; `service` the one facade.
"""

from cliplabel.services.bulk.model import ChunkResult, JobKind, JobSpec, JobState, JobStatus, Plan
from cliplabel.services.bulk.service import BulkJobs

__all__ = ["BulkJobs", "ChunkResult", "JobKind", "JobSpec", "JobState", "JobStatus", "Plan"]
