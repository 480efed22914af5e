"""Does a vector depend on the rest of its batch? Batch invariance, speed and accuracy of INT8 forms.

Builds a full-size random-weight CLIP vision checkpoint (benchmarks/make_checkpoint.py), exports
it with ``--kind legacy --quantize int8-original`` (which also writes the fp32 graph), quantises
that one fp32 graph with every recipe and candidate below, then, side by side in one process:

- invariance: 16 generated images (``varied_images``, our exact preprocessing) embedded alone,
  in batches of 8 (with each other, and with 4 other images) and of 32 (with 16 other images,
  twice, shuffled): the largest |difference| from the image's vector alone, and the lowest
  cosine; then random compositions of 2..64 images alternating 1 and 2 threads;
- speed: model only, ``--threads`` threads, batch ``--batch`` and batch 1, interleaved runs in
  a new random order each round, median of ``--repeats``;
- accuracy: cosine to fp32 on the same 16 images.

Candidates that were measured and not kept: ONNX Runtime's own ``quantize_static`` (QDQ,
MinMax; it also quantises attention's activation x activation MatMuls and their outputs, so it
runs as QLinearMatMul + DequantizeLinear + a separate bias Add), our static scales as standard
QDQ ops (no fused bias), per-image dynamic quantisation (one scale per row of every MatMul
input, a graph rewrite), and ``MatMulNBits`` 8-bit weights with int8 compute (needs
``onnx_ir``; skipped when it is missing). All of them, and the row "fp32, ordered token sums",
get the int8 recipe's rewrite of the legacy pooling's token sums (``_ordered_sums``), without
which no graph is exactly batch-invariant.

Usage: python benchmarks/bench_batch_invariance.py [--arch b32] [--batch 32] [--threads 2]
       [--repeats 7] [--workdir /tmp/imgbeddings-bench]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoint import make_checkpoint


def static_qdq(fp32: Path, out: Path, pixels: np.ndarray) -> None:
    """Our static scales, but each MatMul as standard DequantizeLinear -> MatMul -> Add ops."""
    import onnx
    from onnx import helper

    from imgbeddings.export import quantize as q

    q._quantize_dynamic(fp32, out, dict(weight_type=q_type("QInt8"), per_channel=True,
                                        op_types_to_quantize=["MatMul"]))  # fmt: skip
    model = onnx.load(str(out))
    scales = q._static_activations(model, pixels)
    q._ordered_sums(model)
    g = model.graph
    cons: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    prod = {o: n for n in g.node for o in n.output}
    drop, repl = set(), {}
    for mm in [n for n in g.node if n.op_type == "MatMulInteger"]:
        a, w, a_zp, w_zp = mm.input
        cast = cons[mm.output[0]][0]
        mul = cons[cast.output[0]][0]
        scale_mul = prod[next(i for i in mul.input if i != cast.output[0])]
        b_scale = next(i for i in scale_mul.input if i != scales[a])
        deq_a, deq_w = f"{mm.name}_a", f"{mm.name}_w"
        repl[mm.name] = [
            helper.make_node("DequantizeLinear", [a, scales[a], a_zp], [deq_a]),
            helper.make_node("DequantizeLinear", [w, b_scale, w_zp], [deq_w], axis=1),
            helper.make_node("MatMul", [deq_a, deq_w], [mul.output[0]]),
        ]
        drop.update({cast.name, mul.name, scale_mul.name})
    nodes = [x for n in g.node if n.name not in drop for x in repl.get(n.name, [n])]
    del g.node[:]
    g.node.extend(nodes)
    q._drop_unused(g)
    onnx.save(model, str(out))


def per_image_dynamic(int8_dynamic: Path, out: Path) -> None:
    """Every DynamicQuantizeLinear -> one symmetric scale per row (token) of its input:
    Abs -> ReduceMax(last axis) -> x / scale -> QuantizeLinear(zero point 128); each MatMul
    becomes MatMulIntegerToFloat with that per-row scale (bias added after: ONNX Runtime scales
    the bias too when A's scale is not a scalar)."""
    import onnx
    from onnx import helper, numpy_helper

    from imgbeddings.export.quantize import _drop_unused, _ordered_sums

    model = onnx.load(str(int8_dynamic))
    _ordered_sums(model)
    _drop_unused(model.graph)
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    for name, value in (("row_zp", np.array(128, np.uint8)), ("row_axes", np.array([-1], np.int64)),
                        ("row_eps", np.array(1e-30, np.float32)), ("row_127", np.array(127.0, np.float32)),
                        ("row_one", np.array(1.0, np.float32))):  # fmt: skip
        g.initializer.append(numpy_helper.from_array(value, name))
    drop, repl = set(), {}
    for n in [n for n in g.node if n.op_type == "DynamicQuantizeLinear"]:
        x, (y, s_dyn, _), p = n.input[0], n.output, n.name
        repl[n.name] = [
            helper.make_node("Abs", [x], [p + "_abs"]),
            helper.make_node("ReduceMax", [p + "_abs", "row_axes"], [p + "_amax"], keepdims=1),
            helper.make_node("Max", [p + "_amax", "row_eps"], [p + "_amax1"]),
            helper.make_node("Div", [p + "_amax1", "row_127"], [p + "_scale"]),
            helper.make_node("Div", [x, p + "_scale"], [p + "_scaled"]),
            helper.make_node("QuantizeLinear", [p + "_scaled", "row_one", "row_zp"], [y]),
        ]
        for mm in cons[y]:
            cast = cons[mm.output[0]][0]
            mul = cons[cast.output[0]][0]
            scale_mul = prod[next(i for i in mul.input if i != cast.output[0])]
            b_scale = next(i for i in scale_mul.input if i != s_dyn)
            inputs = [y, mm.input[1], p + "_scale", b_scale, "row_zp", mm.input[3]]
            repl[mm.name] = [helper.make_node("MatMulIntegerToFloat", inputs, [mul.output[0]],
                                              domain="com.microsoft")]  # fmt: skip
            drop.update({cast.name, mul.name, scale_mul.name})
    nodes = [x for n in g.node if n.name not in drop for x in repl.get(n.name, [n])]
    del g.node[:]
    g.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))


