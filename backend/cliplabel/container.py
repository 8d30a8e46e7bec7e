"""The services behind the HTTP edge, built once per process: setup, predict, webhook, versions, health."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cliplabel.core.domain import Encoder, LabelConfig, ModelVersion, ProjectState
from cliplabel.core.errors import CliplabelError, InvalidRequestError, SettingsError
from cliplabel.core.metrics import Metrics
from cliplabel.core.settings import Settings
from cliplabel.jobs.protocols import Dispatcher, Trigger
from cliplabel.jobs.rq import RqBulk, RqTrigger, WorkerContext
from cliplabel.jobs.threads import BackgroundThread, BulkThread
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.labelstudio.client import ProjectClients
from cliplabel.labelstudio.connections import LabelStudioConnections, LabelStudioDefaults
from cliplabel.labelstudio.fetch import ImageFetcher
from cliplabel.model.batcher import MicroBatcher
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.services import report
from cliplabel.services.accept import AcceptReport, AutoAccept
from cliplabel.services.audit import AuditReport, AuditService, ProjectLabels
from cliplabel.services.bulk import BulkJobs, JobKind, JobStatus
from cliplabel.services.bulk.rescore import CachedRescorer
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import DEFAULT_BACKGROUND_PROMPTS, BoxDetector, DetectorConfig
from cliplabel.services.feedback import ExampleMaker, FeedbackService, Trainer
from cliplabel.services.feedback.confirm import AnnotationConfirmer
from cliplabel.services.predict import Predictor
from cliplabel.services.reference_index import ReferenceIndex
from cliplabel.services.report import QualityReport
from cliplabel.services.review import ReviewService
from cliplabel.services.search import ProjectIndex, SearchService
from cliplabel.services.versions import current_version, known_versions
from cliplabel.store import Store, open_store
from cliplabel.store.heads import HeadStore
from cliplabel.vision import prompts
from cliplabel.vision.boxes import BoxParams
from cliplabel.vision.proposals import ProposalParams

logger = logging.getLogger(__name__)
DEFAULT_PROJECT = "0"  # for callers that send a label config but no project
# How long a request waits for a label set's prompt vectors still being computed before it answers 503 model_warming
# with Retry-After: well below Label Studio's 100 s (the whole request must answer within 60 s).
WARM_WAIT_S = 20.0


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
    clients: ProjectClients
    # For work without Label Studio (`cliplabel label`), which composes them itself.
    embeddings: EmbeddingService
    detector: BoxDetector
    class_vectors: ClassVectors
    # Review the uncertain first (sampling, views, clusters) and search by text or example.
    review: ReviewService
    search: SearchService
    # Auto-accept at a measured precision, and the label audit (confident learning).
    accept: AutoAccept
    audit: AuditService

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "cliplabel", "model": self.slug,
                "encoder_id": self.encoder.encoder_id, "store": self.store.kind,
                "warming": self.embeddings.warming()}

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
            self.predictor.warm(config)
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
        # A large label set's prompts may still be encoding: answer 503 model_warming before Label Studio gives up,
        # rather than block (bulk jobs, which have no such deadline, wait for them instead).
        self.predictor.warm(config, WARM_WAIT_S)
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
        return known_versions(self.store, pid, self.encoder.encoder_id, self.slug)

    def start_job(self, project: object, kind: JobKind, chunk_size: int) -> JobStatus:
        """See `start_bulk_job`."""
        return start_bulk_job(self.bulk, self.dispatcher, project, kind, chunk_size)

    def job_status(self, job_id: str) -> JobStatus:
        return self.bulk.status(job_id)

    def cancel_job(self, job_id: str) -> JobStatus:
        return self.bulk.cancel(job_id)

    def list_jobs(self, project: object) -> list[JobStatus]:
        return self.bulk.list(ls_format.project_id(project))

    def run_job_here(self, project: object, kind: JobKind, chunk_size: int,
                     progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Creates a bulk job and runs it to the end in this process (the CLI); `progress` sees its status after
        the plan and after each chunk."""
        spec = self.bulk.create(ls_format.project_id(project), kind, chunk_size)
        return self.bulk.run_all(spec.job_id, progress=progress)

    def worker_context(self) -> WorkerContext:
        """What the rq jobs of a `cliplabel worker` process run with."""
        return WorkerContext(feedback=self.feedback, bulk=self.bulk)

    def metrics_snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot()

    def report(self, project: object) -> QualityReport:
        """The quality report of a project, from Label Studio's tasks and predictions and our feedback store."""
        pid = ls_format.project_id(project)
        state = self.store.get_project(pid)
        client = self.clients(pid)
        schema = state.label_config if state else client.label_config(int(pid))
        config = label_config.parse_label_config(schema)
        version = current_version(self.store, pid, self.encoder.encoder_id, self.slug)
        built = report.build_report(pid, version.name, list(client.tasks(int(pid))), client.predictions(int(pid)),
                                    self.store.list_versions(pid, self.encoder.encoder_id),
                                    self.store.list_feedback(pid),
                                    [(c.from_name, v) for c in config.controls for v in c.values])
        if not any(c.kind == "choices" and not c.multiple for c in config.controls):
            return built  # the label audit needs a single-choice control
        try:
            audit = self.audit.audit(pid, write=False)
        except CliplabelError as exc:  # the audit is one section of the report: the rest still answers
            logger.warning("report project=%s: no label audit: %s", pid, exc.detail)
            return built
        return dataclasses.replace(built, audited_labels=audit.labelled, suspect_labels=tuple(
            (s.task_id, s.label, s.suggested, s.mislabeling) for s in audit.suspects))

    def auto_accept(self, project: object, dry_run: bool, target: float, confidence: float,
                    chunk_size: int = 64) -> AcceptReport:
        """A dry run answers what accepting would do; otherwise the job is recorded and applied in the background
        (its status: `GET /accept/{job_id}`)."""
        if dry_run:
            return self.accept.dry_run(project, target, confidence)
        report = self.accept.start(project, target, confidence, chunk_size)
        if report.job is not None:
            self.pool.submit(self._apply_accept, report.job.job_id)
        return report

    def _apply_accept(self, job_id: str) -> None:
        try:
            self.accept.run(job_id)
        except CliplabelError as exc:
            logger.warning("accept job=%s failed: %s", job_id, exc.detail)
            self.accept.journal.record_error(job_id, exc.detail, final=True)

    def audit_labels(self, project: object, write: bool) -> AuditReport:
        return self.audit.audit(project, write)

    def close(self, close_store: bool) -> None:
        if self.trigger is not None:
            self.trigger.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.predictor.close()
        if isinstance(self.encoder, MicroBatcher):
            self.encoder.close()
        if close_store:
            self.store.close()


