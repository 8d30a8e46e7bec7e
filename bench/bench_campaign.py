"""A simulated annotation campaign: final label accuracy against human actions, per labelling strategy.

    flock /tmp/cliplabel-heavy.lock python bench/bench_campaign.py            # 2,000 tasks, 3 seeds, both models
    python bench/bench_campaign.py --tasks 600 --seeds 1 --models framed      # a quick look

Prints a table per model and case, and the acceptance lines (PASS/FAIL); writes bench/out/campaign.json and
bench/out/campaign.png (copied to docs/campaign.png for the README).

A project of `--tasks` tasks of the test world (tests/synthetic.py: one framed shape per 64 px image) is embedded once
per seed with each tiny CLIP and cached under ~/.cache/cliplabel/campaign/ (keyed by the model's content key). The
campaign then runs on those cached embeddings with the product's own pure functions — `train.fit` (the head a retrain
serves, with the served head as the one to beat), `crossval.cross_validated_probs` (k-fold out-of-sample
probabilities), `accept.choose_thresholds` / `accept.accept_mask` (the Clopper–Pearson certified thresholds) — and
not through HTTP and Label Studio, so the whole grid runs in minutes. The services (`cliplabel accept`) call the
same functions.

Cases: ordinary (the 24 colour+shape classes, named as they look); shifted (`Type A`–`Type D` for a red circle, blue
square, green triangle, yellow star: zero-shot near chance); two-mode (`Alpha` = red circles or blue squares, `Beta`
= red squares or blue circles: one prototype per class cannot separate them).

The simulated annotator gives the true class, except with probability `--error` a random other class (the same
tasks and the same wrong answers whatever the strategy). Action model (what "human actions" counts):
- labelling a task from scratch = 1 action; confirming a pre-label = 1 action; correcting one = 1 action;
- an auto-accepted task = 0 actions (it is an annotation nobody made; marked, reviewable, undoable).
A task's final label is its human label, else its auto-accepted label; a task with neither counts as wrong, except
in strategy (b'), which counts the unreviewed pre-labels as labels (what a project that stops at "here are
predictions" ends with, at a precision nobody measured).

Strategies:
- (a) random order, no pre-labels: every task labelled by hand;
- (b) project order with pre-labels to confirm or correct, retrained every `--every` labels (b' as said above);
- (c) every `--every` labels: a share `--explore` drawn at random from the tasks not yet done (all of them until
  the project holds the fewest labels that can certify the target, 149 for 0.98 at 95 %, and until a threshold has
  accepted anything: a random sample is what the bound needs), the rest the least certain (smallest margin between
  the two most probable classes under the served head); retrain on every label; certify per-class thresholds at
  `--target` on the out-of-sample probabilities (5 folds) of the randomly drawn labels (`--certify random`; `all`
  adds the uncertain-first ones, a sample enriched with mistakes) and auto-accept the unlabelled tasks above them.
  Stops when every task is labelled or accepted, or at `--max-actions` of the tasks (the rest is then labelled by
  hand, in one last step of the curve).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.core.domain import Head, LabelClass  # noqa: E402
from cliplabel.vision import accept, crossval, prompts, train  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DOCS = Path(__file__).resolve().parents[1] / "docs"
FOUR = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")]
CASES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "ordinary": {f"{c} {s}": [(c, s)] for c in synthetic.COLOURS for s in synthetic.SHAPES},
    "shifted": {f"Type {'ABCD'[i]}": [cs] for i, cs in enumerate(FOUR)},
    "two-mode": {"Alpha": [("red", "circle"), ("blue", "square")], "Beta": [("red", "square"), ("blue", "circle")]},
}
BUDGET = {"ordinary": 0.10, "shifted": 0.25}  # the acceptance: ≥ 99 % correct labels within this share
GOAL = 0.99


@dataclass(frozen=True)
class World:
    """A cached project: (N, D) embeddings, (N,) true classes, per class (P, D) prompt embeddings, the temperature."""

    names: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    prompt_embs: list[np.ndarray]
    logit_scale: float


def embed_world(variant: str, case: str, n: int, seed: int) -> World:
    """The case's project for one seed, embedded with one tiny CLIP (cached: the model loads only on a miss)."""
    names = tuple(CASES[case])
    ensembles = [prompts.build_ensemble(LabelClass(value=name), prompts.DEFAULT_TEMPLATES) for name in names]
    cache = tinyclip.cache_root() / "campaign" / f"{tinyclip.content_key(variant)}-{case}-{n}-{seed}.npz"
    if not cache.exists():
        from cliplabel.model.encoder import load_encoder
        from cliplabel.vision.images import prepare

        encoder = load_encoder(f"local-dir:{tinyclip.ensure_model(variant=variant)}", None, "cpu")
        rng = np.random.default_rng(1000 + seed)
        y = rng.integers(len(names), size=n)
        looks = [CASES[case][names[c]][int(rng.integers(len(CASES[case][names[c]])))] for c in y]
        x = np.concatenate([encoder.encode_images(np.stack([
            prepare(synthetic.object_image(rng, colour, shape, 64), encoder.image_size, encoder.resize_mode)
            for colour, shape in looks[i:i + 256]])) for i in range(0, n, 256)])
        texts = [p for e in ensembles for p in e.prompts]
        text = encoder.encode_texts(texts)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=y, text=text, logit_scale=np.float32(encoder.logit_scale))
    data = np.load(cache)
    text, at = data["text"], 0
    prompt_embs = []
    for e in ensembles:
        prompt_embs.append(text[at:at + len(e.prompts)])
        at += len(e.prompts)
    return World(names, data["x"].astype(np.float32), data["y"].astype(np.int64), prompt_embs,
                 float(data["logit_scale"]))