def ort_quantize_static(fp32: Path, out: Path, pixels: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixel_values": pixels[i : i + 8]} for i in range(0, len(pixels), 8)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul"], activation_type=q_type("QUInt8"),
                    weight_type=q_type("QInt8"), calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True})  # fmt: skip


def matmul_nbits(fp32: Path, out: Path) -> bool:
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # needs onnx_ir
        return False
    q = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=128, is_symmetric=True,
                             accuracy_level=4, op_types_to_quantize=("MatMul",))  # fmt: skip
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=False)
    return True


def q_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, name)


def compositions(tests: np.ndarray, pool: np.ndarray, rng: np.random.Generator):
    """(batch, {test index: row}): each test image alone, in batches of 8 and of 32."""
    n = len(tests)
    for i in range(n):
        yield tests[i : i + 1], {i: 0}
    for perm in (np.arange(n), rng.permutation(n)):
        for half in (perm[: n // 2], perm[n // 2 :]):
            yield tests[half], {int(t): r for r, t in enumerate(half)}
    perm = rng.permutation(n)
    for q in range(4):
        idx = perm[q * 4 : (q + 1) * 4]
        order = rng.permutation(8)
        batch = np.concatenate([tests[idx], pool[rng.choice(len(pool), 4, replace=False)]])[order]
        yield batch, {int(t): int(np.flatnonzero(order == r)[0]) for r, t in enumerate(idx)}
    for _ in range(2):
        order = rng.permutation(32)
        batch = np.concatenate([tests, pool[rng.choice(len(pool), 32 - n, replace=False)]])[order]
        yield batch, {t: int(np.flatnonzero(order == t)[0]) for t in range(n)}


def invariance(sessions: dict[int, Any], tests: np.ndarray, pool: np.ndarray) -> tuple[float, float, float]:
    """(max |Δ| and min cosine vs alone over fixed compositions, max |Δ| over random ones)."""
    alone = np.concatenate([run(sessions[2], tests[i : i + 1]) for i in range(len(tests))])
    worst, min_cos = 0.0, 1.0
    for batch, rows in compositions(tests, pool, np.random.default_rng(0)):
        out = run(sessions[2], batch)
        for t, r in rows.items():
            worst = max(worst, float(np.abs(out[r] - alone[t]).max()))
            min_cos = min(min_cos, float(cosine(out[r : r + 1], alone[t : t + 1])[0]))
    rng, everything, random_worst = np.random.default_rng(1), np.concatenate([tests, pool]), 0.0
    for trial in range(8):
        size = int(rng.choice([2, 3, 5, 7, 16, 33, 64]))
        idx = rng.choice(len(everything), size, replace=size > len(everything))
        idx[rng.integers(size)] = rng.integers(len(tests))
        out = run(sessions[1 + trial % 2], everything[idx])
        for r in np.flatnonzero(idx < len(tests)):
            random_worst = max(random_worst, float(np.abs(out[r] - alone[idx[r]]).max()))
    return worst, min_cos, random_worst


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run(session: Any, pixels: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="b32", choices=["b32", "b16", "l14"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    import onnx
    import onnxruntime as ort

    from imgbeddings.export import export_model
    from imgbeddings.export.quantize import _drop_unused, _ordered_sums, calibration_pixels, quantize
    from imgbeddings.export.samples import varied_images
    from imgbeddings.images.preprocess import Preprocessor
    from imgbeddings.models.cards import ModelCard
    from imgbeddings.runtime import CPU, session_options

    ckpt = args.workdir / f"ckpt-{args.arch}"
    exported = args.workdir / f"{args.arch}-legacy-int8-original"
    work = args.workdir / f"batch-invariance-{args.arch}"
    work.mkdir(parents=True, exist_ok=True)
    if not (ckpt / "config.json").exists():
        make_checkpoint(args.arch, ckpt)
    fp32 = exported / "model_fp32.onnx"
    if not fp32.exists():
        export_model(ckpt, exported, kind="legacy", quantize_recipe="int8-original")
    card = ModelCard.load(exported / "model_fp32.card.json")
    calibration = calibration_pixels(card.preprocess)
    ordered = work / "fp32-ordered-sums.onnx"  # the token sums rewritten as in the int8 recipe
    if not ordered.exists():
        model = onnx.load(str(fp32))
        _ordered_sums(model)
        _drop_unused(model.graph)
        onnx.save(model, str(ordered))
    models: dict[str, Path] = {"fp32": fp32, "fp32, ordered token sums": ordered,
                               "int8-original (0.1.0 recipe)": exported / "model.onnx"}  # fmt: skip
    for recipe, label in (("int8-dynamic", "int8-dynamic (old default)"), ("int8", "int8 (static scales)")):
        models[label] = work / f"{recipe}.onnx"
        if not models[label].exists():
            quantize(fp32, models[label], recipe, calibration=calibration)
    builders = {
        "static, standard QDQ ops": lambda p: static_qdq(fp32, p, calibration),
        "ORT quantize_static (QDQ, MinMax)": lambda p: ort_quantize_static(ordered, p, calibration),
        "per-image dynamic (rewrite)": lambda p: per_image_dynamic(models["int8-dynamic (old default)"], p),
        "MatMulNBits 8-bit, int8 compute": lambda p: matmul_nbits(ordered, p),
    }
    for label, build in builders.items():
        path = work / (label.split(" (")[0].replace(",", "").replace(" ", "-") + ".onnx")
        if path.exists() or build(path) is not False:
            models[label] = path
        else:
            print(f"skipped {label}: onnx_ir is not installed", file=sys.stderr)

    def session(path: Path, threads: int) -> Any:
        return ort.InferenceSession(str(path), session_options(threads), providers=[CPU])

    pre = Preprocessor(card.preprocess, "exact")
    tests, pool = pre.batch(varied_images(16)), pre.batch(varied_images(48, seed=1))
    sessions = {k: {1: session(p, 1), 2: session(p, args.threads)} for k, p in models.items()}
    reference = run(sessions["fp32"][2], tests)
    x = np.random.default_rng(0).normal(size=(args.batch, 3, 224, 224)).astype(np.float32)
    for s in sessions.values():  # warm-up
        run(s[2], x), run(s[2], x[:1])
    t_batch: dict[str, list[float]] = {k: [] for k in models}
    t_one: dict[str, list[float]] = {k: [] for k in models}
    order = np.random.default_rng(2)
    for _ in range(args.repeats):
        for k in order.permutation(list(sessions)):  # no model always follows the same one
            s = sessions[k]
            time.sleep(0.05)  # the previous session's threads stop spinning first
            t = time.perf_counter()
            run(s[2], x)
            t_batch[k].append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(8):
                run(s[2], x[i : i + 1])
            t_one[k].append((time.perf_counter() - t) / 8)
    speed = {k: args.batch / statistics.median(v) for k, v in t_batch.items()}
    base = speed["int8-dynamic (old default)"]
    print(
        f"\nViT-{args.arch.upper()} legacy, {args.threads} threads, median of {args.repeats}; onnxruntime "
        f"{ort.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
        "max|d| / min cos: the same image alone vs in batches of 8 and 32 with other images;\n"
        "random: compositions of 2..64 images, 1 and 2 threads; cos vs fp32 on 16 varied images\n"
    )
    print(f"{'model':<36}{'img/s b' + str(args.batch):>11}{'x dyn':>7}{'img/s b1':>10}"
          f"{'max|d|':>10}{'min cos':>11}{'random':>9}{'fp32 min':>10}{'mean':>9}")  # fmt: skip
    for k in models:
        worst, min_cos, random_worst = invariance(sessions[k], tests, pool)
        c = cosine(run(sessions[k][2], tests), reference)
        one = 1 / statistics.median(t_one[k])
        print(f"{k:<36}{speed[k]:>11.1f}{speed[k] / base:>7.2f}{one:>10.1f}{worst:>10.3g}{min_cos:>11.7f}"
              f"{random_worst:>9.3g}{c.min():>10.5f}{c.mean():>9.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
