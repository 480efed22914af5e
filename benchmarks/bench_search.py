"""Nearest-neighbour search on an output folder: exact search vs the indexes ``build_index`` makes.

    python benchmarks/bench_search.py --sizes 100000,1000000 [--kinds auto,hnsw,ivf-pq] [--dim 768]

For each size, an output folder (Parquet shards, as ``imgbeddings embed`` writes them) is filled
with synthetic unit vectors of a real width: ``--clusters`` Gaussian clusters on the sphere, each
point its cluster's centre plus a deviation in a shared low-rank subspace (rank 32) plus a little
isotropic noise, so neighbours are close but not trivial (at 100k vectors, a query's 10th neighbour
scores ~0.74, its 11th ~0.736, its 100th ~0.49, an unrelated vector ~0). ``--queries`` fresh vectors
from the same distribution are the queries.

Each contender runs in its own process (peak RSS measured with psutil, sampled every 20 ms, and
the kernel's high-water mark ``VmHWM``): ``exact, shards streamed`` is ``search(OUT, ...,
index=False)`` (reads the shards one at a time, each search); ``exact, in memory`` searches the
vectors ``load()`` gave (sizes up to ``--in-memory-up-to``); each ``--kinds`` entry builds an index
(``build_index(kind=..., rebuild=True)``) in one process, then opens it and searches with it in
another. Reported: build time, index size, time to load/open, queries/s for the batch of
``--queries`` (median of ``--repeats``), recall@10 against exact, peak RSS of building and of
searching, and the recall the build measured on its held-out rows. Nothing here is a test.

    python benchmarks/bench_search.py --sizes 100000,300000 --kinds auto,hnsw --clusters 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CARD_MODEL = ROOT / "tests" / "data" / "models" / "tiny_b32_legacy.onnx"
CHUNK = 1 << 16


def vectors(n: int, dim: int, clusters: int, seed: int, offset: int = 0) -> np.ndarray:
    """Rows ``offset .. offset + n`` of the synthetic set (or queries, with another seed)."""
    base = np.random.default_rng(1234)
    centres = base.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = base.normal(size=(32, dim)).astype(np.float32) / np.sqrt(dim)
    rng = np.random.default_rng([seed, offset])
    which = rng.integers(0, clusters, n)
    low = rng.normal(size=(n, 32)).astype(np.float32) @ basis * np.float32(0.7 / np.sqrt(32))
    x = centres[which] + low + rng.normal(size=(n, dim)).astype(np.float32) * np.float32(0.2 / np.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_output(out: Path, n: int, dim: int, clusters: int) -> None:
    from imgbeddings.models.cards import ModelCard, card_path_for
    from imgbeddings.store import OutputStore

    card = ModelCard.load(card_path_for(CARD_MODEL))
    identity = {"model": card.name, "card": card.fingerprint(), "mode": "fast", "normalize": True}
    identity.update(pca=None, dim=dim)
    with OutputStore(out, identity, card, shard_size=4096) as store:
        for start in range(0, n, CHUNK):
            block = vectors(min(CHUNK, n - start), dim, clusters, 0, start)
            for i, v in enumerate(block, start):
                store.add(f"/synthetic/{i:08d}.jpg", i, i, v)


class PeakRSS:
    """Peak resident memory of this process: psutil samples and the kernel's high-water mark."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        """Peak RSS in MB. ``VmHWM`` is this program's own high-water mark (``ru_maxrss`` is not:
        Linux carries it over from the parent across fork and exec)."""
        self.done.set()
        self.thread.join()
        high_water = 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    high_water = int(line.split()[1]) * 1024
        return max(self.peak, high_water) / 2**20


def worker(job: dict) -> dict:
    from imgbeddings.analysis.index import build_index, open_index
    from imgbeddings.analysis.search import search
    from imgbeddings.analysis.vectors import VectorSet

    out, queries = Path(job["out"]), np.load(job["queries"])
    rss, result = PeakRSS(), {}
    if job["task"] == "build":
        t = time.perf_counter()
        info = build_index(out, kind=job["kind"], rebuild=True)
        result.update(seconds=time.perf_counter() - t, kind=info.kind, params=info.params, recall=info.recall)
        result["index_mb"] = info.size_bytes / 2**20
    else:
        t = time.perf_counter()
        target = {"exact": lambda: None, "memory": lambda: VectorSet.from_output(out)}.get(
            job["task"], lambda: open_index(out)
        )()
        result["open"] = time.perf_counter() - t
        times = []
        for _ in range(job["repeats"]):
            t = time.perf_counter()
            if job["task"] == "exact":  # the shards streamed, each time
                found = search(out, queries, k=10, index=False)
            elif job["task"] == "memory":
                found = search(target, queries, k=10)
            else:
                found = search(out, queries, k=10, index=target)
            times.append(time.perf_counter() - t)
        result["qps"] = len(queries) / statistics.median(times)
        result["method"] = found[0].method
        result["paths"] = [[h.path for h in r.results] for r in found]
    result["rss_mb"] = rss.stop()
    return result


def run(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"worker failed: {job}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--kinds", default="auto,hnsw")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where outputs are made (default: a temp folder)")
    parser.add_argument(
        "--in-memory-up-to",
        type=int,
        default=300_000,
        help="also time exact search on load()ed vectors up to N",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_search_"))
    print(f"threads: faiss/BLAS use the CPUs given ({os.cpu_count()} here); work dir {work}", file=sys.stderr)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = work / f"out_{n}_{args.dim}"
        if not (out / "imgbeddings.json").exists():
            t = time.perf_counter()
            make_output(out, n, args.dim, args.clusters)
            print(f"made {out} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        queries = work / f"queries_{args.dim}.npy"
        np.save(queries, vectors(args.queries, args.dim, args.clusters, 1))
        job = {"out": str(out), "queries": str(queries), "repeats": args.repeats}
        exact = run({**job, "task": "exact"})
        rows.append((n, "exact, shards streamed", "-", "-", 0.0, exact["qps"], 1.0, 0, exact["rss_mb"], "-"))
        print(rows[-1], file=sys.stderr)
        if n <= args.in_memory_up_to:
            got = run({**job, "task": "memory"})
            found = recall(got["paths"], exact["paths"])
            rows.append(
                (
                    n,
                    "exact, in memory (load)",
                    "-",
                    "-",
                    got["open"],
                    got["qps"],
                    found,
                    0,
                    got["rss_mb"],
                    "-",
                )
            )
            print(rows[-1], file=sys.stderr)
        for kind in args.kinds.split(","):
            built = run({**job, "task": "build", "kind": kind})
            used = run({**job, "task": "index"})
            params = ", ".join(f"{k}={v}" for k, v in built["params"].items() if k != "efConstruction")
            label = f"{kind} → {built['kind']}" + (f" ({params})" if params else "")
            got = recall(used["paths"], exact["paths"])
            rows.append(
                (n, label, built["seconds"], built["index_mb"], used["open"], used["qps"], got,
                 built["rss_mb"], used["rss_mb"], built["recall"])
            )  # fmt: skip
            print(rows[-1], file=sys.stderr)
        if not args.workdir:
            shutil.rmtree(out, ignore_errors=True)
    print(
        "| vectors | search | build s | index MB | load/open s | queries/s | recall@10 "
        "| peak RSS build | peak RSS search | tuned recall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, label, build, size, opened, qps, got, rss_b, rss_s, tuned in rows:
        build_s = build if isinstance(build, str) else f"{build:.1f}"
        size_s = size if isinstance(size, str) else f"{size:.0f}"
        rss_b_s = "-" if label.startswith("exact") else f"{rss_b:.0f} MB"
        print(
            f"| {n:,} | {label} | {build_s} | {size_s} | {opened:.2f} | {qps:,.0f} | {got:.3f} "
            f"| {rss_b_s} | {rss_s:.0f} MB | {tuned} |"
        )


if __name__ == "__main__":
    main()