class Campaign:
    """One world, one seed: the annotator's answers are fixed up front, so every strategy meets the same mistakes."""

    def __init__(self, world: World, seed: int, error: float, every: int) -> None:
        self.w, self.every = world, every
        self.rng = np.random.default_rng(seed)
        n, k = len(world.y), len(world.names)
        wrong = (world.y + self.rng.integers(1, k, size=n)) % k
        self.human = np.where(self.rng.random(n) < error, wrong, world.y)
        d = world.x.shape[1]
        text = train.ensemble_vectors(world.prompt_embs, [np.full(len(p), 1.0 / len(p)) for p in world.prompt_embs])
        self.zero_shot = Head("label", world.names, text, np.zeros((0, d), np.float32), world.logit_scale)
        self.no_background = np.zeros((0, d), np.float32)

    def fit(self, idx: np.ndarray, current: Head) -> Head:
        """The head a retrain on the human labels of tasks `idx` serves (the product's `train.fit`)."""
        ex = train.Examples(self.w.x[idx], self.human[idx])
        return train.fit("label", self.w.names, self.w.prompt_embs, ex, current, self.no_background,
                         self.w.logit_scale).head

    def accuracy(self, labels: dict[int, int] | np.ndarray) -> float:
        if isinstance(labels, np.ndarray):
            return float(np.mean(labels == self.w.y))
        return sum(int(self.w.y[i] == lab) for i, lab in labels.items()) / len(self.w.y)

    def by_hand(self) -> list[tuple[int, float]]:
        """(a): random order, every task labelled from scratch."""
        order = self.rng.permutation(len(self.w.y))
        return [(k, self.accuracy({int(i): int(self.human[i]) for i in order[:k]}))
                for k in range(0, len(order) + 1, self.every)]

    def with_prelabels(self) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(b) and (b'): project order, each pre-label confirmed or corrected, retrained every `every` labels."""
        n = len(self.w.y)
        order = self.rng.permutation(n)
        head, strict, lenient = self.zero_shot, [], []
        for k in range(0, n + 1, self.every):
            done = order[:k]
            labels = crossval.head_probabilities(head, self.w.x).argmax(axis=1)
            labels[done] = self.human[done]
            lenient.append((k, self.accuracy(labels)))
            strict.append((k, self.accuracy({int(i): int(self.human[i]) for i in done})))
            if k + self.every <= n and k > 0:
                head = self.fit(order[:k], head)
        return strict, lenient

    def uncertain_first(self, explore: float, target: float, confidence: float, max_actions: float,
                        certify: str = "random") -> dict[str, object]:
        """(c): uncertain-first with random exploration, retraining and certified auto-accept.

        `certify`: "random" certifies the thresholds on the held-out probabilities of the randomly drawn labels only
        (a uniform sample of the tasks auto-accept decides on); "all" on every human label, the uncertain-first
        ones included (what `cliplabel accept` does in a project, where nobody knows how the labelled tasks were
        chosen) — a sample enriched on purpose with the model's mistakes, whose tasks are no longer candidates, so
        it blocks thresholds that the candidates would pass. Every label trains the head either way.
        """
        n = len(self.w.y)
        labelled: list[int] = []
        drawn: list[int] = []  # the labels drawn at random (the rest were picked least certain first)
        accepted: dict[int, int] = {}
        head, points, rounds = self.zero_shot, [(0, 0.0)], []
        cv = lambda ex: train.fit("label", self.w.names, self.w.prompt_embs, ex, self.zero_shot,  # noqa: E731
                                  self.no_background, self.w.logit_scale).head
        minimum = accept.min_evidence(target, confidence)
        while len(labelled) + len(accepted) < n and len(labelled) < max_actions * n:
            done = np.zeros(n, bool)
            done[labelled] = True
            done[list(accepted)] = True
            pool = np.flatnonzero(~done)
            take = min(self.every, len(pool))
            # All at random until the thresholds accept anything: the random draws are the certification's evidence
            # (see `certify`), and a confidently wrong one among them needs 236 of them, not 149, at 0.98 and 95 %.
            n_random = (take if len(labelled) < minimum or not accepted
                        else min(take, int(round(take * explore))))
            picked = list(self.rng.choice(pool, size=n_random, replace=False)) if n_random else []
            rest = np.setdiff1d(pool, picked)
            if take > n_random:
                p = np.sort(crossval.head_probabilities(head, self.w.x[rest]), axis=1)
                picked += list(rest[np.argsort(p[:, -1] - p[:, -2], kind="stable")[:take - n_random]])
            drawn += [int(i) for i in picked[:n_random]]
            labelled += [int(i) for i in picked]
            idx = np.array(labelled)
            head = self.fit(idx, head)
            oos = crossval.cross_validated_probs(train.Examples(self.w.x[idx], self.human[idx]), len(self.w.names),
                                                 cv, seed=len(labelled))
            sel = np.isin(idx, drawn) if certify == "random" else np.ones(len(idx), bool)
            thresholds = accept.choose_thresholds(self.w.names, oos[sel].argmax(axis=1), oos[sel].max(axis=1),
                                                  self.human[idx][sel], target, confidence)
            done[idx] = True
            cand = np.flatnonzero(~done)
            probs = crossval.head_probabilities(head, self.w.x[cand])
            pred, score = probs.argmax(axis=1), probs.max(axis=1)
            mask = accept.accept_mask(thresholds, pred, score)
            out = accept.outcome(thresholds, pred, score)
            new = {int(i): int(c) for i, c in zip(cand[mask], pred[mask])}
            accepted.update(new)
            labels = {**accepted, **{i: int(self.human[i]) for i in labelled}}
            points.append((len(labelled), self.accuracy(labels)))
            rounds.append({"actions": len(labelled), "accepted_now": len(new), "accepted": len(accepted),
                           "coverage_now": round(out.coverage, 4), "expected_errors": round(out.expected_errors, 2),
                           "realised_errors": int(sum(self.w.y[i] != c for i, c in new.items())),
                           "sources": sorted({t.source for t in thresholds})})
        remaining = n - len(labelled) - len(accepted)
        if remaining:  # the budget is spent: the rest by hand
            labels = {**accepted, **{i: int(self.human[i]) for i in range(n) if i not in accepted}}
            points.append((len(labelled) + remaining, self.accuracy(labels)))
        right = sum(int(self.w.y[i] == c) for i, c in accepted.items())
        return {"points": points, "rounds": rounds, "accepted": len(accepted),
                "precision": right / len(accepted) if accepted else None,
                "expected_errors": round(sum(r["expected_errors"] for r in rounds), 2),  # type: ignore[misc]
                "realised_errors": len(accepted) - right}


def first_reaching(points: list[tuple[int, float]], goal: float) -> int | None:
    return next((k for k, acc in points if acc >= goal), None)


def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {}
    for variant in args.models:
        for case in args.cases:
            runs = []
            for seed in range(args.seeds):
                started = time.perf_counter()
                world = embed_world(variant, case, args.tasks, seed)
                camp = Campaign(world, seed, args.error, args.every)
                a = camp.by_hand()
                b, b_lenient = camp.with_prelabels()
                c = camp.uncertain_first(args.explore, args.target, args.confidence, args.max_actions, args.certify)
                runs.append({"seed": seed, "a": a, "b": b, "b_prelabels": b_lenient, "c": c,
                             "seconds": round(time.perf_counter() - started, 1)})
                print(f"  {variant}/{case} seed {seed}: {runs[-1]['seconds']}s", file=sys.stderr)
            results[f"{variant}/{case}"] = runs
    return results


def _spread(values: list[float | None], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if len(vals) < len(values):
        return "never" if not vals else f"{fmt.format(float(np.median(vals)))} ({len(values) - len(vals)} never)"
    return f"{fmt.format(float(np.median(vals)))} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def report(results: dict[str, object], args: argparse.Namespace) -> list[str]:
    n = args.tasks
    print(f"\nSimulated campaign: {n} tasks, annotator error {args.error:.0%}, retrain every {args.every}, "
          f"explore {args.explore:.0%}, auto-accept target {args.target} at {args.confidence:.0%} confidence, "
          f"{args.seeds} seeds (median (min–max))\n")
    print("| model / case | strategy | actions to 99 % correct (share of tasks) | accuracy at 10 % | at 25 % "
          "| auto-accepted | realised precision | expected / realised errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = []
    for key, runs in results.items():
        assert isinstance(runs, list)
        case = key.split("/")[1]

        def at(points: list[tuple[int, float]], share: float) -> float:
            return max([acc for k, acc in points if k <= share * n] or [0.0])

        for name, pick in (("(a) by hand", lambda r: r["a"]), ("(b) pre-labels", lambda r: r["b"]),
                           ("(b') unreviewed pre-labels kept", lambda r: r["b_prelabels"]),
                           ("(c) uncertain-first + auto-accept", lambda r: r["c"]["points"])):
            reach = [first_reaching(pick(r), GOAL) for r in runs]
            extra = "| – | – | – |"
            if name.startswith("(c)"):
                extra = (f"| {_spread([r['c']['accepted'] for r in runs], '{:.0f}')} "
                         f"| {_spread([r['c']['precision'] for r in runs], '{:.4f}')} "
                         f"| {_spread([r['c']['expected_errors'] for r in runs], '{:.1f}')} / "
                         f"{_spread([r['c']['realised_errors'] for r in runs], '{:.0f}')} |")
            print(f"| {key} | {name} | {_spread([None if k is None else k / n for k in reach])} "
                  f"| {_spread([at(pick(r), 0.10) for r in runs])} | {_spread([at(pick(r), 0.25) for r in runs])} "
                  f"{extra}")
        reach_c = [first_reaching(r["c"]["points"], GOAL) for r in runs]
        if case in BUDGET:
            worst = max((k / n if k is not None else float("inf")) for k in reach_c)
            ok = worst <= BUDGET[case]
            lines.append(f"{'PASS' if ok else 'FAIL'} {key}: ≥ 99 % correct labels within {worst:.1%} of the actions "
                         f"of labelling all by hand, every seed (needs ≤ {BUDGET[case]:.0%})")
        precisions = [r["c"]["precision"] for r in runs if r["c"]["precision"] is not None]
        if precisions:
            worst_p = min(precisions)
            lines.append(f"{'PASS' if worst_p >= args.target else 'FAIL'} {key}: auto-accept's realised precision "
                         f"on held-out tasks {worst_p:.4f} at worst over {len(runs)} seeds (target {args.target})")
        else:
            lines.append(f"PASS {key}: auto-accept accepted nothing (no class could be certified at {args.target})")
    print()
    for line in lines:
        print(line)
    return lines


def plot(results: dict[str, object], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, cases = list(args.models), list(args.cases)
    fig, axes = plt.subplots(len(models), len(cases), figsize=(4.2 * len(cases), 3.4 * len(models)), squeeze=False)
    styles = {"a": ("(a) by hand", "tab:gray", "-"), "b": ("(b) pre-labels, reviewed (= a)", "tab:blue", "--"),
              "b_prelabels": ("(b') + unreviewed pre-labels", "tab:blue", ":"),
              "c": ("(c) uncertain-first + auto-accept", "tab:red", "-")}
    for r_i, variant in enumerate(models):
        for c_i, case in enumerate(cases):
            ax = axes[r_i][c_i]
            runs = results[f"{variant}/{case}"]
            assert isinstance(runs, list)
            for key, (label, colour, ls) in styles.items():
                for s_i, run in enumerate(runs):
                    pts = run["c"]["points"] if key == "c" else run[key]
                    xs = [k / args.tasks for k, _ in pts]
                    ax.plot(xs, [acc for _, acc in pts], color=colour, ls=ls, lw=3.0 if key == "a" else 1.2,
                            alpha=0.4 if key == "a" else 0.8,
                            label=label if s_i == 0 else None)
            if case in BUDGET:
                ax.axvline(BUDGET[case], color="k", lw=0.6, ls="--")
            ax.axhline(GOAL, color="k", lw=0.6, ls="--")
            ax.set_title(f"{variant} tiny CLIP, {case}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_xlabel("human actions / tasks", fontsize=8)
            ax.set_ylabel("correct final labels", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Simulated annotation campaign: {args.tasks} tasks, {args.seeds} seeds (one line each),\n"
                 f"annotator error {args.error:.0%}, retrain every {args.every}, auto-accept at {args.target}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(tinyclip.VARIANTS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--error", type=float, default=0.0, help="the annotator's error rate")
    parser.add_argument("--every", type=int, default=50, help="labels between retrains")
    parser.add_argument("--explore", type=float, default=0.5, help="(c): share of each round drawn at random")
    parser.add_argument("--target", type=float, default=accept.DEFAULT_TARGET)
    parser.add_argument("--confidence", type=float, default=accept.DEFAULT_CONFIDENCE)
    parser.add_argument("--max-actions", type=float, default=0.5, help="(c): stop retraining at this share")
    parser.add_argument("--certify", choices=("random", "all"), default="random",
                        help="(c): certify thresholds on the randomly drawn labels only, or on every label")
    parser.add_argument("--no-docs", action="store_true", help="do not copy the plot to docs/")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args)
    lines = report(results, args)
    OUT.mkdir(exist_ok=True)
    (OUT / "campaign.json").write_text(json.dumps({"args": vars(args), "results": results, "acceptance": lines},
                                                  default=float))
    plot(results, args, OUT / "campaign.png")
    if not args.no_docs:
        shutil.copy(OUT / "campaign.png", DOCS / "campaign.png")
    print(f"\nwrote {OUT / 'campaign.json'} and {OUT / 'campaign.png'} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
