"""`cliplabel`, the command line: `serve` and `worker` run the backend; `health`, `label`, `prelabel`, `report`,
`review`, `search`, `accept` and `audit` are one-shot commands (see `parser()` for all of them and their options)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cliplabel import __version__
from cliplabel.core.errors import CliplabelError, SettingsError
from cliplabel.core.settings import Settings

if TYPE_CHECKING:  # the commands import what they use when they run: `--help` stays fast
    from cliplabel.services.accept import AcceptReport
    from cliplabel.services.bulk import JobStatus

logger = logging.getLogger("cliplabel")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SERVICES = ("serve", "worker")  # long-running: they log what they do at CLIPLABEL_LOG_LEVEL
DESCRIPTION = """A Label Studio ML backend that pre-labels images with CLIP and learns from annotators.

`label`, `prelabel` and `report` print warnings and a progress bar only; -v adds our log. Settings come from the
environment (CLIPLABEL_*, LABEL_STUDIO_*; see the README)."""


def configure_logging(level: str, command: str, verbose: bool = False) -> None:
    """Once per process. Services log at `level`. One-shot commands stay quiet: warnings only, from everyone (open_clip
    alone logs a dozen INFO lines per model load), unless `verbose` lets our own loggers speak at `level`."""
    if command in SERVICES:
        logging.basicConfig(level=level, format=LOG_FORMAT)
        return
    quiet = max(logging.WARNING, int(logging.getLevelName(level)))
    logging.basicConfig(level=quiet, format=LOG_FORMAT)
    if verbose:
        logger.setLevel(level)


def progress_bar(total: int, unit: str, initial: int = 0) -> tqdm:
    """A progress bar on stderr whose rate counts what was done since it started (after `initial`), in units/s."""
    # smoothing=0: the average since the start, not a moving one; rate_noinv_fmt: always "n unit/s" (tqdm would
    # switch to "s/unit" below one per second).
    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, smoothing=0, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from cliplabel.api.app import create_app
    from cliplabel.container import detector_config, prompt_templates
    from cliplabel.model.encoder import load_encoder
    from cliplabel.store import open_store

    # Read the prompt files, load the model and open the store before the server starts, so a bad setting is one
    # clear line naming its variable, not a failed-lifespan traceback.
    prompt_templates(settings)
    detector_config(settings)
    encoder = load_encoder(settings.model, settings.pretrained, settings.device, settings.torch_threads,
                           runtime=settings.runtime, cache_dir=settings.onnx_cache_dir)
    store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
    app = create_app(settings, encoder=encoder, store=store)
    # access_log off: uvicorn would log every request line; ours log the project and counts without bodies.
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=10)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services
    from cliplabel.jobs.rq import run_worker

    if not settings.redis_url:
        logger.error("cliplabel worker needs CLIPLABEL_REDIS_URL; on the embedded store `cliplabel serve` learns by "
                     "itself")
        return 2
    services = build_services(settings, worker=True)
    try:
        run_worker(settings.redis_url, settings.redis_prefix, services.worker_context(), burst=args.burst)
    finally:
        services.close(close_store=True)
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the local backend answers /health (with basic auth when configured): a container healthcheck."""
    import requests

    auth = None
    if settings.basic_auth_user is not None and settings.basic_auth_pass is not None:
        auth = (settings.basic_auth_user, settings.basic_auth_pass.get_secret_value())
    try:
        resp = requests.get(f"http://127.0.0.1:{args.port}/health", auth=auth, timeout=args.timeout)
        healthy = resp.status_code == 200 and resp.json().get("status") == "UP"
    except (requests.RequestException, ValueError):
        healthy = False
    return 0 if healthy else 1


