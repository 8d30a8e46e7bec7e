"""Feedback simulation: a simulated annotator works through synthetic tasks; accuracy and AP50 vs annotations.

    python bench/bench_feedback.py            # prints tables, writes bench/out/feedback.json and feedback.png

The annotator accepts or corrects our classifications (and, for boxes, keeps the true boxes and deletes our false
ones), through the real services: webhook payload → durable queue → examples → retrain → new version → predict. After
each step the current version is scored on held-out tasks. Cases:
- ordinary: the 24 colour+shape classes, named as they look;
- shifted: `Type A`–`Type D` for a red circle, blue square, green triangle, yellow star (zero-shot near chance);
- misleading: the same four shapes named after each other;
- boxes: the 24 classes as `<RectangleLabels>` on scenes of 0–4 shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.container import Services, build_services  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.store import open_store  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.detection_eval import evaluate  # noqa: E402
from tests.support import LS_TOKEN, ImageHost, start_image_host  # noqa: E402

ORDINARY = {f"{c} {s}": (c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES}
FOUR = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")]
SHIFTED = {f"Type {'ABCD'[i]}": cs for i, cs in enumerate(FOUR)}
MISLEADING = {f"{FOUR[(i + 1) % 4][0]} {FOUR[(i + 1) % 4][1]}": cs for i, cs in enumerate(FOUR)}


def choices_config(classes: dict) -> str:
    return ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
            + "".join(f'<Choice value="{k}"/>' for k in classes) + "</Choices></View>")


BOX_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">'
              + "".join(f'<Label value="{k}"/>' for k in ORDINARY) + "</RectangleLabels></View>")


def object_tasks(host: ImageHost, classes: dict, n: int, seed: int, prefix: str) -> list[tuple[dict, str]]:
    rng = np.random.default_rng(seed)
    names = list(classes)
    out = []
    for i in range(n):
        label = names[int(rng.integers(len(names)))]
        png = synthetic.encode_png(synthetic.object_image(rng, *classes[label], 64).resize((96, 96)))
        out.append(({"id": i + 1, "data": {"image": host.add(f"/data/upload/{prefix}{i}.png", png)}}, label))
    return out


def scene_tasks(host: ImageHost, n: int, seed: int, prefix: str) -> list[tuple[dict, list]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, objs = synthetic.scene(rng, 256, 256)
        out.append(({"id": i + 1, "data": {"image": host.add(f"/data/upload/{prefix}{i}.png",
                                                             synthetic.encode_png(img))}}, objs))
    return out


def choice_accuracy(services: Services, pid: str, tasks: list[tuple[dict, str]]) -> float:
    res = services.predict([t for t, _ in tasks], pid, None, {})
    return float(np.mean([bool(r["result"]) and r["result"][0]["value"]["choices"] == [lab]
                          for r, (_, lab) in zip(res, tasks)]))


def box_scores(services: Services, pid: str, tasks: list[tuple[dict, list]]) -> tuple[float, float]:
    res = services.predict([t for t, _ in tasks], pid, None, {})
    found = []
    for r in res:
        regs = []
        for item in r["result"]:
            v = item["value"]
            regs.append(((v["x"] * 2.56, v["y"] * 2.56, (v["x"] + v["width"]) * 2.56, (v["y"] + v["height"]) * 2.56),
                         v["rectanglelabels"][0], item["score"]))
        found.append(regs)
    s = evaluate(found, [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in tasks])
    return s.ap50, s.fp_per_image


def annotate(services: Services, host: ImageHost, pid: str, aid: int, task: dict, result: list) -> None:
    """A webhook event, its annotation saved in the host's Label Studio API first (the worker confirms it there)."""
    services.webhook("ANNOTATION_CREATED", host.annotate({
        "action": "ANNOTATION_CREATED", "project": {"id": int(pid)}, "task": task,
        "annotation": {"id": aid, "task": task["id"], "result": result, "was_cancelled": False}}))


def run_choices(services: Services, host: ImageHost, pid: str, classes: dict, steps: list[int]) -> list[dict]:
    services.setup(f"{pid}.1", choices_config(classes), host.url, LS_TOKEN)
    stream = object_tasks(host, classes, max(steps), seed=1, prefix=f"{pid}s")
    held_out = object_tasks(host, classes, 300, seed=2, prefix=f"{pid}h")
    curve, done = [], 0
    for n in steps:
        for aid in range(done, n):
            task, label = stream[aid]
            annotate(services, host, pid, aid + 1, task, [{"from_name": "label", "to_name": "image", "type": "choices",
                                                      "value": {"choices": [label]}}])
        done = n
        services.feedback.process_pending()
        started = time.perf_counter()
        version = services.feedback.train_project(pid) if n else None
        train_s = time.perf_counter() - started
        curve.append({"annotations": n, "accuracy": round(choice_accuracy(services, pid, held_out), 3),
                      "new_version": version.name if version else None, "train_s": round(train_s, 2)})
    return curve


