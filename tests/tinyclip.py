"""Train the tiny CLIP that the tests use, deterministically, on CPU.

    python -m tests.tinyclip [--variant framed|plain] [OUT_DIR]   # prints (or copies to OUT_DIR) a `local-dir:` model

Two structurally different test models, so that no quality claim rests on one model having learned our method:
- `framed` (the default): ModifiedResNet width 16, embed 128, logit scale up to 100, also trained on framing captions
  ("part of a red circle.") for 15 % of its images;
- `plain`: ModifiedResNet width 24 with a wider head, embed 96, a 2-layer text tower, logit scale capped at 20 (a
  softer temperature), and never a framing caption: like most real CLIPs, it has no notion of "part of" beyond what
  whole-object captions teach.

No pretrained CLIP can be downloaded where the tests run, so the suite trains its own: an open_clip ModifiedResNet +
text transformer (8 M parameters) on coloured shapes from `tests.synthetic`, with a multi-positive contrastive loss
(a caption like "red" is a positive for every red image in the batch). The result is cached under
`$CLIPLABEL_CACHE_DIR` (default `~/.cache/cliplabel`), keyed by the content of this file and of the synthetic world,
so only a fresh machine pays the ~7 minutes of training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests import synthetic

MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
STEPS = 700
BATCH = 128
N_TRAIN = 20_000
N_EVAL = 768
SEED = 0

# Templates wrapped around full captions during training. The backend's default ensemble holds these and others the
# model never saw, so the evaluation below measures real zero-shot transfer to unseen templates.
TRAIN_TEMPLATES = (
    "a photo of a {}.", "a {}.", "{}", "a bad photo of a {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a blurry photo of a {}.", "a good photo of a {}.",
    "an image of a {}.", "a {} on a background.",
)
HELD_OUT_TEMPLATES = ("a drawing of a {}.", "there is a {} here.", "a photo of the small {}.", "art of the {}.")
COLOUR_ONLY = ("a {} object.", "{}", "something {}.", "a {} thing.")
SHAPE_ONLY = ("a {}.", "a {} shape.", "{}", "a photo of a {}.")
SHAPE_COLOUR = ("a {s} that is {c}.", "a {c} coloured {s}.")
BACKGROUND = ("an empty background.", "a photo of an empty background.", "background", "nothing.", "a plain texture.")
# Framing: crops that cut through an object are "part of" it, not it. The box path's class-conditional negatives
# ("part of a {}") rely on this, as they rely on the same notion in real CLIP models.
PARTIAL = ("part of a {}.", "a cropped part of a {}.", "a piece of a {}.", "the edge of a {}.")
PARTIAL_RATE = 0.15


@dataclass(frozen=True)
class Variant:
    name: str
    model_cfg: dict
    partial_rate: float  # share of training images that are framing crops captioned "part of a ..."
    max_logit_scale: float


VARIANTS = {
    "framed": Variant("framed", MODEL_CFG, PARTIAL_RATE, 100.0),
    "plain": Variant("plain", {
        "embed_dim": 96,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 24, "head_width": 48},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 2},
    }, 0.0, 20.0),
}


def cache_root() -> Path:
    return Path(os.environ.get("CLIPLABEL_CACHE_DIR", Path.home() / ".cache" / "cliplabel"))


def content_key(variant: str = "framed") -> str:
    """Hash of the code that decides the model and of the variant's name: change either file and the cache misses."""
    h = hashlib.sha256(variant.encode())
    for path in (Path(__file__), Path(synthetic.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _caption(rng: np.random.Generator, colour: str | None, shape: str | None, partial: bool
             ) -> tuple[str, str | None, str | None, bool | None]:
    """A sampled caption and what it asserts: (text, colour, shape, partial); None = not asserted.

    Both colour and shape None means "background".
    """
    if colour is None or shape is None:
        return str(rng.choice(BACKGROUND)), None, None, None
    u = rng.random()
    if partial:
        if u < 0.7:
            return str(rng.choice(PARTIAL)).format(f"{colour} {shape}"), colour, shape, True
        return str(rng.choice(COLOUR_ONLY)).format(colour), colour, None, None
    if u < 0.6:
        if rng.random() < 0.15:
            return str(rng.choice(SHAPE_COLOUR)).format(s=shape, c=colour), colour, shape, False
        return str(rng.choice(TRAIN_TEMPLATES)).format(f"{colour} {shape}"), colour, shape, False
    if u < 0.8:
        return str(rng.choice(COLOUR_ONLY)).format(colour), colour, None, None
    return str(rng.choice(SHAPE_ONLY)).format(shape), None, shape, False


def _describes(image: tuple[str | None, str | None, bool], caption: tuple[str, str | None, str | None, bool | None]
               ) -> bool:
    colour, shape, partial = image
    _, c, s, p = caption
    if c is None and s is None:
        return colour is None
    if colour is None:
        return False
    return (c is None or c == colour) and (s is None or s == shape) and (p is None or p == partial)


def _dataset(seed: int, n: int, partial_rate: float = 0.0
             ) -> tuple[np.ndarray, list[tuple[str | None, str | None, bool]]]:
    rng = np.random.default_rng(seed)
    images = np.empty((n, 64, 64, 3), np.uint8)
    labels: list[tuple[str | None, str | None, bool]] = []
    for i in range(n):
        if rng.random() < partial_rate:
            colour, shape = str(rng.choice(list(synthetic.COLOURS))), str(rng.choice(synthetic.SHAPES))
            images[i] = np.asarray(synthetic.partial_object_image(rng, colour, shape, 64))
            labels.append((colour, shape, True))
            continue
        img, c, s = synthetic.random_object_image(rng, 64)
        images[i] = np.asarray(img)
        labels.append((c, s, False))
    return images, labels


def _to_tensor(torch, batch: np.ndarray):  # type: ignore[no-untyped-def]
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(out_dir: Path, steps: int = STEPS, log=_log, variant: str = "framed") -> dict:  # type: ignore[no-untyped-def]
    """Trains the model and writes `open_clip_config.json`, `open_clip_model.safetensors` and `eval.json`."""
    spec = VARIANTS[variant]
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    images, labels = _dataset(SEED, N_TRAIN, spec.partial_rate)
    log(f"tinyclip[{variant}]: {N_TRAIN} training images in {time.perf_counter() - t0:.1f}s")
    model = open_clip.CLIP(**spec.model_cfg)
    tokenizer = open_clip.SimpleTokenizer(context_length=spec.model_cfg["text_cfg"]["context_length"])
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    warmup = 30

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(SEED + 1)
    model.train()
    for step in range(steps):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        batch = images[idx]
        # Colour and shape names survive 90° rotations and flips, so they are free augmentation.
        batch = np.rot90(batch, k=int(rng.integers(0, 4)), axes=(1, 2))
        if rng.random() < 0.5:
            batch = batch[:, :, ::-1]
        batch = np.ascontiguousarray(batch)
        caps = [_caption(rng, *labels[i]) for i in idx]
        # Multi-positive target: caption j is a positive for image i whenever it truly describes image i.
        target = np.asarray([[float(_describes(labels[i], cap)) for cap in caps] for i in idx], np.float32)
        tgt = torch.from_numpy(target)
        img_feat, txt_feat, scale = model(_to_tensor(torch, batch), tokenizer([c[0] for c in caps]))
        logits = scale * img_feat @ txt_feat.t()
        loss_i = -(tgt / tgt.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_t = -(tgt.t() / tgt.t().sum(1, keepdim=True) * logits.t().log_softmax(1)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(spec.max_logit_scale))
        if step % 50 == 0 or step == steps - 1:
            log(f"tinyclip[{variant}]: step {step:4d}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": spec.model_cfg, "preprocess_cfg": {"size": 64, "mean": list(MEAN), "std": list(STD),
                                                         "interpolation": "bicubic", "resize_mode": "shortest"}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "open_clip_model.safetensors"))
    metrics = evaluate(model, tokenizer)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
    metrics["variant"] = variant
    metrics["logit_scale"] = round(float(model.logit_scale.exp().item()), 2)
    (out_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    log(f"tinyclip[{variant}]: held-out zero-shot {metrics}")
    return metrics


def evaluate(model, tokenizer) -> dict:  # type: ignore[no-untyped-def]
    """Held-out zero-shot accuracy with prompt ensembles of seen and of never-seen templates."""
    import torch

    images, labels = _dataset(SEED + 1000, N_EVAL)
    part_images, part_labels = _dataset(SEED + 2000, 256, partial_rate=1.0)
    with torch.inference_mode():
        img = torch.cat([model.encode_image(_to_tensor(torch, images[i:i + 256]), normalize=True)
                         for i in range(0, N_EVAL, 256)]).numpy()

    def ensemble(names: list[str], templates: tuple[str, ...]) -> np.ndarray:
        with torch.inference_mode():
            vecs = []
            for n in names:
                t = model.encode_text(tokenizer([tpl.format(n) for tpl in templates]), normalize=True).mean(0)
                vecs.append((t / t.norm()).numpy())
        return np.stack(vecs)

    colours, shapes = list(synthetic.COLOURS), list(synthetic.SHAPES)
    classes = [f"{c} {s}" for c in colours for s in shapes]
    obj = [i for i, (c, _, _) in enumerate(labels) if c is not None]
    out: dict = {}
    for tag, templates in (("seen_templates", TRAIN_TEMPLATES[:4]), ("unseen_templates", HELD_OUT_TEMPLATES)):
        col = (img[obj] @ ensemble(colours, templates).T).argmax(1)
        shp = (img[obj] @ ensemble(shapes, templates).T).argmax(1)
        both = (img[obj] @ ensemble(classes, templates).T).argmax(1)
        out[tag] = {
            "colour": float(np.mean([colours[k] == labels[i][0] for k, i in zip(col, obj)])),
            "shape": float(np.mean([shapes[k] == labels[i][1] for k, i in zip(shp, obj)])),
            "colour_shape_24": float(np.mean([classes[k] == f"{labels[i][0]} {labels[i][1]}" for k, i in zip(both, obj)])),
        }
    # Framing: does "part of a {class}" beat "{class}" on crops that cut through the object, and not on whole ones?
    with torch.inference_mode():
        part = model.encode_image(_to_tensor(torch, part_images), normalize=True).numpy()
    whole_vecs = ensemble(classes, TRAIN_TEMPLATES[:4])
    part_vecs = ensemble(classes, PARTIAL)
    k_part = [classes.index(f"{c} {s}") for c, s, _ in part_labels]
    k_whole = [classes.index(f"{labels[i][0]} {labels[i][1]}") for i in obj]
    out["partial_crops_called_partial"] = float(np.mean(
        [(p @ part_vecs[k]) > (p @ whole_vecs[k]) for p, k in zip(part, k_part)]))
    out["whole_objects_called_whole"] = float(np.mean(
        [(img[i] @ whole_vecs[k]) > (img[i] @ part_vecs[k]) for i, k in zip(obj, k_whole)]))
    return out


def ensure_model(log=_log, variant: str = "framed") -> Path:  # type: ignore[no-untyped-def]
    """Returns the cached model directory for this code and variant, training it first if it is missing."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny CLIP variant {variant!r}; known: {', '.join(VARIANTS)}")
    final = cache_root() / "tinyclip" / content_key(variant)
    if (final / "eval.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Train into a temporary sibling and rename, so a killed run never leaves a half-written model in the cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        train(tmp, log=log, variant=variant)
        if not final.exists():
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str]) -> int:
    variant = "framed"
    if argv[:1] == ["--variant"] and len(argv) >= 2:
        variant, argv = argv[1], argv[2:]
    if len(argv) > 1 or (argv and argv[0].startswith("-")) or variant not in VARIANTS:
        print(__doc__)
        return 2
    src = ensure_model(variant=variant)
    if argv:
        out = Path(argv[0])
        out.mkdir(parents=True, exist_ok=True)
        for name in ("open_clip_config.json", "open_clip_model.safetensors", "eval.json"):
            shutil.copy2(src / name, out / name)
        print(out)
    else:
        print(src)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