def _label(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from cliplabel.container import build_services
    from cliplabel.labelstudio import label_config
    from cliplabel.offline import export
    from cliplabel.offline.label_folder import find_images, label_images

    if args.label_config:
        config = label_config.parse_label_config(Path(args.label_config).read_text())
        classes = list(dict.fromkeys(v for c in config.controls for v in c.values))
    else:
        classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    if not classes:
        logger.error("give --classes a,b,c or --label-config FILE")
        return 2
    paths = find_images(Path(args.directory))
    if not paths:
        logger.error("no images under %s", args.directory)
        return 2
    services = build_services(settings, worker=True)
    try:
        boxes = args.boxes or args.format in ("yolo", "coco")
        with logging_redirect_tqdm(), progress_bar(len(paths), "img") as bar:
            items = label_images(services.embeddings, services.detector, services.class_vectors,
                                 settings.max_image_bytes, paths, classes, boxes, batch=settings.batch_size,
                                 progress=lambda done, _total: bar.update(done - bar.n))
    finally:
        services.close(close_store=True)
    out = Path(args.out)
    if args.format == "yolo":
        counts = export.write_yolo(items, classes, out, val_frac=args.val, min_box_px=args.min_box)
    elif args.format == "coco":
        counts = export.write_coco(items, classes, out / "annotations.json")
    else:
        counts = export.write_folders(items, out, args.threshold)
    print(f"{len(items)} of {len(paths)} images labelled into {out} ({args.format}): {counts}")
    return 0


def _job_progress() -> tuple[Callable[[JobStatus], None], Callable[[], None]]:
    """(callback for a bulk job's statuses, close): a bar over the job's tasks, opened once the plan knows them;
    tasks that already had a prediction start it off and do not count towards the rate."""
    bars: list[tqdm] = []

    def progress(status: JobStatus) -> None:
        if not bars:
            bars.append(progress_bar(status.total, "tasks", initial=status.done))
        bars[0].update(status.done - bars[0].n)

    def close() -> None:
        for bar in bars:
            bar.close()

    return progress, close


def _prelabel(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    started = time.monotonic()
    progress, close_bar = _job_progress()
    try:
        with logging_redirect_tqdm():
            stats = services.run_job_here(args.project, "rescore" if args.unlabelled else "prelabel", args.batch,
                                          progress=progress)
    finally:
        close_bar()
        services.close(close_store=True)
    print(f"project {args.project}: {stats.predicted} predicted, {stats.skipped} already had "
          f"{stats.model_version}, {stats.failed} failed, of {stats.total} tasks in "
          f"{time.monotonic() - started:.1f}s (job {stats.job_id})")
    for error in stats.errors:
        print(f"  {error}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from cliplabel.container import build_services
    from cliplabel.offline.plots import write_plots
    from cliplabel.services import report

    services = build_services(settings, worker=True)
    try:
        quality = services.report(args.project)
    finally:
        services.close(close_store=True)
    out = Path(args.out)
    plots = write_plots(quality, out)
    (out / "report.md").write_text(report.markdown(quality, plots))
    print(f"project {args.project}: report written to {out / 'report.md'} with {len(plots)} plots")
    return 0


def _review(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    try:
        done = services.review.start(args.project, args.title, update_predictions=not args.keep_predictions)
    finally:
        services.close(close_store=True)
    print(f"project {done.project_id}: sampling {done.sampling!r} over {done.model_version}; view {done.view_id} "
          f"{done.view_title!r}; {done.tasks_placed} tasks in {done.clusters} clusters, "
          f"{done.predictions_updated} predictions updated, {done.tasks_without_embedding} tasks not encoded yet")
    return 0


def _search(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    try:
        if args.duplicates is not None:
            groups, found = services.search.duplicates(args.project, args.duplicates)
            print(f"project {args.project}: {len(groups)} groups at cosine >= {args.duplicates} among "
                  f"{len(found.task_ids)} tasks ({found.missing} not encoded yet)")
            for group in groups:
                print(" ".join(str(t) for t in group))
            return 0
        found_ranked = (services.search.by_text(args.project, args.text, args.k) if args.text is not None
                        else services.search.by_task(args.project, args.task, args.k))
    finally:
        services.close(close_store=True)
    print(f"project {args.project}: {found_ranked.indexed} tasks searched ({found_ranked.missing} not encoded yet)")
    for rank, (task, score) in enumerate(zip(found_ranked.task_ids, found_ranked.scores), 1):
        print(f"{rank:4d}  task {task}  {score:.4f}")
    return 0


def _accept(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    progress, close_bar = _job_progress()
    try:
        if args.undo:
            deleted = services.accept.undo(args.project, args.job)
            print(f"project {args.project}: {deleted} auto-accepted annotations deleted")
            return 0
        report = services.auto_accept(args.project, True, args.target, args.confidence) if args.dry_run \
            else services.accept.start(args.project, args.target, args.confidence, args.batch)
        _print_accept(report)
        if report.job is not None:
            with logging_redirect_tqdm():
                status = services.accept.run(report.job.job_id, progress=progress)
            close_bar()
            print(f"job {status.job_id}: {status.predicted} annotations made, {status.failed} tasks left alone")
            for error in status.errors:
                print(f"  {error}", file=sys.stderr)
    finally:
        close_bar()
        services.close(close_store=True)
    return 0


def _print_accept(report: AcceptReport) -> None:
    print(f"project {report.project_id} ({report.model_version}): target precision {report.target} at "
          f"{report.confidence:.0%} confidence, from {report.heldout} human labels scored out of sample")
    for t in report.thresholds:
        where = "—" if t.threshold is None else f">= {t.threshold:.4f}"
        print(f"  {t.label:<24} {where:<10} {t.source:<7} {t.heldout_correct}/{t.heldout} held out, "
              f"lower bound {t.lower_bound:.4f}, accepts {report.per_class.get(t.label, 0)}")
    print(f"{'would accept' if report.job is None else 'accepting'} {report.accepted} of {report.candidates} tasks "
          f"without annotation (coverage {report.coverage:.1%}); expected errors {report.expected_errors:.1f} "
          f"(at most {report.errors_upper:.1f} at the bounds); {report.not_encoded} tasks not encoded yet")


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    try:
        found = services.audit_labels(args.project, write=not args.dry_run)
    finally:
        services.close(close_store=True)
    print(f"project {found.project_id} ({found.model_version}): {found.labelled} human labels audited "
          f"({found.not_audited} left out), {len(found.suspects)} suspect, {found.predictions_marked} predictions "
          f"marked, view {found.view_id} {found.view_title or ''}")
    for s in found.suspects[:args.show]:
        print(f"  task {s.task_id} annotation {s.annotation_id}: {s.label!r}, looks like {s.suggested!r} "
              f"(mislabeling {s.mislabeling:.3f})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": _serve, "worker": _worker, "health": _health, "label": _label, "prelabel": _prelabel, "report": _report,
    "review": _review, "search": _search, "accept": _accept, "audit": _audit}


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="cliplabel", description=DESCRIPTION,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    main_parser.add_argument("--version", action="version", version=f"cliplabel {__version__}")
    main_parser.set_defaults(verbose=False)  # for the commands without -v
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-v", "--verbose", action="store_true", help="also log our progress (at CLIPLABEL_LOG_LEVEL)")
    sub = main_parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = sub.add_parser("serve", help="run the Label Studio ML backend (HTTP)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    work = sub.add_parser("worker", help="process feedback, retraining and bulk jobs (rq; needs CLIPLABEL_REDIS_URL)")
    work.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    health = sub.add_parser("health", help="exit 0 when the backend on this machine is up (for healthchecks)")
    health.add_argument("--port", type=int, default=9090)
    health.add_argument("--timeout", type=float, default=3.0)
    label = sub.add_parser("label", parents=[quiet],
                           help="label a folder of images (no Label Studio) into YOLO, COCO or class folders")
    label.add_argument("directory")
    label.add_argument("--classes", help="comma-separated class names")
    label.add_argument("--label-config", help="take the classes from a Label Studio label config file")
    label.add_argument("--out", required=True)
    label.add_argument("--format", choices=("yolo", "coco", "folder"), default="folder")
    label.add_argument("--boxes", action="store_true", help="also detect boxes (implied by yolo and coco)")
    label.add_argument("--threshold", type=float, default=0.5, help="folder: scores below go to _review/")
    label.add_argument("--val", type=float, default=0.2, help="yolo: validation fraction, stratified by class")
    label.add_argument("--min-box", type=float, default=4.0, help="yolo: drop boxes smaller than this (pixels)")
    pre = sub.add_parser("prelabel", parents=[quiet],
                         help="predict every task of a Label Studio project and store the predictions")
    pre.add_argument("--project", type=int, required=True)
    pre.add_argument("--batch", type=int, default=64, help="tasks per prediction batch (one chunk of the job)")
    pre.add_argument("--unlabelled", action="store_true",
                     help="only tasks without annotations, from cached embeddings where possible (after a retrain)")
    rep = sub.add_parser("report", parents=[quiet],
                         help="quality report of a project: per-class counts, scores, acceptance, learning")
    rep.add_argument("--project", type=int, required=True)
    rep.add_argument("--out", required=True, help="directory for report.md and its PNG plots")
    rev = sub.add_parser("review", parents=[quiet],
                         help="review the uncertain first: uncertainty sampling, clusters, a least-certain view")
    rev.add_argument("--project", type=int, required=True)
    rev.add_argument("--title", default="Review: least certain first", help="the Data Manager view's title")
    rev.add_argument("--keep-predictions", action="store_true",
                     help="do not set cluster and neighbours on the stored predictions")
    find = sub.add_parser("search", parents=[quiet],
                          help="rank a project's tasks by a text or an example task, or list near-duplicates")
    find.add_argument("--project", type=int, required=True)
    what = find.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="e.g. 'a red circle'")
    what.add_argument("--task", type=int, help="a task id: the tasks whose image is most like its image")
    what.add_argument("--duplicates", type=float, metavar="COSINE", help="groups at this cosine, e.g. 0.97")
    find.add_argument("-k", type=int, default=20, help="how many tasks to print (default 20)")
    acc = sub.add_parser("accept", parents=[quiet],
                         help="auto-accept the predictions certain enough, at a measured precision (marked, undoable)")
    acc.add_argument("--project", type=int, required=True)
    acc.add_argument("--dry-run", action="store_true", help="only print the thresholds and what would be accepted")
    acc.add_argument("--target", type=float, default=0.98, help="precision to certify (default 0.98)")
    acc.add_argument("--confidence", type=float, default=0.95, help="of the Clopper-Pearson bound (default 0.95)")
    acc.add_argument("--batch", type=int, default=64, help="tasks per chunk of the job")
    acc.add_argument("--undo", action="store_true", help="delete auto-accepted annotations not edited since")
    acc.add_argument("--job", help="with --undo: only this accept job's")
    aud = sub.add_parser("audit", parents=[quiet],
                         help="find human labels that likely disagree with their image (confident learning)")
    aud.add_argument("--project", type=int, required=True)
    aud.add_argument("--dry-run", action="store_true", help="do not write mislabeling scores or the view")
    aud.add_argument("--show", type=int, default=20, help="suspects to print (default 20)")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cliplabel: {exc.detail}", file=sys.stderr)
        return 2
    if args.command != "health":
        configure_logging(settings.log_level, args.command, verbose=args.verbose)
    try:
        return COMMANDS[args.command](args, settings)
    except CliplabelError as exc:
        logger.error("%s", exc.detail)
        return 2


if __name__ == "__main__":
    sys.exit(main())
