"""`/predict` classification now against an earlier commit, in one run: is the product's speed unaffected?

    python bench/bench_predict_ab.py                         # HEAD's working tree vs 0804703, ViT-B-32, 5 rounds
    python bench/bench_predict_ab.py --baseline 0804703 --model ViT-B-32 --rounds 5 --images 96 --batch 32

The baseline commit is unpacked with `git archive` into a temporary folder (the repository's work tree and
worktrees are left alone). Each round runs one child process per tree, alternating which goes first, so both see the
same machine state; a child loads the model (random weights: speed does not depend on them) and measures, with that
tree's own `bench/suite.py`, the raw encoder on prepared images and then `/predict` classification end to end on the
same JPEGs (a real HTTP app and image host, cold cache). The headline is each tree's ratio of `/predict` to its own
raw encoder, measured back to back in the same process; comparing ratios removes most of the machine's drift.

Prints per tree: raw img/s, `/predict` img/s and the ratio as median (min–max) over the rounds; the median of the
per-round differences of the ratios (now − baseline) with their range (a range that spans 0 is noise); and the
per-round quotient of `/predict` img/s (now ÷ baseline), whose range spanning 1 is noise.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def child(tree: Path, model: str, n_images: int, batch: int, seed: int) -> dict[str, float]:
    """Runs inside the child process: `tree`'s own suite, raw encoder then /predict on the same images."""
    os.chdir(tree)
    sys.path[:0] = [str(tree / "bench"), str(tree)]
    import suite  # noqa: PLC0415  (the tree's own suite, found through the path set just above)

    encoder = suite.load_encoder(model, None, "cpu")
    blobs = suite.jpegs(n_images, 640, 480, seed=seed)
    workers = max(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if "make_blobs" in inspect.signature(suite.classification).parameters:  # the suite since the package layout
            args = SimpleNamespace(repeats=1, batch=batch, min_seconds=1.0)
            samples = suite.classification(encoder, tmp, lambda rep: blobs, args)
            raw_s, predict_s = samples["raw_img_s"][0], samples["predict_cls_img_s"][0]
        else:  # the suite before it: one raw pass, then one cold /predict pass
            raw_s = suite.raw(encoder, blobs, batch, workers)["raw_img_s"]
            predict_s = suite.classification(encoder, tmp, blobs, batch)["predict_cls_img_s"]
    return {"raw_img_s": raw_s, "predict_img_s": predict_s, "ratio": predict_s / raw_s}


def unpack(commit: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=out, check=True)
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="0804703", help="the commit to compare with (default: the main that "
                        "issue 16 was filed against)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.model, args.images, args.batch, args.seed)))
        return 0

    results: dict[str, list[dict[str, float]]] = {"now": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        trees = {"now": ROOT, "baseline": unpack(args.baseline, Path(tmp_dir))}
        for rnd in range(args.rounds):
            order = ["now", "baseline"] if rnd % 2 == 0 else ["baseline", "now"]
            for name in order:
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--child", str(trees[name]), "--model", args.model,
                     "--images", str(args.images), "--batch", str(args.batch), "--seed", str(1000 + rnd)],
                    capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    print(proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{name} failed in round {rnd + 1}")
                one = json.loads(proc.stdout.strip().splitlines()[-1])
                results[name].append(one)
                print(f"  round {rnd + 1} {name}: raw {one['raw_img_s']:.1f} img/s, /predict "
                      f"{one['predict_img_s']:.1f} img/s, ratio {one['ratio']:.3f} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)

    print(f"\n`/predict` classification, {args.model} (random weights), {args.images} JPEGs of 640×480 per round, "
          f"batch {args.batch}, {args.rounds} rounds; median (min–max)\n")
    print("| tree | raw encoder img/s | /predict img/s | /predict ÷ raw |")
    print("| --- | --- | --- | --- |")
    for name, label in (("baseline", f"baseline {args.baseline}"), ("now", "now (working tree)")):
        rows = results[name]
        print(f"| {label} | {spread([r['raw_img_s'] for r in rows], '.1f')} | "
              f"{spread([r['predict_img_s'] for r in rows], '.1f')} | {spread([r['ratio'] for r in rows], '.3f')} |")
    diffs = [n["ratio"] - b["ratio"] for n, b in zip(results["now"], results["baseline"])]
    verdict = "within noise (the range spans 0)" if min(diffs) <= 0 <= max(diffs) else (
        "faster" if min(diffs) > 0 else "slower")
    print(f"\nratio now − baseline, per round: {spread(diffs, '+.3f')} → {verdict}")
    # The ratio moves when either side moves: also the product's own throughput, now against the baseline.
    speed = [n["predict_img_s"] / b["predict_img_s"] for n, b in zip(results["now"], results["baseline"])]
    verdict = "within noise (the range spans 1)" if min(speed) <= 1 <= max(speed) else (
        "faster" if min(speed) > 1 else "slower")
    print(f"/predict img/s now ÷ baseline, per round: {spread(speed, '.3f')} → {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
