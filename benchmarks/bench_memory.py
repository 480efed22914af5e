"""Peak memory of ``imgbeddings embed`` for 1,000 vs 20,000 inputs: it must not grow with the
number of files. Small generated JPEGs (the pipeline's memory is bounded by its window, not by
image count), the same ViT-B/32 legacy INT8 model as bench_e2e.py. Peak RSS is the process
and its decode workers together, sampled every 20 ms.

Usage: python benchmarks/bench_memory.py [--counts 1000,20000] [--workdir /tmp/imgbeddings-bench]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import peak_rss_of, setup


def small_images(folder: Path, count: int) -> Path:
    """``count`` distinct 160 x 120 JPEGs (made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            img = np.roll(base, i, axis=1) ^ np.uint8(i % 251)
            Image.fromarray(img).save(path, quality=85)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,20000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    args = parser.parse_args()
    model, _ = setup(args.workdir, 10)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        folder = small_images(args.workdir / f"small-{count}", count)
        out = Path(tempfile.mkdtemp()) / "out"
        cmd = [sys.executable, "-m", "imgbeddings", "embed", str(folder), "-o", str(out), "-m", str(model),
               "--no-progress"]  # fmt: skip
        t0 = time.perf_counter()
        proc, peak = peak_rss_of(cmd)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        rows.append((count, peak / 1e6, count / seconds))
        print(f"{count} inputs: peak RSS {peak / 1e6:.0f} MB, {count / seconds:.1f} img/s", flush=True)
    print(f"\n{'inputs':>8}{'peak RSS MB':>14}{'img/s':>8}")
    for count, mb, rate in rows:
        print(f"{count:>8}{mb:>14.0f}{rate:>8.1f}")
    if len(rows) > 1:
        print(f"growth {rows[0][0]} -> {rows[-1][0]} inputs: {rows[-1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