def start_bulk_job(bulk: BulkJobs, dispatcher: Dispatcher | None, project: object, kind: JobKind,
                   chunk_size: int) -> JobStatus:
    """Creates a bulk job and hands it to the background (thread or rq workers); answers at once. While the
    project's job of this kind still makes progress, that job is answered instead of starting a second."""
    if dispatcher is None:
        raise InvalidRequestError("this process does not run bulk jobs")
    pid = ls_format.project_id(project)
    status, created = bulk.start(pid, kind, chunk_size)
    if not created:
        logger.info("bulk job=%s already runs on project %s: not starting another", status.job_id, pid)
        return status
    dispatcher.start(status.job_id)
    return status


def rescore_after_train(bulk: BulkJobs, dispatcher: Dispatcher, chunk_size: int) -> Callable[[ModelVersion], None]:
    """The callback that re-scores a project's unlabelled tasks with each version a retrain adds."""
    def rescore(version: ModelVersion) -> None:
        status = start_bulk_job(bulk, dispatcher, version.project_id, "rescore", chunk_size)
        logger.info("project=%s: re-scoring unlabelled tasks with %s as bulk job %s", version.project_id,
                    version.name, status.job_id)

    return rescore


def read_prompt_file(path: Path, variable: str, parse: Callable[[str], tuple[str, ...]]) -> tuple[str, ...]:
    """A prompt file named by a setting, parsed.

    Raises:
        SettingsError: naming the variable, when the file is unreadable or its prompts are not valid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc}") from exc
    try:
        return parse(text)
    except ValueError as exc:
        raise SettingsError(f"{variable}: {path}: {exc}") from exc


def prompt_templates(settings: Settings) -> tuple[str, ...]:
    """The zero-shot prompt templates: CLIPLABEL_TEMPLATES' file, or the defaults."""
    if settings.templates_file is None:
        return prompts.DEFAULT_TEMPLATES
    return read_prompt_file(settings.templates_file, "CLIPLABEL_TEMPLATES", prompts.parse_templates)


