"""Maps and clusters of 10,000 vectors: time and peak RSS, and why the vectors are centred.

Cases (each in its own process, so each peak RSS is its own; peak = max of psutil samples every
20 ms and the kernel's high-water mark):

- ``map``: UMAP 2-D layout of N synthetic 768-d vectors in 20 planted classes (legacy-like: a
  large shared component, lengths varying 0.7-1.3x) and the PNG, dots only;
- ``map+thumbs``: the same with thumbnails, decoded from generated 1024 x 768 JPEGs;
- ``kmeans``: ``cluster(k=20)``; ``auto``: ``cluster(auto=True)`` (HDBSCAN on a 5-d UMAP).

umap-learn compiles its numba code on first use in a process; that one-off cost is timed
separately ("warm-up": compiling plus UMAP runs on 200 and 4,200 points, which take both of its
neighbour-search paths) and left out of each case's time, but not out of its peak RSS (the
whole process's high-water mark, as a command-line run would have it).

``--quality`` prints the measurements behind the choices (generated legacy-like vectors with
planted classes; 5-NN accuracy of the planted class on the 2-D map, ARI of clusters): how
vectors are centred, PCA to 64 dims before UMAP, and what ``auto`` runs HDBSCAN on.
``--real PNG`` writes a real map: generated tinted scenes in 4 colour families embedded with
the tiny test model, coloured by folder, thumbnails on.

Usage: python benchmarks/bench_map.py [--n 10000] [--cases map,map+thumbs,kmeans,auto]
       python benchmarks/bench_map.py --quality
       python benchmarks/bench_map.py --real /tmp/imgbeddings-map.png
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "models" / "tiny_b32_legacy.onnx"


def legacy_like(n: int, dim: int = 768, classes: int = 20, sep: float = 0.3, seed: int = 0):
    """(vectors, labels): planted classes on top of a shared component 4x the noise, lengths 0.7-1.3x."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim) * 4
    centres = rng.normal(size=(classes, dim))
    y = np.arange(n) % classes
    x = (common + centres[y] * sep + rng.normal(size=(n, dim))) * rng.uniform(0.7, 1.3, (n, 1))
    return x.astype(np.float32), y


