"""`cliplabel` command line: `serve` runs the ML backend, `worker` processes feedback with Redis."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from cliplabel import __version__
from cliplabel.core.settings import Settings
from cliplabel.core.errors import CliplabelError, SettingsError

logger = logging.getLogger("cliplabel")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from cliplabel.api.app import create_app
    from cliplabel.model.encoder import load_encoder
    from cliplabel.store import open_store

    # Load the model and open the store before the server starts, so a bad setting is one clear line, not a
    # failed-lifespan traceback.
    encoder = load_encoder(settings.model, settings.pretrained, settings.device, settings.torch_threads)
    store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
    app = create_app(settings, encoder=encoder, store=store)
    # access_log off: uvicorn would log every request line; ours log the project and counts without bodies.
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=10)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import redis
    from rq import SimpleWorker

    from cliplabel.jobs import runners as jobs
    from cliplabel.container import build_services

    if not settings.redis_url:
        logger.error("cliplabel worker needs CLIPLABEL_REDIS_URL; on the embedded store `cliplabel serve` learns by "
                     "itself")
        return 2
    services = build_services(settings, worker=True)
    jobs.WORKER_FEEDBACK, jobs.WORKER_BULK = services.feedback, services.bulk
    connection = redis.Redis.from_url(settings.redis_url)
    # SimpleWorker runs jobs in this process: the model stays loaded, and no fork breaks torch's or our thread pools.
    queues = jobs.worker_queues(settings.redis_prefix)
    worker = SimpleWorker(queues, connection=connection)
    logger.info("worker %s listening on queues=%s", services.bulk.worker, ",".join(queues))
    worker.work(burst=args.burst, with_scheduler=True)
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


def _progress(done: int, total: int, started: float, unit: str = "img", first: int = 0) -> None:
    """A one-line progress bar on stderr; the rate counts what was done since `started` (after `first`)."""
    width = 30
    filled = int(width * done / max(total, 1))
    rate = (done - first) / max(time.monotonic() - started, 1e-9)
    eta = (total - done) / rate if rate > 0 else 0.0
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.1f} {unit}/s eta {eta:.0f}s",
          end="" if done < total else "\n", file=sys.stderr, flush=True)


def _label(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from cliplabel.offline import export
    from cliplabel.labelstudio import label_config
    from cliplabel.offline.label_folder import find_images, label_images
    from cliplabel.container import build_services

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
        started = time.monotonic()
        items = label_images(services.predictor, paths, classes, boxes, batch=settings.batch_size,
                             progress=lambda d, t: _progress(d, t, started))
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


def _prelabel(args: argparse.Namespace, settings: Settings) -> int:
    from cliplabel.services.bulk_jobs import JobStatus
    from cliplabel.container import build_services

    services = build_services(settings, worker=True)
    try:
        spec = services.bulk.create(str(args.project), "rescore" if args.unlabelled else "prelabel", args.batch)
        started = time.monotonic()
        first: list[int] = []

        def progress(status: JobStatus) -> None:
            if not first:  # tasks that already had a prediction do not count towards the rate
                first.append(status.done)
            _progress(status.done, status.total, started, "tasks", first[0])

        stats = services.bulk.run_all(spec.job_id, progress=progress)
    finally:
        services.close(close_store=True)
    print(f"project {args.project}: {stats.predicted} predicted, {stats.skipped} already had "
          f"{stats.model_version}, {stats.failed} failed, of {stats.total} tasks in "
          f"{time.monotonic() - started:.1f}s (job {spec.job_id})")
    for error in stats.errors:
        print(f"  {error}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from cliplabel.services import report
    from cliplabel.offline.plots import write_plots
    from cliplabel.container import build_services

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cliplabel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cliplabel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the Label Studio ML backend (HTTP)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    work = sub.add_parser("worker", help="process feedback and retrain (rq worker; needs CLIPLABEL_REDIS_URL)")
    work.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    health = sub.add_parser("health", help="exit 0 when the backend on this machine is up (for healthchecks)")
    health.add_argument("--port", type=int, default=9090)
    health.add_argument("--timeout", type=float, default=3.0)
    label = sub.add_parser("label", help="label a folder of images (no Label Studio) into YOLO, COCO or class folders")
    label.add_argument("directory")
    label.add_argument("--classes", help="comma-separated class names")
    label.add_argument("--label-config", help="take the classes from a Label Studio label config file")
    label.add_argument("--out", required=True)
    label.add_argument("--format", choices=("yolo", "coco", "folder"), default="folder")
    label.add_argument("--boxes", action="store_true", help="also detect boxes (implied by yolo and coco)")
    label.add_argument("--threshold", type=float, default=0.5, help="folder: scores below go to _review/")
    label.add_argument("--val", type=float, default=0.2, help="yolo: validation fraction, stratified by class")
    label.add_argument("--min-box", type=float, default=4.0, help="yolo: drop boxes smaller than this (pixels)")
    pre = sub.add_parser("prelabel", help="predict every task of a Label Studio project and store the predictions")
    pre.add_argument("--project", type=int, required=True)
    pre.add_argument("--batch", type=int, default=64, help="tasks per prediction batch (one chunk of the job)")
    pre.add_argument("--unlabelled", action="store_true",
                     help="only tasks without annotations, from cached embeddings where possible (after a retrain)")
    rep = sub.add_parser("report", help="quality report of a project: per-class counts, scores, acceptance, learning")
    rep.add_argument("--project", type=int, required=True)
    rep.add_argument("--out", required=True, help="directory for report.md and its PNG plots")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cliplabel: {exc.detail}", file=sys.stderr)
        return 2
    if args.command != "health":
        configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "worker":
            return _worker(args, settings)
        if args.command == "health":
            return _health(args, settings)
        if args.command == "label":
            return _label(args, settings)
        if args.command == "prelabel":
            return _prelabel(args, settings)
        if args.command == "report":
            return _report(args, settings)
    except CliplabelError as exc:
        logger.error("%s", exc.detail)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
