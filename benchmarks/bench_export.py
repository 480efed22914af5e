"""Model-only INT8 speed of our default export vs the original recipe and plain dynamic QInt8.

Builds a full-size random-weight CLIP vision checkpoint (benchmarks/make_checkpoint.py),
exports it with ``imgbeddings export --kind legacy`` (fp32), then quantises that one fp32 graph
with every recipe and attempt below and times them side by side in one process: same input,
interleaved runs, median of ``--repeats``. Also prints INT8-vs-fp32 cosine on varied images.

Usage: python benchmarks/bench_export.py [--arch b32] [--batch 32] [--threads 2] [--repeats 7]
       [--kind legacy] [--workdir /tmp/imgbeddings-bench] [--attempts]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoint import make_checkpoint


def attempts(fp32: Path, work: Path, arch_heads: int, hidden: int) -> dict[str, Path]:
    """Other things tried; kept in the table so README's figures can be re-measured."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    out: dict[str, Path] = {}

    def q(name: str, src: Path, **kw: object) -> None:
        path = work / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".onnx")
        if not path.exists():
            quantize_dynamic(str(src), str(path), **kw)
        out[name] = path

    q("matmul-only per-tensor", fp32, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    q("matmul-only reduce-range", fp32, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
      per_channel=True, reduce_range=True)  # fmt: skip
    pre = work / "preprocessed.onnx"
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    q("pre-process + default", pre, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
      per_channel=True)  # fmt: skip
    opt = work / "transformer-optimized.onnx"
    if not opt.exists():
        optimize_model(str(fp32), model_type="clip", num_heads=arch_heads, hidden_size=hidden,
                       opt_level=0).save_model_to_file(str(opt))  # fmt: skip
    q("transformer optimizer + QAttention", opt, weight_type=QuantType.QInt8, per_channel=True,
      op_types_to_quantize=["MatMul", "Attention"], extra_options={"DefaultTensorType": 1})  # fmt: skip
    merged = work / "qkv-merged.onnx"
    if not merged.exists():
        import onnx
        from qkv_merge import merge_sibling_matmuls

        graph = onnx.load(str(fp32))
        merge_sibling_matmuls(graph)
        onnx.save(graph, str(merged))
    q("Q/K/V MatMuls merged + default", merged, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
      per_channel=True)  # fmt: skip
    q("default + activation x activation MatMuls", fp32, weight_type=QuantType.QInt8, per_channel=True,
      op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": False})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="b32", choices=["b32", "b16", "l14"])
    parser.add_argument("--kind", default="legacy", choices=["legacy", "projection"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    parser.add_argument("--attempts", action="store_true", help="also time the attempts that were not kept")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    import onnxruntime as ort

    from imgbeddings.export import export_model
    from imgbeddings.export.quantize import quantize
    from imgbeddings.export.samples import varied_images
    from imgbeddings.images.preprocess import Preprocessor
    from imgbeddings.models.cards import ModelCard

    work = args.workdir / f"{args.arch}-{args.kind}"
    ckpt = args.workdir / f"ckpt-{args.arch}"
    if not (ckpt / "config.json").exists():
        make_checkpoint(args.arch, ckpt)
    fp32 = work / "model_fp32.onnx"
    if not fp32.exists():
        export_model(ckpt, work, kind=args.kind, quantize_recipe=None, log=lambda *a: None)
        (work / "model.onnx").rename(fp32)
        (work / "model.card.json").rename(work / "model_fp32.card.json")
    card = ModelCard.load(work / "model_fp32.card.json")
    models = {"fp32": fp32}
    recipes = [
        ("int8-original", "original recipe (QUInt8)"),
        ("int8-plain", "plain dynamic QInt8"),
        ("int8", "imgbeddings default int8"),
    ]
    for recipe, label in recipes:
        path = work / f"{recipe}.onnx"
        if not path.exists():
            quantize(fp32, path, recipe)
        models[label] = path
    if args.attempts:
        import json

        cfg = json.loads((ckpt / "config.json").read_text())
        models.update(attempts(fp32, work, cfg["num_attention_heads"], cfg["hidden_size"]))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in models.items()
    }
    x = np.random.default_rng(0).normal(size=(args.batch, 3, 224, 224)).astype(np.float32)
    pixels = Preprocessor(card.preprocess).batch(varied_images(16))
    feed = lambda s, a: s.run(None, {"pixel_values": a})[0]  # noqa: E731
    ref = feed(sessions["fp32"], pixels)
    for s in sessions.values():  # warm-up
        feed(s, x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            feed(s, x)
            times[k].append(time.perf_counter() - t)
    speed = {k: args.batch / statistics.median(v) for k, v in times.items()}
    orig, plain = speed["original recipe (QUInt8)"], speed["plain dynamic QInt8"]
    cpu = platform.processor() or platform.machine()
    print(
        f"\nViT-{args.arch.upper()} {args.kind}, batch {args.batch}, {args.threads} threads, "
        f"median of {args.repeats}; onnxruntime {ort.__version__}, {cpu}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'model':<38}{'img/s':>8}{'x original':>12}{'x QInt8':>10}{'MB':>8}{'cos min':>10}{'cos mean':>10}"
    )
    for k, s in sessions.items():
        out = feed(s, pixels)
        c = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{k:<38}{speed[k]:>8.1f}{speed[k] / orig:>12.2f}{speed[k] / plain:>10.2f}"
              f"{models[k].stat().st_size / 1e6:>8.1f}{c.min():>10.5f}{c.mean():>10.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
