"""The services behind the HTTP edge, built once per process: setup, predict, webhook, versions, health."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cliplabel.labelstudio import label_config
from cliplabel.labelstudio import format as ls_format
from cliplabel.vision import prompts
from cliplabel.services import report
from cliplabel.model.batcher import MicroBatcher
from cliplabel.vision.boxes import BoxParams
from cliplabel.core.settings import Settings
from cliplabel.services.detect import DEFAULT_BACKGROUND_PROMPTS, DetectorConfig
from cliplabel.core.domain import Encoder, LabelConfig, ModelVersion, ProjectState
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.core.errors import CliplabelError, InvalidRequestError
from cliplabel.services.feedback import FeedbackService
from cliplabel.labelstudio.fetch import ImageFetcher
from cliplabel.jobs.runners import BackgroundThread, BulkThread, Dispatcher, RqBulk, RqTrigger, Trigger
from cliplabel.core.metrics import Metrics
from cliplabel.services.predict import LabelStudioDefaults, Predictor
from cliplabel.services.bulk_jobs import BulkJobs, JobKind, JobStatus
from cliplabel.vision.proposals import ProposalParams
from cliplabel.services.report import QualityReport
from cliplabel.store import Store, open_store
from cliplabel.services.versions import current_version

logger = logging.getLogger(__name__)
DEFAULT_PROJECT = "0"  # for callers that send a label config but no project


@dataclass
class Services:
    settings: Settings
    encoder: Encoder
    store: Store
    predictor: Predictor
    metrics: Metrics
    pool: ThreadPoolExecutor
    slug: str
    feedback: FeedbackService
    trigger: Trigger | None
    bulk: BulkJobs
    dispatcher: Dispatcher | None

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "cliplabel", "model": self.slug,
                "encoder_id": self.encoder.encoder_id, "store": self.store.kind}

    def setup(self, project: object, schema: str, hostname: str | None, access_token: str | None) -> str:
        """Validates the label config, remembers the project, and returns its current model version."""
        pid = ls_format.project_id(project)
        config = label_config.parse_label_config(schema)
        state = ProjectState(project_id=pid, label_config=schema, hostname=hostname or None,
                             access_token=access_token or None)
        if self.store.get_project(pid) != state:
            self.store.put_project(state)
        version = current_version(self.store, pid, self.encoder.encoder_id, self.slug)
        # Encoding a few hundred prompts takes seconds with a large model, more than /setup's 3 s budget: do it in
        # the background so the first /predict finds the class vectors ready.
        self.pool.submit(self._warm_class_vectors, pid, config)
        logger.info("setup project=%s version=%s", pid, version.name)
        return version.name

    def _warm_class_vectors(self, pid: str, config: LabelConfig) -> None:
        try:
            for control in config.controls:
                self.predictor.class_vectors(control)
                if control.kind == "rectanglelabels":
                    self.predictor.detector.background_vectors(control)
        except CliplabelError as exc:
            logger.warning("project=%s: could not prepare prompt vectors: %s", pid, exc.detail)

    def predict(self, tasks: Sequence[object], project: object | None, schema: str | None,
                params: dict[str, Any]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        pid = ls_format.project_id(project) if project is not None else DEFAULT_PROJECT
        state = self.store.get_project(pid)
        schema = schema or (state.label_config if state else None)
        if not schema:
            raise InvalidRequestError(f"no label config: send label_config or call /setup for project {pid} first")
        config = label_config.parse_label_config(schema)
        version = current_version(self.store, pid, self.encoder.encoder_id, self.slug)
        preds = self.predictor.predict(tasks, config, state, version.name, params, self.feedback.heads_for(version))
        logger.info("predict project=%s tasks=%d version=%s in %.3fs", pid, len(tasks), version.name,
                    time.perf_counter() - started)
        return [ls_format.prediction_json(p) for p in preds]

    def webhook(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Records the event durably and wakes the feedback worker; never trains inline."""
        answer = self.feedback.record(action, payload)
        if answer["status"] == "queued" and self.trigger is not None:
            self.trigger.kick()
        return answer

    def versions(self, project: str | None) -> list[str]:
        pid = ls_format.project_id(project) if project is not None else DEFAULT_PROJECT
        current_version(self.store, pid, self.encoder.encoder_id, self.slug)
        return [v.name for v in self.store.list_versions(pid, self.encoder.encoder_id)]

    def start_job(self, project: object, kind: JobKind, chunk_size: int) -> JobStatus:
        """Creates a bulk job and hands it to the background (thread or rq workers); answers at once. While the
        project's job of this kind still makes progress, that job is answered instead of starting a second."""
        if self.dispatcher is None:
            raise InvalidRequestError("this process does not run bulk jobs")
        pid = ls_format.project_id(project)
        running = self.bulk.active(pid, kind)
        if running is not None:
            logger.info("bulk job=%s already runs on project %s: not starting another", running.job_id, pid)
            return running
        spec = self.bulk.create(pid, kind, chunk_size)
        self.dispatcher.start(spec.job_id)
        return self.bulk.status(spec.job_id)

    def _rescore_after_train(self, version: ModelVersion) -> None:
        status = self.start_job(version.project_id, "rescore", self.settings.batch_size * 2)
        logger.info("project=%s: re-scoring unlabelled tasks with %s as bulk job %s", version.project_id,
                    version.name, status.job_id)

    def report(self, project: object) -> QualityReport:
        """The quality report of a project, from Label Studio's tasks and predictions and our feedback store."""
        pid = ls_format.project_id(project)
        state = self.store.get_project(pid)
        client = self.bulk.client(pid)
        schema = state.label_config if state else str(client.project(int(pid)).get("label_config", ""))
        config = label_config.parse_label_config(schema)
        version = current_version(self.store, pid, self.encoder.encoder_id, self.slug)
        return report.build_report(pid, version.name, list(client.tasks(int(pid))), client.predictions(int(pid)),
                                   self.store.list_versions(pid, self.encoder.encoder_id),
                                   self.store.list_feedback(pid),
                                   [(c.from_name, v) for c in config.controls for v in c.values])

    def close(self, close_store: bool) -> None:
        if self.trigger is not None:
            self.trigger.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.predictor.fetch_pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.encoder, MicroBatcher):
            self.encoder.close()
        if close_store:
            self.store.close()


