"""The Ray engine (:func:`imgbeddings.ray_engine.embed_files_ray`) against ``imgbeddings embed``.

The same generated photo set (``--count`` photo-like 640x480 JPEGs, made once with
``benchmarks/make_photos.py``'s generator) and the same model (default: the full-size ViT-B/32
INT8 at ``/tmp/imgbeddings-bench/b32-legacy-int8-original/model.onnx`` when present, else the
tiny test model) into a fresh output folder each time, each contender in its own process:

- ``imgbeddings embed`` (local CLI): the whole process, start-up and model load included;
- ``ray A x C``: ``embed_files_ray`` with A actors of C CPUs each on a local Ray cluster of
  ``--cpus`` CPUs; timed from the call to its return (actor start-up and model load included),
  the cluster start (``ray.init``) apart, as it is paid once per cluster, not per job;
- ``ray A x C, Ray Dataset``: the same, the input a ``ray.data.read_binary_files`` Dataset
  (its read tasks share the CPUs with the actors).

Images/s is the median of ``--repeats``; the ratio is to the local CLI (target >= 0.8). The
vectors of every Ray run are checked against the local CLI's (cosine >= 0.99999; 0.9999 for the
Dataset input, whose batches differ from the local engine's: see the comment in ``main``).
Nothing here is a test.

Usage: python benchmarks/bench_ray.py [--count 512] [--repeats 1] [--cpus 2] [--model FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path("/tmp/imgbeddings-bench")
ROOT = Path(__file__).resolve().parents[1]
FULL_MODEL = BENCH / "b32-legacy-int8-original" / "model.onnx"
TINY_MODEL = ROOT / "tests" / "data" / "models" / "tiny_b32_legacy.onnx"


def make_set(count: int) -> Path:
    """``count`` photo-like 640x480 JPEGs (made once, kept under BENCH)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_photos import make_photo

    out = BENCH / f"ray-photos-640x480-{count}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = out / f"img_{i:05d}.jpg"
        if not path.exists():
            make_photo(640, 480, rng).save(path, quality=90)
    return out


def run_local(photos: Path, model: Path, out: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "imgbeddings", "embed", str(photos), "-o", str(out), "-m", str(model)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_ray(
    photos: Path, model: Path, out: Path, actors: int, cpus_per_actor: int, cpus: int, dataset: bool = False
) -> dict:
    """One Ray run in a child process: {"seconds", "init"} (see ``_child``)."""
    cmd = [sys.executable, __file__, "--_child", json.dumps([str(photos), str(model), str(out), actors,
                                                             cpus_per_actor, cpus, dataset])]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(spec: str) -> None:
    photos, model, out, actors, cpus_per_actor, cpus, dataset = json.loads(spec)
    import ray

    from imgbeddings.ray_engine import embed_files_ray

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t1 = time.perf_counter()
    source = ray.data.read_binary_files(photos, include_paths=True) if dataset else [photos]
    result = embed_files_ray(source, out, model=model, actors=actors, cpus_per_actor=cpus_per_actor)
    t2 = time.perf_counter()
    assert result.complete, result.failures[:3]
    ray.shutdown()
    print(json.dumps({"seconds": t2 - t1, "init": t1 - t0}))


def same_vectors(a: Path, b: Path) -> float:
    import numpy as np

    import imgbeddings

    ea, eb = imgbeddings.load(a), imgbeddings.load(b)
    va = dict(zip(map(str, ea.paths), ea.vectors, strict=True))
    vb = dict(zip(map(str, eb.paths), eb.vectors, strict=True))
    assert sorted(va) == sorted(vb)
    x = np.stack([va[k] for k in sorted(va)]).astype(np.float64)
    y = np.stack([vb[k] for k in sorted(va)]).astype(np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--model", type=Path, default=FULL_MODEL if FULL_MODEL.is_file() else TINY_MODEL)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(args._child)
        return
    photos = make_set(args.count)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows: list[tuple[str, float, str, str]] = []
    try:
        times = []
        for r in range(args.repeats):
            times.append(run_local(photos, args.model, work / f"local-{r}"))
        local = args.count / statistics.median(times)
        rows.append(("imgbeddings embed (local CLI)", local, "1.00", ""))
        for actors, per, dataset in ((1, args.cpus, False), (args.cpus, 1, False), (args.cpus, 1, True)):
            name = f"ray-{actors}x{per}-{'dataset' if dataset else 'files'}"
            runs = [run_ray(photos, args.model, work / f"{name}-{r}", actors, per, args.cpus, dataset)
                    for r in range(args.repeats)]  # fmt: skip
            cos = same_vectors(work / f"{name}-0", work / "local-0")
            # the original-format INT8 file's vectors move slightly with their batch-mates
            # (README, "Batch-invariant INT8": cosine >= 0.99995), and a Dataset's batches are
            # made of its read blocks, not of the local engine's runs of 32
            assert cos >= (0.9999 if dataset else 0.99999), cos
            speed = args.count / statistics.median(x["seconds"] for x in runs)
            init = statistics.median(x["init"] for x in runs)
            what = ", Ray Dataset input" if dataset else ""
            rows.append((f"ray {actors} actor x {per} CPU{what} (cluster start {init:.1f} s apart)", speed,
                         f"{speed / local:.2f}", f"{cos:.6f}"))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.count} photo-like 640x480 JPEGs, model {args.model}, {args.cpus} CPUs\n")
    print("| engine | images/s | vs local | min cosine to local |")
    print("|---|---:|---:|---:|")
    for name, speed, ratio, cos in rows:
        print(f"| {name} | {speed:.1f} | {ratio} | {cos} |")


if __name__ == "__main__":
    main()
