"""Peak memory of ``imgbeddings embed`` on huge-but-small files, with the decode budget on and off.

Eight copies of a one-colour 13000 x 13000 RGB PNG (~490 KB on disk, 169 MP, under the default
``max_pixels``; Pillow holds it decoded as 676 MB). Without a bound, every decode worker holds one
at once; the decode budget (:func:`imgbeddings.budget.default_decode_budget`) lets only as many
decode at once as fit. Each configuration runs ``imgbeddings embed DIR -o OUT --workers N`` in its
own process; peak RSS is that process and all its children (decode workers, forkserver) summed,
sampled every 20 ms with psutil (shared pages count once per process, so it overstates a little).
"off" sets ``IMGBEDDINGS_DECODE_BUDGET_MP`` to 1e9 (larger than everything). One run each, no
repeats: the memory figures barely move between runs, the wall times do (+-10 % on a busy box).

Usage: python benchmarks/bench_decode_memory.py [--model FILE] [--workers 2,8] [--copies 8]
       [--side 13000] [--workdir /tmp/imgbeddings-bench]

The default model is the tiny test model (decoding is what is measured); pass a real one (e.g. an
exported B/32) to see the whole process as users run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import peak_rss_of

ROOT = Path(__file__).resolve().parent.parent
OFF_MP = "1e9"


def big_pngs(workdir: Path, side: int, copies: int) -> Path:
    """``copies`` copies of a one-colour ``side`` x ``side`` RGB PNG (made once: some seconds)."""
    source = workdir / f"one-colour-{side}.png"
    if not source.exists():
        tmp = source.with_suffix(".tmp.png")
        Image.new("RGB", (side, side), (40, 90, 160)).save(tmp, compress_level=9)
        tmp.rename(source)
    folder = workdir / f"big-png-{side}-x{copies}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        target = folder / f"{i:02d}.png"
        if not target.exists():
            shutil.copyfile(source, target)
    return folder


def run(folder: Path, model: Path, workers: int, budget_mp: str | None) -> tuple[float, float, str]:
    out = Path(tempfile.mkdtemp(prefix="bench-decode-mem-")) / "out"
    env = dict(os.environ)
    env.pop("IMGBEDDINGS_DECODE_BUDGET_MP", None)
    if budget_mp is not None:
        env["IMGBEDDINGS_DECODE_BUDGET_MP"] = budget_mp
    cmd = [sys.executable, "-m", "imgbeddings", "embed", str(folder), "-o", str(out), "-m", str(model),
           "--workers", str(workers), "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    proc, peak = peak_rss_of(cmd, env=env)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return peak / 1e6, seconds, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "tests/data/models/tiny_b32_legacy.onnx")
    parser.add_argument("--workers", default="2,8")
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--side", type=int, default=13000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgbeddings-bench"))
    args = parser.parse_args()
    from imgbeddings.budget import default_decode_budget
    from imgbeddings.settings import available_memory

    folder = big_pngs(args.workdir, args.side, args.copies)
    size = (folder / "00.png").stat().st_size
    memory = available_memory()
    on_mp = default_decode_budget() / 1e6
    print(
        f"{args.copies} x {args.side} x {args.side} PNG ({size / 1e3:.0f} KB each, "
        f"{args.side**2 / 1e6:.0f} MP); model {args.model.name}; available memory "
        f"{(memory or 0) / 1e9:.1f} GB -> default budget {on_mp:.0f} MP",
        flush=True,
    )
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for label, budget in (("on", None), ("off", OFF_MP)):
            mb, seconds, last = run(folder, args.model, workers, budget)
            budget_mp = f"{on_mp:.0f}" if budget is None else OFF_MP
            rows.append((workers, label, budget_mp, mb, seconds))
            print(f"workers {workers}, budget {label}: peak RSS {mb:.0f} MB, {seconds:.1f} s", flush=True)
            print(f"  {last}", flush=True)
    print(f"\n{'workers':>7}  {'budget':<6}{'MP':>6}{'peak RSS MB':>13}{'wall s':>8}")
    for workers, label, budget_mp, mb, seconds in rows:
        print(f"{workers:>7}  {label:<6}{budget_mp:>6}{mb:>13.0f}{seconds:>8.1f}")
    by = {(w, lab): (mb, s) for w, lab, _, mb, s in rows}
    for workers in sorted({w for w, *_ in rows}):
        if (workers, "on") in by and (workers, "off") in by:
            (on_mb, on_s), (off_mb, off_s) = by[workers, "on"], by[workers, "off"]
            ratio = f"{on_mb / off_mb:.2f}x the peak memory, {on_s / off_s:.2f}x the wall time"
            print(f"workers {workers}: budget on takes {ratio} of budget off")


if __name__ == "__main__":
    main()
