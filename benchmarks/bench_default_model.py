"""The default model in its original format: ONNX Runtime as it is vs the INT8 fast path
(src/imgbeddings/int8.py), model-only and end to end, side by side in one run.

Rows (interleaved repeats, medians):
  (a) model-only, a plain ``onnxruntime.InferenceSession`` on the original-format file;
  (b) model-only, the same on the file the fast path rewrote (cached by ``OnnxModel``);
  (c) end to end, ``imgbeddings embed FOLDER -o OUT --model patch32_v1.onnx`` as a subprocess
      (Python start, imports, model load and the output files included; fresh output folder
      each repeat) on N small JPEGs;
  (d) the same with ``IMGBEDDINGS_INT8_FASTPATH=0`` (skip with --no-off).
Then (c)/(a) against the 1.5x target, the max abs difference of (a) vs (b) outputs on batch 32
and of the vectors (c) vs (d) wrote (both must be 0.0), and the start-up cost of the fast path
(first load with an empty cache, later loads from the cache, fast path off).

Setup, made once in --workdir (outside the repo) and reused: a full-size random-weight ViT-B/32
checkpoint (make_checkpoint.py), exported in the original format (legacy pooling of 6 layers,
QUInt8 ``int8-original``), copied to a bare ``patch32_v1.onnx`` (no card, as the original release
ships it), and N distinct 160 x 120 JPEGs.

Usage: python benchmarks/bench_default_model.py [--count 2000] [--repeats 3] [--threads 2]
       [--workdir /tmp/imgbeddings-bench] [--no-off]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BATCH = 32


def original_format_model(workdir: Path) -> Path:
    """``workdir/original/patch32_v1.onnx``: full-size B/32 in the original format, no card."""
    target = workdir / "original" / "patch32_v1.onnx"
    if target.exists():
        return target
    from make_checkpoint import make_checkpoint

    from imgbeddings.export import export_model

    ckpt = workdir / "ckpt-b32"
    if not (ckpt / "config.json").exists():
        make_checkpoint("b32", ckpt)
    out = workdir / "b32-legacy-int8-original"
    if not (out / "model.onnx").exists():
        export_model(ckpt, out, kind="legacy", legacy_layers=6, quantize_recipe="int8-original")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "model.onnx", target)
    return target


def small_jpegs(folder: Path, count: int) -> Path:
    """``count`` distinct 160 x 120 JPEGs (made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            Image.fromarray(np.roll(base, i, axis=1) ^ np.uint8(i % 251)).save(path, quality=85)
    return folder


def plain_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def timed_run(session, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    return time.perf_counter() - t0, out


def embed_cli(model: Path, photos: Path, env: dict[str, str]) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(prefix="bench-default-")) / "out"
    cmd = [sys.executable, "-m", "imgbeddings", "embed", str(photos), "-o", str(out), "--model", str(model),
           "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"imgbeddings embed failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, out


def startup(model: Path, cache: Path, threads: int, repeats: int) -> dict[str, float]:
    """Seconds to construct ``OnnxModel``: empty cache (rewrite + check), cached, fast path off."""
    from imgbeddings.runtime import OnnxModel

    times: dict[str, list[float]] = {"first load (empty cache)": [], "cached": [], "fast path off": []}
    for _ in range(repeats):
        for name in times:
            if name.startswith("first"):
                os.environ["IMGBEDDINGS_CACHE"] = tempfile.mkdtemp(prefix="bench-int8-cache-")
            t0 = time.perf_counter()
            OnnxModel(model, threads=threads, int8_fastpath=name != "fast path off")
            times[name].append(time.perf_counter() - t0)
            if name.startswith("first"):
                shutil.rmtree(os.environ["IMGBEDDINGS_CACHE"], ignore_errors=True)
                os.environ["IMGBEDDINGS_CACHE"] = str(cache)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    parser.add_argument("--no-off", action="store_true", help="skip (d), the run with the fast path off")
    args = parser.parse_args()

    model = original_format_model(args.workdir)
    photos = small_jpegs(args.workdir / f"small-{args.count}", args.count)
    cache = args.workdir / "cache"
    os.environ["IMGBEDDINGS_CACHE"] = str(cache)
    from imgbeddings.runtime import OnnxModel

    fast = OnnxModel(model, threads=args.threads)  # writes (or finds) the rewritten file
    info = fast.int8_rewrite
    if info is None or not info.verified or info.cached is None:
        raise SystemExit(f"the fast path did not produce a checked, cached rewrite: {info}")
    print(f"rewrite: {info.matmuls} MatMulInteger + {info.convs} ConvInteger -> int8, cached {info.cached}")

    sessions = {"a": plain_session(model, args.threads), "b": plain_session(info.cached, args.threads)}
    pixels = np.clip(np.random.default_rng(0).normal(size=(BATCH, 3, 224, 224)), -1.8, 2.2).astype(np.float32)
    outputs = {k: timed_run(s, pixels)[1] for k, s in sessions.items()}  # warm-up
    env_on = dict(os.environ)
    env_off = dict(os.environ, IMGBEDDINGS_INT8_FASTPATH="0")
    rows: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "d")}
    outs: dict[str, Path] = {}
    for r in range(args.repeats):
        for key in ("a", "b"):
            seconds = statistics.median(timed_run(sessions[key], pixels)[0] for _ in range(3))
            rows[key].append(BATCH / seconds)
        for key, env in (("c", env_on), ("d", env_off)):
            if key == "d" and args.no_off:
                continue
            seconds, out = embed_cli(model, photos, env)
            rows[key].append(args.count / seconds)
            if key in outs:
                shutil.rmtree(outs[key].parent, ignore_errors=True)
            outs[key] = out
        done = ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items() if v)
        print(f"repeat {r + 1}/{args.repeats} (img/s): {done}", flush=True)

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    labels = {
        "a": "(a) model-only, plain ORT, original file",
        "b": "(b) model-only, plain ORT, rewritten file",
        "c": "(c) imgbeddings embed, end to end",
        "d": "(d) imgbeddings embed, fast path off",
    }
    print(
        f"\nViT-B/32 original format (QUInt8, legacy pooling), batch {BATCH}, {args.threads} ORT threads, "
        f"{os.cpu_count()} CPUs; e2e on {args.count} 160x120 JPEGs; median of {args.repeats}"
    )
    print(f"{'':<44}{'img/s':>8}{'x (a)':>8}")
    for key, rate in med.items():
        print(f"{labels[key]:<44}{rate:>8.1f}{rate / med['a']:>8.2f}")
    ratio = med["c"] / med["a"]
    print(f"(c)/(a) = {ratio:.2f} (target >= 1.5: {'met' if ratio >= 1.5 else 'NOT met'})")
    print(f"max abs diff (a) vs (b) outputs, batch {BATCH}: {np.abs(outputs['a'] - outputs['b']).max()}")
    if "d" in outs:
        from imgbeddings import load

        on, off = load(outs["c"]), load(outs["d"])
        same_rows = on.paths == off.paths and on.vectors.shape == off.vectors.shape == (args.count, 768)
        diff = np.abs(np.asarray(on.vectors) - np.asarray(off.vectors)).max() if same_rows else float("nan")
        print(f"max abs diff of the vectors (c) vs (d) wrote: {diff} ({len(on)} rows each)")
    for out in outs.values():
        shutil.rmtree(out.parent, ignore_errors=True)
    print("start-up, OnnxModel(patch32_v1.onnx), median seconds:")
    for name, seconds in startup(model, cache, args.threads, args.repeats).items():
        print(f"  {name:<26}{seconds:>6.2f}")


if __name__ == "__main__":
    main()