class PeakRSS:
    """Peak resident memory of this process while running (psutil samples + ru_maxrss)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def generated_jpegs(folder: Path, count: int) -> list[str]:
    """``count`` 1024 x 768 photo-like JPEGs (made once, reused)."""
    from imgbeddings.export.samples import photo_like

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            photo_like(256, 192, rng).resize((1024, 768), Image.Resampling.BICUBIC).save(path, quality=88)
        paths.append(str(path))
    return paths


def warm_up() -> None:
    """Compile umap-learn's numba code: exact neighbours (< 4,096 points) and NN-descent
    (more), 2-d and 5-d layouts."""
    from imgbeddings.analysis.mapping import umap_embed

    rng = np.random.default_rng(0)
    umap_embed(rng.normal(size=(200, 8)).astype(np.float32), 2)
    umap_embed(rng.normal(size=(4200, 8)).astype(np.float32), 5, min_dist=0.0)


def run_case(case: str, n: int, workdir: Path) -> dict:
    from imgbeddings.analysis.cluster import cluster
    from imgbeddings.analysis.mapping import make_map
    from imgbeddings.analysis.vectors import VectorSet

    t0 = time.perf_counter()
    warm_up()
    jit = time.perf_counter() - t0
    x, y = legacy_like(n)
    paths = [f"/nowhere/{i}.jpg" for i in range(n)]
    if case == "map+thumbs":
        images = generated_jpegs(workdir / "jpegs", 1500)
        paths = [images[i % len(images)] for i in range(n)]
    vs = VectorSet(paths, x, {})
    out = workdir / f"{case}.png"
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        extra = ""
        if case.startswith("map"):
            res = make_map(vs, out, color_by=None, thumbnails=case == "map+thumbs", sample=None)
            extra = f"{res.thumbnails} thumbnails"
        elif case == "kmeans":
            res = cluster(vs, k=20)
            extra = f"ARI {_ari(y, res.labels):.3f}"
        elif case == "auto":
            res = cluster(vs, auto=True)
            extra = f"ARI {_ari(y, res.labels):.3f}, {res.n_clusters} clusters, noise {res.n_noise / n:.1%}"
        seconds = time.perf_counter() - t0
    return {"case": case, "n": n, "seconds": seconds, "peak_mb": rss.peak / 1e6, "jit": jit, "extra": extra}


def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def quality(repeats: int = 2) -> None:
    """The choices behind clusters and maps, on legacy-like vectors with planted classes."""
    from sklearn.cluster import KMeans
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from imgbeddings.analysis.cluster import cluster
    from imgbeddings.analysis.mapping import umap_embed
    from imgbeddings.analysis.reduce import centered_unit, pca_reduce
    from imgbeddings.analysis.vectors import VectorSet

    def knn(xy, y) -> float:
        return cross_val_score(KNeighborsClassifier(5), xy, y, cv=5).mean()

    warm_up()
    x, y = legacy_like(2000, classes=8, sep=0.2)
    vs = VectorSet.from_arrays(x)
    ways = {
        "unit rows (no centring)": vs.unit(),
        "centre, then unit": vs.unit(center=True),
        "unit, centre, unit (used)": centered_unit(x),
    }
    print("1. Centring: 2,000 x 768 vectors, 8 classes (sep 0.2), shared component 4x, lengths 0.7-1.3x")
    print(f"{'vectors':<28}{'k-means ARI':>12}{'map 5-NN':>10}")
    for name, u in ways.items():
        ari = np.mean([_ari(y, KMeans(8, n_init=3, random_state=s).fit_predict(u)) for s in range(3)])
        print(f"{name:<28}{ari:>12.3f}{knn(umap_embed(u, 2, seed=0), y):>10.3f}", flush=True)

    print(f"\n2. PCA to 64 before UMAP: 10,000 x 768 vectors, 2-D map (best time of {repeats})")
    print(f"{'data':<22}{'UMAP on':<14}{'time s':>8}{'map 5-NN':>10}")
    for classes, sep in ((20, 0.3), (8, 0.15)):
        x, y = legacy_like(10_000, classes=classes, sep=sep)
        u = centered_unit(x)
        times: dict[str, list[float]] = {"768-d vectors": [], "64-d PCA": []}
        accuracy: dict[str, float] = {}
        for _ in range(repeats):  # interleaved, best time of each: the machine may be shared
            for name, dims in (("768-d vectors", None), ("64-d PCA", 64)):
                t0 = time.perf_counter()
                xy = umap_embed(pca_reduce(u, dims, seed=0), 2, seed=0)
                times[name].append(time.perf_counter() - t0)
                accuracy[name] = knn(xy, y)
        for name, seconds in times.items():
            label = f"{classes} classes, sep {sep}"
            print(f"{label:<22}{name:<14}{min(seconds):>8.1f}{accuracy[name]:>10.3f}", flush=True)

    print("\n3. auto clustering (HDBSCAN): 2,000 x 768 vectors, 8 classes (sep 0.2)")
    print(f"{'HDBSCAN on':<24}{'ARI':>7}{'noise':>8}{'clusters':>10}{'time s':>8}")
    x, y = legacy_like(2000, classes=8, sep=0.2)
    vs = VectorSet.from_arrays(x)
    for name, reduce in (("768-d vectors", None), ("10-d PCA", "pca"), ("5-d UMAP (default)", "umap")):
        t0 = time.perf_counter()
        res = cluster(vs, auto=True, reduce=reduce)
        seconds = time.perf_counter() - t0
        found = f"{_ari(y, res.labels):>7.3f}{res.n_noise / len(vs):>8.1%}{res.n_clusters:>10}"
        print(f"{name:<24}{found}{seconds:>8.1f}", flush=True)


def real_map(png: Path, workdir: Path, per_class: int = 150) -> None:
    """Tinted scenes in 4 colour families, embedded with the tiny model, mapped."""
    from imgbeddings import embed_files
    from imgbeddings.analysis.mapping import make_map
    from imgbeddings.analysis.vectors import VectorSet
    from imgbeddings.export.samples import photo_like

    tints = {"red": (90, -30, -50), "blue": (-50, -10, 90), "green": (-40, 80, -40), "yellow": (70, 60, -80)}
    rng = np.random.default_rng(0)
    folder = workdir / "scenes"
    for name, tint in tints.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / name / f"{name}_{i:03d}.jpg"
            if not path.exists():
                w, h = [(320, 240), (240, 320), (300, 300)][i % 3]
                base = np.asarray(photo_like(w, h, rng), dtype=np.float32) + np.array(tint, np.float32)
                Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
    out = workdir / "scenes-out"
    embed_files([str(folder)], out, model=str(TINY), recursive=True)
    t0 = time.perf_counter()
    res = make_map(VectorSet.from_output(out), png, color_by="folder", seed=0)
    print(f"wrote {png}: {len(res)} images, {res.thumbnails} thumbnails, {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--cases", default="map,map+thumbs,kmeans,auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench-map"))
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--real", type=Path, metavar="PNG")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_case(args.one, args.n, args.workdir)))
        return
    if args.quality:
        quality()
        return
    if args.real:
        real_map(args.real, args.workdir)
        return
    rows = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", case, "--n", str(args.n), "--workdir", str(args.workdir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{case}: {r['seconds']:.1f} s, peak RSS {r['peak_mb']:.0f} MB ({r['extra']})", flush=True)
    print(f"\n{'case':<12}{'vectors':>9}{'time s':>9}{'peak RSS MB':>13}{'warm-up s':>11}  notes")
    for r in rows:
        numbers = f"{r['n']:>9,}{r['seconds']:>9.1f}{r['peak_mb']:>13.0f}{r['jit']:>11.1f}"
        print(f"{r['case']:<12}{numbers}  {r['extra']}")


if __name__ == "__main__":
    main()
