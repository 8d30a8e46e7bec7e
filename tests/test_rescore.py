"""Re-scoring from the cache: after a first prediction, a re-score downloads nothing and follows the new head.

The bulk path (`CachedRescorer`, what a `rescore` job runs) must give the per-task path's predictions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cliplabel.container import build_services
from cliplabel.core.domain import Head
from cliplabel.core.settings import Settings
from cliplabel.labelstudio import label_config
from cliplabel.services.bulk.rescore import CachedRescorer, choose_rows
from cliplabel.vision import classify
from tests import synthetic
from tests.support import LS_TOKEN
from tests.test_boxes_api import BOTH_CONFIG, CLASSES

CHOICES_CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                  + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def _services(encoder, tmp_path, image_host, store=None, **overrides):  # type: ignore[no-untyped-def]
    settings = Settings(model="local-dir:tiny", data_dir=tmp_path / "data", batch_size=16, fetch_workers=4,
                        label_studio_url=image_host.url, label_studio_api_key=LS_TOKEN, **overrides)
    return build_services(settings, encoder=encoder, store=store, worker=True)


def _summary(preds):  # type: ignore[no-untyped-def]
    return [([c.choices for c in p.choices], [(r.label, tuple(round(v, 3) for v in r.bbox_xyxy)) for r in p.regions])
            for p in preds]


def test_rescore_downloads_nothing_and_follows_the_new_head(encoder, tmp_path, image_host) -> None:  # type: ignore[no-untyped-def]
    services = _services(encoder, tmp_path, image_host)
    try:
        rng = np.random.default_rng(11)
        scenes = [synthetic.scene(rng, 192, 160, n_objects=2) for _ in range(6)]
        tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/r{i}.png", synthetic.encode_png(img))}}
                 for i, (img, _) in enumerate(scenes)]
        config = label_config.parse_label_config(BOTH_CONFIG)
        first = services.predictor.predict(tasks, config, None, "m-r0")
        assert all(p.error is None for p in first) and sum(len(p.regions) for p in first) >= 6
        downloads = len(image_host.requests_seen)
        encoded = services.metrics.snapshot()

        # the same version again, from the cache: identical predictions, no download, nothing encoded
        again = services.predictor.predict(tasks, config, None, "m-r0", from_cache=True)
        assert _summary(again) == _summary(first)
        assert len(image_host.requests_seen) == downloads
        after = services.metrics.snapshot()
        for counter in ("images_encoded", "crops_encoded"):
            assert after.get(counter, 0) == encoded.get(counter, 0), counter
        assert after["images_from_cache"] - encoded.get("images_from_cache", 0) == len(tasks)

        # a new head (classes renamed by a permutation): the re-score follows it, still without a download
        choices = config.of_kind("choices")[0]
        vecs = services.class_vectors.zero_shot(choices)
        perm = np.roll(np.arange(len(CLASSES)), 1)  # class i's vector now answers to label i+1
        head = Head(choices.from_name, choices.values, vecs[np.argsort(perm)], np.zeros((0, vecs.shape[1]), np.float32),
                    encoder.logit_scale)
        rescored = services.predictor.predict(tasks, config, None, "m-r1", heads={choices.from_name: head},
                                              from_cache=True)
        for old, new in zip(first, rescored):
            (old_label,), (new_label,) = old.choices[0].choices, new.choices[0].choices
            assert CLASSES.index(new_label) == perm[CLASSES.index(old_label)]
            assert [r.label for r in new.regions] == [r.label for r in old.regions]  # no box head: boxes unchanged
        assert len(image_host.requests_seen) == downloads

        # an image never seen is downloaded as usual, next to the cached ones
        extra = {"id": 99, "data": {"image": image_host.add("/data/upload/new.png",
                                                            synthetic.encode_png(scenes[0][0].rotate(90)))}}
        mixed = services.predictor.predict([*tasks[:2], extra], config, None, "m-r0", from_cache=True)
        assert all(p.error is None for p in mixed)
        assert [path for _, path in image_host.requests_seen[downloads:]] == ["/data/upload/new.png"]
    finally:
        services.close(close_store=True)


def test_a_cached_image_whose_crops_are_gone_is_downloaded_again(encoder, tmp_path, image_host) -> None:  # type: ignore[no-untyped-def]
    services = _services(encoder, tmp_path, image_host)
    try:
        rng = np.random.default_rng(12)
        img, _ = synthetic.scene(rng, 160, 160, n_objects=2)
        tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/c.png", synthetic.encode_png(img))}}]
        config = label_config.parse_label_config(BOTH_CONFIG)
        first = services.predictor.predict(tasks, config, None, "m-r0")
        # a detector with other box settings proposes other windows: their crops are not cached yet
        detector = services.detector
        detector.config = dataclasses.replace(detector.config, boxes=dataclasses.replace(detector.config.boxes,
                                                                                          pad_frac=0.2))
        downloads = len(image_host.requests_seen)
        again = services.predictor.predict(tasks, config, None, "m-r0", from_cache=True)
        assert again[0].error is None and first[0].choices == again[0].choices
        assert [p for _, p in image_host.requests_seen[downloads:]] == ["/data/upload/c.png"]  # fetched lazily, once
    finally:
        services.close(close_store=True)


def _choices_config(extra: str = "") -> label_config.LabelConfig:
    return label_config.parse_label_config(
        f'<View><Image name="image" value="$image"/><Choices name="label" toName="image" {extra}>'
        + "".join(f'<Choice value="{c}"/>' for c in CLASSES[:6]) + "</Choices></View>")


@pytest.mark.parametrize("extra", [
    "",  # single choice, no threshold: every row chooses its top class
    'model_score_threshold="0.4"',  # rows below the threshold choose nothing
    'choice="multiple"',  # several classes per row (the per-row path)
    'choice="multiple" model_score_threshold="0.2"',
])
def test_choose_rows_equals_choose_row_by_row(extra: str) -> None:
    control = _choices_config(extra).of_kind("choices")[0]
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(6, 0.7), size=400).astype(np.float32)
    probs[0] = 1.0 / 6  # an exact tie: the first class wins, as in argmax
    got = choose_rows(control, probs)
    want = [classify.choose(control, p) for p in probs]
    assert got == want
    assert [c.probabilities for c in got if c] == [c.probabilities for c in want if c]
    assert any(c is None for c in want) == (extra != "")  # the thresholds did leave rows without a choice


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bulk_rescore_gives_the_per_task_predictions(encoder, tmp_path, image_host, make_store,  # type: ignore[no-untyped-def]
                                                     store_kind, dtype) -> None:
    services = _services(encoder, tmp_path, image_host, store=make_store(store_kind), matrix_dtype=dtype)
    try:
        rng = np.random.default_rng(21)
        scenes = [synthetic.scene(rng, 160, 160, n_objects=1, min_radius_frac=0.2) for _ in range(10)]
        tasks: list[dict[str, object]] = [
            {"id": i, "data": {"image": image_host.add(f"/data/upload/b{i}.png", synthetic.encode_png(img))}}
            for i, (img, _) in enumerate(scenes)]
        config = label_config.parse_label_config(CHOICES_CONFIG)
        services.predictor.predict(tasks[:8], config, None, "m-r0")  # caches 8 of the 10 images
        control = config.of_kind("choices")[0]
        vecs = services.class_vectors.zero_shot(control)
        head = Head(control.from_name, control.values, vecs[np.roll(np.arange(len(CLASSES)), 1)],
                    np.zeros((0, vecs.shape[1]), np.float32), encoder.logit_scale)
        heads = {control.from_name: head}
        # the per-task path: each image from its own cache entry (the first 8) or downloaded (the last 2)
        per_task = services.predictor.predict(tasks, config, None, "m-r1", heads=heads)
        downloads, encoded = len(image_host.requests_seen), services.metrics.snapshot().get("images_encoded", 0)

        bulk = CachedRescorer(services.predictor).predict(tasks, config, None, "m-r1", heads)
        assert [p.task_id for p in bulk] == list(range(10))
        assert [[c.choices for c in p.choices] for p in bulk] == [[c.choices for c in p.choices] for p in per_task]
        tol = 1e-5 if dtype == "float32" else 2e-3  # float16 rows: the bench measures this cost on more images
        np.testing.assert_allclose([p.score for p in bulk], [p.score for p in per_task], atol=tol)
        assert all(p.error is None for p in bulk)
        assert len(image_host.requests_seen) == downloads  # all 10 were in the cache by then
        assert services.metrics.snapshot().get("images_encoded", 0) == encoded

        # a task without its image, and one never seen: the predictor's answers, next to the bulk ones
        odd = [{"id": 50, "data": {}},
               {"id": 51, "data": {"image": image_host.add("/data/upload/new.png",
                                                           synthetic.encode_png(scenes[0][0].rotate(90)))}}]
        mixed = CachedRescorer(services.predictor).predict([*odd, *tasks[:3]], config, None, "m-r1", heads)
        assert mixed[0].error is not None and not mixed[0].choices
        assert mixed[1].error is None and mixed[1].choices
        # (a product over other rows may round a score's last bit differently: the labels must agree)
        assert [[c.choices for c in p.choices] for p in mixed[2:]] == [[c.choices for c in p.choices]
                                                                        for p in bulk[:3]]
    finally:
        services.close(close_store=False)


def test_rows_cached_before_the_matrix_are_backfilled(encoder, tmp_path, image_host, make_store,  # type: ignore[no-untyped-def]
                                                      store_kind, request) -> None:
    store = make_store(store_kind)
    services = _services(encoder, tmp_path, image_host, store=store, matrix_dtype="float32")
    try:
        rng = np.random.default_rng(22)
        tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/f{i}.png", synthetic.encode_png(
            synthetic.scene(rng, 128, 128, n_objects=1)[0]))}} for i in range(4)]
        config = label_config.parse_label_config(CHOICES_CONFIG)
        first = services.predictor.predict(tasks, config, None, "m-r0")
        # a cache written before the matrix existed: per-image entries and references, no matrix rows
        if store_kind == "redis":
            import redis

            from cliplabel.store.keys import Keys
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            client.delete(*client.keys(Keys(request.getfixturevalue("redis_prefix")).matrix("*", "*", "*")))
        else:
            store._conn().execute("DELETE FROM matrices")
        downloads = len(image_host.requests_seen)
        again = CachedRescorer(services.predictor).predict(tasks, config, None, "m-r0", {})
        assert again == first and len(image_host.requests_seen) == downloads
        ctx, _ = services.predictor.connections.source_context(None)
        from cliplabel.services.reference_index import host_group
        assert len(services.embeddings.group_matrix(host_group(ctx)).keys) == 4  # appended for the next re-score
    finally:
        services.close(close_store=False)


def test_a_rescore_job_stores_the_bulk_predictions_once(encoder, tmp_path, image_host) -> None:  # type: ignore[no-untyped-def]
    from cliplabel.core.domain import ProjectTask
    from cliplabel.services.bulk import BulkJobs
    from tests.services.test_bulk_jobs import FakeLabelStudio

    class Recording(FakeLabelStudio):
        preds: list = []  # (task id, prediction) as stored  # noqa: RUF012

        def import_predictions(self, project_id, predictions):  # type: ignore[no-untyped-def]
            super().import_predictions(project_id, predictions)
            self.preds = [*self.preds, *predictions]

    services = _services(encoder, tmp_path, image_host)
    try:
        rng = np.random.default_rng(23)
        tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/j{i}.png", synthetic.encode_png(
            synthetic.scene(rng, 128, 128, n_objects=1)[0]))}} for i in range(1, 8)]
        config = label_config.parse_label_config(CHOICES_CONFIG)
        first = services.predictor.predict(tasks, config, None, "m-r0")
        ls = Recording([ProjectTask(task_id=t["id"], data=t["data"]) for t in tasks], CHOICES_CONFIG)  # type: ignore[arg-type]
        jobs = BulkJobs(services.store, services.predictor, lambda pid: ls, encoder.encoder_id,  # type: ignore[arg-type,return-value]
                        services.slug, heads_for=lambda version: {})
        jobs.runner.rescorer = services.bulk.runner.rescorer  # as the container wires it
        downloads = len(image_host.requests_seen)
        status = jobs.run_all(jobs.create("7", "rescore", chunk_size=3).job_id)
        assert (status.state, status.predicted, status.chunks) == ("done", 7, 3)
        assert len(image_host.requests_seen) == downloads  # every task from the matrix
        stored = dict(ls.preds)
        assert sorted(stored) == list(range(1, 8)) and ls.imports == 3
        # same labels; scores agree to the matrix's float16 precision, not to the last bit
        got = [stored[t["id"]].choices for t in tasks]  # type: ignore[index]
        want = [p.choices for p in first]
        assert [[c.choices for c in g] for g in got] == [[c.choices for c in w] for w in want]
        assert np.allclose([c.score for g in got for c in g], [c.score for w in want for c in w], atol=5e-3)
        # the job again: every task already holds the version, nothing is stored twice
        again = jobs.run_all(jobs.create("7", "rescore", chunk_size=3).job_id)
        assert again.predicted == 0 and all(v.count(status.model_version) == 1 for v in ls.stored.values())
    finally:
        services.close(close_store=True)
