"""Re-scoring from the cache: after a first prediction, a re-score downloads nothing and follows the new head."""

from __future__ import annotations

import dataclasses

import numpy as np

from cliplabel.container import build_services
from cliplabel.core.domain import Head
from cliplabel.core.settings import Settings
from cliplabel.labelstudio import label_config
from tests import synthetic
from tests.support import LS_TOKEN
from tests.test_boxes_api import BOTH_CONFIG, CLASSES


def _services(encoder, tmp_path, image_host):  # type: ignore[no-untyped-def]
    settings = Settings(model="local-dir:tiny", data_dir=tmp_path / "data", batch_size=16, fetch_workers=4,
                        label_studio_url=image_host.url, label_studio_api_key=LS_TOKEN)
    return build_services(settings, encoder=encoder, worker=True)


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