def detector_config(settings: Settings) -> DetectorConfig:
    """The box path's knobs from the settings (the rest keep the defaults measured in bench/bench_boxes.py)."""
    background = (prompts.load_prompt_lines(settings.background_prompts_file, "CLIPLABEL_BACKGROUND_PROMPTS")
                  if settings.background_prompts_file else DEFAULT_BACKGROUND_PROMPTS)
    return DetectorConfig(
        proposals=ProposalParams(selective_search=settings.selective_search, proposal_side=settings.proposal_side),
        boxes=BoxParams(max_crops=settings.max_crops, max_boxes=settings.max_boxes),
        context_factor=2.0 if settings.box_context else None,
        background_prompts=background)


def build_services(settings: Settings, encoder: Encoder | None = None, store: Store | None = None,
                   worker: bool = False) -> Services:
    """Loads the model (unless given), opens the store and wires the services.

    Feedback is processed by a background thread on the embedded store, by `cliplabel worker` processes with Redis
    (the API process then only enqueues). `worker=True` builds the services of such a worker (no trigger).
    """
    if encoder is None:
        from cliplabel.model.encoder import load_encoder

        encoder = load_encoder(settings.model, settings.pretrained, settings.device, settings.torch_threads)
    if settings.microbatch:
        encoder = MicroBatcher(encoder, settings.batch_size, settings.microbatch_wait_ms)
    if store is None:
        store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
    store.ping()
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=settings.fetch_workers, thread_name_prefix="cliplabel-io")
    device_decode = settings.decode == "device" or (
        settings.decode == "auto" and str(getattr(encoder, "device", "cpu")).startswith("cuda"))
    embeddings = EmbeddingService(encoder, store, settings.batch_size, settings.max_image_pixels, pool, metrics,
                                  resize_mode=getattr(encoder, "resize_mode", "shortest"), device_decode=device_decode)
    fetcher = ImageFetcher(settings.max_image_bytes, settings.fetch_timeout_s, settings.local_files_root,
                           pool_size=settings.fetch_workers)
    defaults = LabelStudioDefaults(
        url=settings.label_studio_url,
        api_key=settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None,
        allowed_hosts=settings.allowed_hosts,
        local_files_root=str(settings.local_files_root) if settings.local_files_root else None)
    fetch_pool = ThreadPoolExecutor(max_workers=settings.fetch_workers, thread_name_prefix="cliplabel-fetch")
    predictor = Predictor(embeddings, fetcher, pool, prompts.load_templates(settings.templates_file), defaults, metrics,
                          detector_config(settings), fetch_pool=fetch_pool)
    slug = getattr(encoder, "slug", "clip")
    feedback = FeedbackService(store, predictor, metrics, settings.retrain_every, slug)
    bulk = BulkJobs(store, predictor, slug, feedback.heads_for)
    trigger: Trigger | None = None
    dispatcher: Dispatcher | None = None
    if settings.redis_url:
        # Workers dispatch too: a retrain in a worker starts its re-score on the bulk queue.
        dispatcher = RqBulk(settings.redis_url, settings.redis_prefix)
        trigger = None if worker else RqTrigger(settings.redis_url, settings.redis_prefix)
    elif not worker:
        trigger, dispatcher = BackgroundThread(feedback), BulkThread(bulk)
    services = Services(settings=settings, encoder=encoder, store=store, predictor=predictor, metrics=metrics,
                        pool=pool, slug=slug, feedback=feedback, trigger=trigger, bulk=bulk, dispatcher=dispatcher)
    if settings.rescore_after_train and dispatcher is not None:
        feedback.on_new_version = services._rescore_after_train
    return services
