"""CPU runtimes of the encoder, measured in one run: torch fp32 against ONNX Runtime fp32 and OpenVINO
(CLIPLABEL_RUNTIME).

    flock /tmp/cliplabel-heavy.lock python bench/bench_runtime.py                 # ViT-B-32, random weights
    python bench/bench_runtime.py --models tiny,ViT-B-32 --batch 32 --repeats 3 --min-seconds 10 --threads 2 \
        --extras int8,openvino

Per model and tower (images: prepared uint8 arrays at `--batch`; texts: prompts in batches of 256, as a label set's
warm-up encodes them): items/s of each runtime, the median with min–max over `--repeats` repeats. Each repeat does
the same work in every runtime, sized so that torch spends at least `--min-seconds` on each tower over all repeats;
within a repeat the runtimes take turns (in a rotating order), so contention from other processes falls on all of
them alike. The ratio to torch is the ratio of medians, with the min–max of the per-repeat ratios.

Rows:
- torch fp32: what `CLIPLABEL_RUNTIME=torch` runs (channels-last, `--threads` intra-op threads);
- onnx fp32: what `CLIPLABEL_RUNTIME=onnx` runs (the product's export, cache and session options);
- openvino: what `CLIPLABEL_RUNTIME=openvino` runs: the same cached export compiled by OpenVINO, bf16 on CPUs with
  AVX-512 BF16 or AMX, else f32 (the row names which); prompts on trimmed tokens in OpenVINO's own conversion of
  the text tower, bf16 where its probe agrees with torch, else f32, else torch (the row names which);
- `--extras int8`: the same export through ONNX Runtime's dynamic int8 quantisation (weights int8, activations
  quantised per call). With random weights its cosine says nothing about accuracy; it is a speed row only;
- `--extras spin`: the product's fp32 export with ONNX Runtime's default of idle threads spinning between ops (the
  product turns it off: it shares its CPUs with Label Studio and its own download threads);
- `--extras openvino`: the same fp32 export compiled by OpenVINO for the CPU (f32 precision hint), both towers, the
  text tower over the full context length;
- `--extras openvino-bf16`: the same with OpenVINO's bf16 precision hint (CPUs with AVX-512 BF16 or AMX).
Also the cosine of each runtime's embeddings to torch's (lowest over the batch and the prompts), and the one-time
cost of preparing it (export or quantisation or compilation).

The fp32 ceiling (after the table; `--no-ceiling` skips it): the image tower's FLOPs per image (torch's
FlopCounterMode, a matrix product of M×K by K×N counted as 2·M·K·N), each image row's GFLOP/s, and the fastest fp32
matrix product measured on this machine with the same threads (torch.matmul at the tower's own GEMM shapes and at
2048³; median of `--repeats`). No fp32 runtime computes the tower's products faster than the machine multiplies
matrices, so `2 × torch's GFLOP/s ÷ that rate` says whether 2× torch in fp32 is possible here at all (above 100 %:
not without doing less arithmetic, e.g. int8 or bf16). Speed does not depend on weight values, so models
without a local checkpoint run with random weights (the same seed in every load).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.core.errors import SettingsError  # noqa: E402
from cliplabel.model.encoder import ClipEncoder, export_paths, load_encoder  # noqa: E402
from tests import tinyclip  # noqa: E402

TEXT_BATCH = 256
Encode = Callable[[np.ndarray], np.ndarray]


@dataclass
class Runtime:
    """One way to run both towers: (N, S, S, 3) uint8 → (N, D), and (N, L) int64 tokens → (N, D)."""

    name: str
    images: Encode
    tokens: Encode
    prepare_s: float
    img_rates: list[float] = field(default_factory=list)
    txt_rates: list[float] = field(default_factory=list)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _ort_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    # The product's session options (cliplabel.model.encoder._sessions): no spinning between ops, unless asked.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _session_pair(image: Path, text: Path, threads: int, spinning: bool = False) -> tuple[Encode, Encode]:
    sessions = [ort.InferenceSession(str(p), _ort_options(threads, spinning), providers=["CPUExecutionProvider"])
                for p in (image, text)]
    return (lambda x: np.asarray(sessions[0].run(None, {"images_u8": x})[0], np.float32),
            lambda t: np.asarray(sessions[1].run(None, {"tokens": t})[0], np.float32))


def int8_runtime(image: Path, text: Path, out: Path, threads: int) -> Runtime:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    paths = []
    for src in (image, text):
        dst = out / f"{src.stem}-int8.onnx"
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        paths.append(dst)
    images, tokens = _session_pair(paths[0], paths[1], threads)
    return Runtime("onnx int8 (dynamic)", images, tokens, time.perf_counter() - started)


def openvino_runtime(image: Path, text: Path, threads: int, precision: str = "f32") -> Runtime:
    import openvino as ov

    started = time.perf_counter()
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    compiled = [core.compile_model(str(p), "CPU", config) for p in (image, text)]
    return Runtime(f"openvino {ov.__version__.split('-')[0]} {'fp32' if precision == 'f32' else precision}",
                   lambda x: np.asarray(compiled[0](x)[0], np.float32),
                   lambda t: np.asarray(compiled[1](t)[0], np.float32), time.perf_counter() - started)


def tower_gflop_per_image(visual: torch.nn.Module, image_size: int) -> float:
    """The image tower's FLOPs per image in torch's own count (2·M·K·N per matrix product), over a batch of 2.

    Counted with gradients on: under inference mode nn.MultiheadAttention takes a fused kernel that FlopCounterMode
    does not see (its q/k/v and output projections, a third of ViT-B-32's products, would go uncounted). The
    attention scores themselves (1 % of ViT-B-32) are not counted either way."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        visual(torch.randn(2, 3, image_size, image_size))
    return counter.get_total_flops() / 2 / 1e9


def gemm_gflops(vit: tuple[int, int] | None, batch: int, threads: int, repeats: int) -> tuple[float, str]:
    """The fastest fp32 matrix product torch computes on this machine, in GFLOP/s, and the shape that gave it.

    Shapes: 2048³ and, for a ViT of (width, tokens), its own at `batch` images: the MLP's (tokens·batch × width by
    width × 4·width, and back), the q/k/v projection's (width × 3·width) and the output projection's (width ×
    width). Each rate is the median of `repeats` runs of about 1 s (sized from one timed call)."""
    torch.set_num_threads(threads)
    shapes = [(2048, 2048, 2048)]
    if vit is not None:
        width, m = vit[0], vit[1] * batch
        shapes += [(m, width, 4 * width), (m, 4 * width, width), (m, width, 3 * width), (m, width, width)]
    best, best_shape = 0.0, ""
    for rows, inner, cols in shapes:
        a, b = torch.randn(rows, inner), torch.randn(inner, cols)
        torch.matmul(a, b)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        n = max(1, math.ceil(1.0 / (time.perf_counter() - t0)))
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                torch.matmul(a, b)
            rates.append(2 * rows * inner * cols * n / (time.perf_counter() - t0) / 1e9)
        if statistics.median(rates) > best:
            best, best_shape = statistics.median(rates), f"{rows}×{inner} · {inner}×{cols}"
    return best, best_shape


Ceiling = tuple[float, float, str]  # GFLOP per image, the fastest fp32 matmul's GFLOP/s, its shape


def measure(name: str, args: argparse.Namespace, cache: Path
            ) -> tuple[list[Runtime], dict[str, float], Ceiling | None]:
    model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
    tokenizer = open_clip.get_tokenizer(model)
    # The same random weights in every load (the export cache would otherwise, rightly, find its export stale).
    torch.manual_seed(0)
    torch_enc = load_encoder(model, None, "cpu", args.threads, runtime="torch")
    torch.manual_seed(0)
    started = time.perf_counter()
    onnx_enc = load_encoder(model, None, "cpu", args.threads, runtime="onnx", cache_dir=cache)
    export_s = time.perf_counter() - started
    torch.manual_seed(0)
    started = time.perf_counter()  # the export is cached by now: what remains is OpenVINO's compilation and probe
    try:
        openvino_enc: ClipEncoder | None = load_encoder(model, None, "cpu", args.threads, runtime="openvino",
                                                        cache_dir=cache)
    except SettingsError as exc:  # its probe disagrees with torch: the product refuses it, so there is no row
        print(f"{name}: no openvino row: {exc}", file=sys.stderr)
        openvino_enc = None
    compile_s = time.perf_counter() - started
    image_path, text_path, _ = export_paths(cache, onnx_enc.encoder_id)

    def texts_of(enc: ClipEncoder) -> Encode:
        # The product's text path takes strings and tokenises them itself (part of what it pays per prompt): give it
        # the prompts the token rows stand for. The extras get the token ids.
        return lambda rows: enc.encode_texts(prompts[:len(rows)])

    size = torch_enc.image_size
    prompts = [f"a photo of a {i} thing, number {i * 7}." for i in range(TEXT_BATCH)]
    tokens = tokenizer(prompts).numpy().astype(np.int64)
    runtimes = [Runtime("torch fp32", torch_enc.encode_images, texts_of(torch_enc), 0.0),
                Runtime("onnx fp32", onnx_enc.encode_images, texts_of(onnx_enc), export_s)]
    if openvino_enc is not None:  # its precision, bf16 or fp32, is what this CPU runs
        label = (f"openvino {openvino_enc.precision}, prompts {openvino_enc.text_runtime} "
                 f"{openvino_enc.text_precision} (product)")
        runtimes.append(Runtime(label, openvino_enc.encode_images,
                                texts_of(openvino_enc), compile_s))
    extras = [e for e in args.extras.split(",") if e]
    with tempfile.TemporaryDirectory() as tmp:
        if "int8" in extras:
            runtimes.append(int8_runtime(image_path, text_path, Path(tmp), args.threads))
        if "spin" in extras:
            started = time.perf_counter()
            images_fn, tokens_fn = _session_pair(image_path, text_path, args.threads, spinning=True)
            runtimes.append(Runtime("onnx fp32, threads spin", images_fn, tokens_fn, time.perf_counter() - started))
        if "openvino" in extras:
            runtimes.append(openvino_runtime(image_path, text_path, args.threads))
        if "openvino-bf16" in extras:
            runtimes.append(openvino_runtime(image_path, text_path, args.threads, "bf16"))
        batch = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        for rt in runtimes:  # warm-up: first calls allocate
            rt.images(batch[:2])
            rt.tokens(tokens[:2])
        # Size the work: torch must spend at least --min-seconds per tower over all repeats.
        t0 = time.perf_counter()
        runtimes[0].images(batch)
        n_batches = max(1, math.ceil(args.min_seconds / args.repeats / (time.perf_counter() - t0)))
        t0 = time.perf_counter()
        runtimes[0].tokens(tokens)
        n_text = max(1, math.ceil(args.min_seconds / args.repeats / (time.perf_counter() - t0)))
        print(f"{name}: per repeat and runtime, {n_batches} × {args.batch} images and {n_text} × {TEXT_BATCH} "
              "prompts", file=sys.stderr, flush=True)
        for rep in range(args.repeats):
            order = runtimes[rep % len(runtimes):] + runtimes[:rep % len(runtimes)]
            for rt in order:
                t0 = time.perf_counter()
                for _ in range(n_batches):
                    rt.images(batch)
                rt.img_rates.append(n_batches * args.batch / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(n_text):
                    rt.tokens(tokens)
                rt.txt_rates.append(n_text * TEXT_BATCH / (time.perf_counter() - t0))
        want_img, want_txt = runtimes[0].images(batch), runtimes[0].tokens(tokens)
        cosines = {}
        for rt in runtimes:
            got_img, got_txt = rt.images(batch), rt.tokens(tokens)
            cosines[rt.name] = min(float(np.min(np.sum(got_img * want_img, axis=1))),
                                   float(np.min(np.sum(got_txt * want_txt, axis=1))))
    ceiling = None
    if args.ceiling:
        visual = open_clip.create_model(model).visual.eval()  # the same architecture: its FLOPs and shapes
        vit = (int(visual.transformer.width), int(np.prod(visual.grid_size)) + 1) if hasattr(visual, "grid_size") \
            else None
        ceiling = (tower_gflop_per_image(visual, torch_enc.image_size),
                   *gemm_gflops(vit, args.batch, args.threads, args.repeats))
    return runtimes, cosines, ceiling


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=10.0, help="torch's work per tower over all repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the fp32 ceiling (FLOPs per image and the machine's fastest fp32 matrix product)")
    parser.add_argument("--extras", default="spin,int8,openvino",
                        help="extra rows: spin, int8, openvino, openvino-bf16 (comma-separated)")
    args = parser.parse_args()
    print(f"batch {args.batch} images / {TEXT_BATCH} prompts, {args.threads} threads, {args.repeats} repeats of "
          f"≥ {args.min_seconds / args.repeats:.1f} s of torch work per tower (median, min–max)")
    print("| model | tower | runtime | per s | ÷ torch fp32: median (per-repeat min–max) | cosine to torch (min) "
          "| prepare s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ceilings = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            runtimes, cosines, ceiling = measure(name, args, Path(tmp) / "onnx")
            if ceiling is not None:
                ceilings.append((name, runtimes, *ceiling))
            base = runtimes[0]
            for tower, attr in (("images", "img_rates"), ("prompts", "txt_rates")):
                ref: list[float] = getattr(base, attr)
                for rt in runtimes:
                    rates: list[float] = getattr(rt, attr)
                    per_rep = [r / b for r, b in zip(rates, ref)]
                    ratio = statistics.median(rates) / statistics.median(ref)
                    print(f"| {name} | {tower} | {rt.name} | {spread(rates)} | {ratio:.2f}× "
                          f"({min(per_rep):.2f}–{max(per_rep):.2f}) | {cosines[rt.name]:.7f} | {rt.prepare_s:.1f} |")
    if ceilings:
        print(f"\nfp32 ceiling: the image tower's arithmetic against the fastest fp32 matrix product on this machine "
              f"({args.threads} threads, torch.matmul)")
        print("| model | GFLOP per image | runtime | images: GFLOP/s | share of the fp32 matmul rate |")
        print("| --- | --- | --- | --- | --- |")
        for name, runtimes, gflop, matmul_gflops, shape in ceilings:
            for rt in runtimes:
                rt_gflops = statistics.median(rt.img_rates) * gflop
                print(f"| {name} | {gflop:.2f} | {rt.name} | {rt_gflops:.1f} | {100 * rt_gflops / matmul_gflops:.0f} % |")
            need_gflops = 2 * statistics.median(runtimes[0].img_rates) * gflop
            print(f"| {name} | {gflop:.2f} | fastest fp32 matmul ({shape}) | {matmul_gflops:.1f} | 100 % |")
            print(f"| {name} | {gflop:.2f} | 2× torch fp32 would need | {need_gflops:.1f} | "
                  f"{100 * need_gflops / matmul_gflops:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