def run_boxes(services: Services, host: ImageHost, pid: str, steps: list[int]) -> list[dict]:
    services.setup(f"{pid}.1", BOX_CONFIG, host.url, LS_TOKEN)
    stream = scene_tasks(host, max(steps), seed=11, prefix=f"{pid}s")
    held_out = scene_tasks(host, 60, seed=12, prefix=f"{pid}h")
    curve, done = [], 0
    for n in steps:
        for aid in range(done, n):
            task, objs = stream[aid]
            # The annotator keeps exactly the true boxes: our false positives on this scene are deleted.
            annotate(services, host, pid, aid + 1, task, [{
                "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
                "value": {"x": o.bbox_xyxy[0] / 2.56, "y": o.bbox_xyxy[1] / 2.56,
                          "width": (o.bbox_xyxy[2] - o.bbox_xyxy[0]) / 2.56,
                          "height": (o.bbox_xyxy[3] - o.bbox_xyxy[1]) / 2.56, "rectanglelabels": [o.name]}}
                for o in objs])
        done = n
        services.feedback.process_pending()
        version = services.feedback.train_project(pid) if n else None
        ap, fp = box_scores(services, pid, held_out)
        rejected = sum(1 for e in services.store.list_feedback(pid) if e.kind == "reject")
        curve.append({"annotated_scenes": n, "AP50": round(ap, 3), "fp_per_image": round(fp, 2),
                      "rejected_boxes_learned": rejected, "new_version": version.name if version else None})
    return curve


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for case, curve in results["choices"].items():
        ax1.plot([p["annotations"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=case)
    ax1.set(xlabel="annotations", ylabel="held-out accuracy", title="Classification: zero-shot (0) → learned",
            ylim=(0, 1.05))
    ax1.legend()
    boxes = results["boxes"]
    xs = [p["annotated_scenes"] for p in boxes]
    ax2.plot(xs, [p["AP50"] for p in boxes], marker="o", label="AP50")
    ax2b = ax2.twinx()
    ax2b.plot(xs, [p["fp_per_image"] for p in boxes], marker="s", color="tab:red", label="false positives / image")
    ax2.set(xlabel="annotated scenes", ylabel="AP50", title="Boxes: learning from kept and deleted boxes",
            ylim=(0, 1.05))
    ax2b.set_ylabel("false positives / image")
    ax2.legend(loc="upper left")
    ax2b.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(f"local-dir:{tinyclip.ensure_model()}", None, "cpu")
    host, server = start_image_host()
    results: dict = {"choices": {}}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model="bench", data_dir=Path(tmp), retrain_every=10**6, batch_size=64)
        services = build_services(settings, encoder=encoder, store=open_store(None, Path(tmp)), worker=True)
        try:
            for pid, (case, classes, steps) in enumerate([
                    ("ordinary (24 classes)", ORDINARY, [0, 12, 24, 48, 120, 240]),
                    ("shifted (Type A–D)", SHIFTED, [0, 4, 8, 20, 40, 80]),
                    ("misleading names", MISLEADING, [0, 4, 8, 20, 40, 80])], start=1):
                results["choices"][case] = run_choices(services, host, str(pid), classes, steps)
            results["boxes"] = run_boxes(services, host, "9", [0, 5, 10, 20, 40])
        finally:
            services.close(close_store=True)
            server.shutdown()
    for case, curve in results["choices"].items():
        print(f"\n# {case}: held-out accuracy (300 tasks) vs annotations")
        print("| annotations | accuracy | new version | retrain s |\n|---|---|---|---|")
        for p in curve:
            print(f"| {p['annotations']} | {p['accuracy']} | {p['new_version'] or '-'} | {p['train_s']} |")
    print("\n# boxes: 60 held-out scenes vs annotated scenes")
    print("| annotated scenes | AP50 | false positives / image | rejected boxes learned | new version |\n|---|---|---|---|---|")
    for p in results["boxes"]:
        print(f"| {p['annotated_scenes']} | {p['AP50']} | {p['fp_per_image']} | {p['rejected_boxes_learned']} | "
              f"{p['new_version'] or '-'} |")
    (out / "feedback.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "feedback.png")
    print(f"\nwrote {out / 'feedback.json'} and {out / 'feedback.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
