"""End to end: a folder of JPEGs in a realistic mix, embedded by the original imgbeddings 0.1.0
and by us (CLI and API), with the same ViT-B/32 legacy-format INT8 model file, side by side.

Each contender runs in its own process (so peak memory is its own: RSS of the process and its
children, sampled every 20 ms with psutil); runs are interleaved and repeated, and the table
shows medians. Timed: from loading the model to the last vector (the CLI rows also include
starting Python and importing, as a user sees it). Also prints our model-only speed on the
same file and the CLI's time split.

Setup (made on first use, in --workdir): a random-weight ViT-B/32 checkpoint with the OpenAI
config (make_checkpoint.py), exported by ``imgbeddings export --kind legacy`` (INT8, our default
recipe), and the photo folder (make_photos.py). The original runs offline from its PyPI sdist
(scripts/original_package.py).

Usage: python benchmarks/bench_e2e.py [--count 120] [--repeats 3] [--workdir /tmp/imgbeddings-bench]
       [--only ours-cli-fast,original]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

CONTENDERS = ["original", "ours-cli-fast", "ours-cli-exact", "ours-api-exact", "ours-stream-fast"]
BATCH = 32


def peak_rss_of(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd``; return its result and the peak summed RSS of it and its children (bytes)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                total = root.memory_info().rss
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak = max(peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


def run_contender(name: str, model: Path, photos: Path) -> dict:
    """Body of one contender, in its own process; returns {"seconds", "images", ...}."""
    paths = sorted(str(p) for p in photos.glob("*.jpg"))
    if name == "original":
        from original_package import load_original

        work = Path(tempfile.mkdtemp())
        Original = load_original(Path(os.environ.get("IMGBEDDINGS_BENCH_SDIST", work)))
        t0 = time.perf_counter()  # like ours: model loading included, Python start and imports not
        ibed = Original(model_path=str(model))
        vectors = ibed.to_embeddings(paths, batch_size=BATCH)
        return {"seconds": time.perf_counter() - t0, "images": len(vectors)}
    if name.startswith("ours-cli"):
        out = Path(tempfile.mkdtemp()) / "out"
        cmd = [
            sys.executable,
            "-m",
            "imgbeddings",
            "embed",
            str(photos),
            "-o",
            str(out),
            "-m",
            str(model),
            "--batch-size",
            str(BATCH),
            "--no-progress",
            "--fast" if name.endswith("fast") else "--exact",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        split = next((line for line in proc.stderr.splitlines() if "time split" in line), "")
        return {"seconds": seconds, "images": len(paths), "split": split.strip()}
    from imgbeddings import Embedder, embed_stream

    if name == "ours-api-exact":
        t0 = time.perf_counter()
        emb = Embedder(model, mode="exact", batch_size=BATCH)
        vectors = emb.embed(paths)
        return {"seconds": time.perf_counter() - t0, "images": len(vectors)}
    if name == "ours-stream-fast":
        t0 = time.perf_counter()
        n = sum(len(b) for b in embed_stream(model, paths, batch_size=BATCH, mode="fast"))
        return {"seconds": time.perf_counter() - t0, "images": n}
    if name == "model-only":
        import numpy as np

        emb = Embedder(model, batch_size=BATCH)
        pixels = emb.preprocess(paths[:BATCH])
        emb.run(pixels)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            emb.run(pixels)
            times.append(time.perf_counter() - t0)
        return {"seconds": float(np.median(times)), "images": BATCH}
    raise SystemExit(f"unknown contender {name}")


def setup(workdir: Path, count: int) -> tuple[Path, Path]:
    from make_checkpoint import make_checkpoint
    from make_photos import make_photos

    model_dir = workdir / "e2e-b32-legacy-int8"
    if not (model_dir / "model.onnx").exists():
        ckpt = workdir / "ckpt-b32"
        if not (ckpt / "config.json").exists():
            make_checkpoint("b32", ckpt)
        from imgbeddings.export import export_model

        export_model(ckpt, model_dir, kind="legacy", legacy_layers=6, log=lambda *a: None)
    photos = workdir / f"photos-{count}"
    make_photos(photos, count)
    return model_dir / "model.onnx", photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.model, args.photos)))
        return

    model, photos = setup(args.workdir, args.count)
    sdist = args.workdir / "sdist"
    sdist.mkdir(exist_ok=True)
    env = dict(os.environ, IMGBEDDINGS_BENCH_SDIST=str(sdist))
    names = [n for n in args.only.split(",") if n]
    results: dict[str, list[dict]] = {n: [] for n in [*names, "model-only"]}
    for _ in range(args.repeats):
        for name in [*names, "model-only"]:
            cmd = [
                sys.executable,
                __file__,
                "--contender",
                name,
                "--model",
                str(model),
                "--photos",
                str(photos),
            ]
            proc, peak = peak_rss_of(cmd, env)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["peak_rss"] = peak
            results[name].append(result)

    def rate(rs: list[dict]) -> float:
        return statistics.median(r["images"] / r["seconds"] for r in rs)

    model_only = rate(results["model-only"])
    base = rate(results["original"]) if "original" in names else None
    nbytes = sum(p.stat().st_size for p in photos.glob("*.jpg"))
    print(
        f"\n{args.count} JPEGs ({nbytes / 1e6:.0f} MB; 40 % 12-MP phone photos), ViT-B/32 legacy INT8, "
        f"batch {BATCH}, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(f"{'contender':<20}{'img/s':>8}{'x original':>12}{'% of model-only':>17}{'peak RSS MB':>13}")
    for name in [*names, "model-only"]:
        r = rate(results[name])
        ratio = f"{r / base:.2f}" if base else "-"
        rss = statistics.median(x["peak_rss"] for x in results[name]) / 1e6
        print(f"{name:<20}{r:>8.1f}{ratio:>12}{100 * r / model_only:>16.0f}%{rss:>13.0f}")
    for name in names:
        if name.startswith("ours-cli"):
            print(f"{name}: {results[name][-1].get('split', '')}")


if __name__ == "__main__":
    main()