def detector_config(settings: Settings) -> DetectorConfig:
    """The box path's knobs from the settings (the rest keep the defaults measured in bench/bench_boxes.py)."""
    background = (read_prompt_file(settings.background_prompts_file, "CLIPLABEL_BACKGROUND_PROMPTS",
                                   prompts.parse_prompt_lines)
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

        encoder = load_encoder(settings.model, settings.pretrained, settings.device, settings.torch_threads,
                               runtime=settings.runtime, cache_dir=settings.onnx_cache_dir)
    if settings.microbatch:
        encoder = MicroBatcher(encoder, settings.batch_size, settings.microbatch_wait_ms)
    if store is None:
        store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
    store.ping()
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=settings.fetch_workers, thread_name_prefix="cliplabel-io")
    device_decode = settings.decode == "device" or (settings.decode == "auto" and encoder.device.startswith("cuda"))
    embeddings = EmbeddingService(encoder, store, settings.batch_size, settings.max_image_pixels, pool, metrics,
                                  device_decode=device_decode, matrix_dtype=settings.matrix_dtype)
    fetcher = ImageFetcher(settings.max_image_bytes, settings.fetch_timeout_s, settings.local_files_root,
                           pool_size=settings.fetch_workers)
    defaults = LabelStudioDefaults(
        url=settings.label_studio_url,
        api_key=settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None,
        allowed_hosts=settings.allowed_hosts,
        local_files_root=str(settings.local_files_root) if settings.local_files_root else None)
    connections = LabelStudioConnections(defaults, fetcher)
    templates = prompt_templates(settings)
    class_vectors = ClassVectors(embeddings, templates)
    detector = BoxDetector(embeddings, store, pool, class_vectors, detector_config(settings))
    predictor = Predictor(embeddings, connections, fetcher, class_vectors, detector, ReferenceIndex(store, embeddings),
                          pool, metrics, fetch_workers=settings.fetch_workers)
    slug = encoder.slug
    heads = HeadStore(store)
    clients = ProjectClients(store.get_project, connections.client)
    bulk = BulkJobs(store, predictor, clients, encoder.encoder_id, slug, heads.heads_for)
    project_index = ProjectIndex(store, clients, connections, predictor.references)
    encoder_id = encoder.encoder_id
    review = ReviewService(store, clients, project_index,
                           lambda pid: current_version(store, pid, encoder_id, slug).name)
    bulk.runner.rescorer = CachedRescorer(predictor)
    project_labels = ProjectLabels(store, clients, project_index, embeddings, class_vectors, encoder_id, slug,
                                   heads.heads_for)
    dispatcher: Dispatcher | None = None
    if settings.redis_url:
        # Workers dispatch too: a retrain in a worker starts its re-score on the bulk queue.
        dispatcher = RqBulk(settings.redis_url, settings.redis_prefix)
    elif not worker:
        dispatcher = BulkThread(bulk)
    on_new_version = (rescore_after_train(bulk, dispatcher, settings.batch_size * 2)
                      if settings.rescore_after_train and dispatcher is not None else None)
    # With basic auth on, /webhook takes unauthenticated annotation events (Label Studio sends them without the
    # header): each must then be confirmed against Label Studio's API, or it teaches nothing.
    confirmer = AnnotationConfirmer(connections.client, required=settings.basic_auth_user is not None)
    examples = ExampleMaker(store, heads, embeddings, class_vectors, detector, connections.fetch_image,
                            encoder.encoder_id, slug, confirmer)
    trainer = Trainer(store, heads, embeddings, class_vectors, detector, encoder, slug, metrics,
                      settings.retrain_every, on_new_version)
    feedback = FeedbackService(store, metrics, heads, examples, trainer, connections.client,
                               lease_s=settings.event_lease_s)
    trigger: Trigger | None = None
    if not worker:
        trigger = RqTrigger(settings.redis_url, settings.redis_prefix) if settings.redis_url else BackgroundThread(feedback)
    return Services(settings=settings, encoder=encoder, store=store, predictor=predictor, metrics=metrics,
                    pool=pool, slug=slug, feedback=feedback, trigger=trigger, bulk=bulk, dispatcher=dispatcher,
                    clients=clients, embeddings=embeddings, detector=detector, class_vectors=class_vectors,
                    review=review, search=SearchService(project_index, embeddings, templates),
                    accept=AutoAccept(project_labels, clients, store), audit=AuditService(project_labels, clients))
