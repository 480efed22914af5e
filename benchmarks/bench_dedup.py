"""Near-duplicates (``imgbeddings.analysis.dedup``): scale, recall of the approximate search,
the exact/approximate crossover, and quality on images against imagededup's PHash.

    python benchmarks/bench_dedup.py scale --sizes 100000,1000000 [--dim 768]
    python benchmarks/bench_dedup.py recall --size 100000
    python benchmarks/bench_dedup.py recall --size 1000000 --no-exact
    python benchmarks/bench_dedup.py crossover --sizes 5000,10000,20000,40000
    python benchmarks/bench_dedup.py quality [--phash-site DIR]

**scale**: an output folder (Parquet shards, as ``imgbeddings embed`` writes them) holding ``N``
synthetic vectors: random unit vectors, and clusters planted among them (a row starts a cluster
with probability 3 %; the cluster has 2-5 rows: a base vector and copies with isotropic noise of
norm 0.1-0.5, so copies score ~0.89-0.995 with their base and ~0.8-0.99 with each other). Then, in
a fresh process, ``dedup(OUT, threshold=0.85)`` and ``write_report``: wall time from starting
Python to the report written, peak RSS (the kernel's high-water mark, ``VmHWM``), stage times.

**recall**: on the same kind of set, the pairs scoring >= 0.85 that the approximate search finds
(``method="ann"``) against those exact search finds (``method="exact"``), and the groups. Sizes
where exact search takes too long (``--no-exact``) use the pairs within 4 rows of each other
instead (:func:`window_pairs`; at 100k they equal exact search's, which the run checks).

**crossover**: time of exact and approximate search (on vectors in memory) by size, which sets
``EXACT_LIMIT``.

**quality**: the near-duplicate image set of ``benchmarks/make_near_duplicates.py`` embedded with
the tiny test model and a full-size B/32 (``--b32``, legacy format, random weights), deduplicated
at the calibrated threshold (raw and centred cosine): pair precision and recall over the pairs
in a group, and recall by kind of copy; imagededup's PHash (``find_duplicates``, its default
``max_distance_threshold=10``) on the same files, imported from ``--phash-site`` (a folder that
``pip install --no-deps --target DIR imagededup pywavelets`` filled; only its hashing module is
loaded, so torch is not needed). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path("/tmp/imgbeddings-bench")
THRESHOLD = 0.85
TINY = Path(__file__).parents[1] / "tests/data/models/tiny_b32_legacy_int8.onnx"


# --- synthetic outputs ---------------------------------------------------------------------------


def synthetic(n: int, dim: int, seed: int = 0, chunk: int = 65_536):
    """(start, float32 rows) chunks of the planted set; the same for the same arguments."""
    for start in range(0, n, chunk):
        rng = np.random.default_rng([seed, start])
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        starts = np.flatnonzero(rng.random(len(x)) < 0.03)
        taken = np.zeros(len(x), dtype=bool)
        for i in starts:
            if taken[i]:
                continue
            size = int(rng.integers(2, 6))
            for c in range(i + 1, min(i + size, len(x))):
                noise = rng.standard_normal(dim).astype(np.float32)
                x[c] = x[i] + rng.uniform(0.1, 0.5) * noise / np.linalg.norm(noise)
                x[c] /= np.linalg.norm(x[c])
            taken[i : i + size] = True
        yield start, x


def make_output(n: int, dim: int) -> Path:
    """An output folder of the synthetic set (built once, then reused)."""
    from imgbeddings.models.cards import ModelCard, card_path_for
    from imgbeddings.store import OutputStore

    out = BENCH / f"dedup-synthetic-{n}x{dim}"
    if (out / "done").exists():
        return out
    card = ModelCard.load(card_path_for(TINY))
    identity = {"model": card.name, "card": card.fingerprint(), "mode": "fast", "normalize": False}
    identity.update(pca=None, dim=dim)
    t = time.perf_counter()
    with OutputStore(out, identity, card) as store:
        for start, x in synthetic(n, dim):
            for i, v in enumerate(x):
                store.add(f"/synthetic/{(start + i) * 7919 % n:08d}.jpg", 1000, start + i, v)
    (out / "done").write_text("")
    print(f"wrote {out} ({n:,} x {dim}) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def _child(out: str, report: str) -> None:
    t0 = float(os.environ["BENCH_T0"])
    from imgbeddings.analysis.dedup import dedup, write_report

    result = dedup(out, threshold=THRESHOLD)
    write_report(result, report)
    wall = time.time() - t0
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    info = {"wall": wall, "peak_mb": int(hwm.split()[1]) / 1024, "seconds": result.seconds}
    info.update(method=result.method, groups=len(result.groups), pairs=result.pairs)
    print(json.dumps(info))


def scale(sizes: list[int], dim: int) -> None:
    print("| vectors | method | wall (start to report written) | peak RSS | load | search | group | groups |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        out = make_output(n, dim)
        report = BENCH / f"dedup-report-{n}.parquet"
        env = {**os.environ, "BENCH_T0": repr(time.time())}
        code = f"import bench_dedup as b; b._child({str(out)!r}, {str(report)!r})"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=Path(__file__).parent, capture_output=True, text=True
        )
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        s = r["seconds"]
        print(
            f"| {n:,} x {dim} | {r['method']} | {r['wall']:.0f} s | {r['peak_mb'] / 1024:.2f} GB "
            f"| {s['load']:.0f} s | {s['search']:.0f} s | {s['group']:.1f} s | {r['groups']:,} |"
        )


# --- recall and crossover --------------------------------------------------------------------------


def _vectors(n: int, dim: int) -> np.ndarray:
    return np.concatenate([x for _, x in synthetic(n, dim)])


def _pairs(nb) -> set[tuple[int, int]]:
    i, j = np.minimum(nb.i, nb.j), np.maximum(nb.i, nb.j)
    return set(zip(i.tolist(), j.tolist(), strict=True))


def window_pairs(x: np.ndarray) -> set[tuple[int, int]]:
    """The pairs >= THRESHOLD of the synthetic set without searching: clusters are runs of at most
    5 rows (in generation order, which the paths keep), and unrelated 768-d unit vectors never
    come near 0.85 (the largest of 5e11 such cosines is ~0.27), so every pair is within 4 rows."""
    pairs = set()
    for w in range(1, 5):
        near = np.flatnonzero(np.einsum("ij,ij->i", x[:-w], x[w:]) >= THRESHOLD)
        pairs.update(zip(near.tolist(), (near + w).tolist(), strict=True))
    return pairs


def recall(n: int, dim: int, exact_search: bool) -> None:
    from imgbeddings.analysis.dedup import _collect, _group, keep_key
    from imgbeddings.analysis.dedup_search import ann_pairs, exact_pairs
    from imgbeddings.analysis.vectors import VectorSet

    # paths in generation order, so that row i of the collection is row i generated
    coll = _collect(VectorSet.from_arrays(_vectors(n, dim), [f"/s/{i:08d}.jpg" for i in range(n)]), False)
    timings, found, groups = {}, {"window": window_pairs(coll.x)}, {}
    searches = (("exact", exact_pairs), ("ann", ann_pairs)) if exact_search else (("ann", ann_pairs),)
    for name, search in searches:
        t = time.perf_counter()
        nb = search(coll.x, THRESHOLD, 32)
        timings[name] = time.perf_counter() - t
        found[name] = _pairs(nb)
        made, _ = _group(coll, nb, keep_key)
        groups[name] = {frozenset(m["path"] for m in g["members"]) for g in made}
    if not exact_search:
        found["exact"], timings["exact"] = found["window"], 0.0
        print("(exact search not run: the pairs within 4 rows stand for its pairs)")
    else:
        print(f"exact search's pairs == the pairs within 4 rows: {found['exact'] == found['window']}")
    exact, ann = found["exact"], found["ann"]
    hit = len(exact & ann)
    print(f"{n:,} x {dim}, threshold {THRESHOLD}")
    if exact_search:
        print(f"exact search {timings['exact']:.0f} s: {len(exact):,} pairs, {len(groups['exact']):,} groups")
    print(f"approximate {timings['ann']:.0f} s: {len(ann):,} pairs, {len(groups['ann']):,} groups")
    extra = len(ann - exact)
    print(f"pair recall {hit / max(1, len(exact)):.4f} ({hit:,}/{len(exact):,}); pairs not in exact: {extra}")
    if exact_search:
        same = len(groups["exact"] & groups["ann"])
        print(f"groups identical to exact search's: {same / max(1, len(groups['exact'])):.4f}")


def crossover(sizes: list[int], dim: int) -> None:
    from imgbeddings.analysis.dedup_search import ann_pairs, exact_pairs
    from imgbeddings.analysis.vectors import l2_rows

    print("| vectors | exact | approximate | pair recall |")
    print("|---|---|---|---|")
    for n in sizes:
        x = l2_rows(_vectors(n, dim))
        t = time.perf_counter()
        exact = _pairs(exact_pairs(x, THRESHOLD, 32))
        te = time.perf_counter() - t
        t = time.perf_counter()
        ann = _pairs(ann_pairs(x, THRESHOLD, 32))
        ta = time.perf_counter() - t
        print(f"| {n:,} x {dim} | {te:.1f} s | {ta:.1f} s | {len(exact & ann) / max(1, len(exact)):.4f} |")


# --- quality on images -----------------------------------------------------------------------------


def _phash(images: Path, site: Path):
    """imagededup's PHash without the package's torch-importing __init__ files, or None."""
    import importlib
    import types

    sys.path.insert(0, str(site))
    try:
        root = Path(importlib.import_module("imagededup").__file__).parent
        for sub in ("methods", "utils"):  # their __init__ imports the CNN (torch): skip it
            module = types.ModuleType(f"imagededup.{sub}")
            module.__path__ = [str(root / sub)]
            sys.modules[f"imagededup.{sub}"] = module
        return importlib.import_module("imagededup.methods.hashing").PHash(verbose=False)
    except ImportError as exc:
        print(f"PHash unavailable ({exc}): leaving it out", file=sys.stderr)
        return None


def _score(pred: set, truth: set) -> tuple[float, float]:
    tp = len(pred & truth)
    return tp / max(1, len(pred)), tp / max(1, len(truth))


def _group_pairs(groups: list[dict]) -> set[tuple[str, str]]:
    pairs = set()
    for g in groups:
        ps = sorted(m["path"] for m in g["members"])
        pairs.update((a, b) for i, a in enumerate(ps) for b in ps[i + 1 :])
    return pairs


def _by_kind(pred: set, truth: dict, root: Path) -> dict[str, float]:
    """Recall of original-to-copy pairs by kind of copy."""
    found, total = {}, {}
    images = root / "images"
    for members in truth["groups"]:
        original = str((images / members[0]).resolve())
        for copy in members[1:]:
            kind = truth["kinds"][copy]
            pair = tuple(sorted((original, str((images / copy).resolve()))))
            total[kind] = total.get(kind, 0) + 1
            found[kind] = found.get(kind, 0) + (pair in pred)
    return {k: found[k] / total[k] for k in sorted(total)}


def quality(b32: Path, site: Path, originals: int) -> None:
    from make_near_duplicates import make_near_duplicates, true_pairs

    from imgbeddings import embed_files
    from imgbeddings.analysis.dedup import dedup

    root = BENCH / "near-dups"
    truth = make_near_duplicates(root, originals)
    pairs = true_pairs(truth, root)
    files = sum(len(g) for g in truth["groups"])
    print(f"{files} images, {len(truth['groups'])} originals, {len(pairs)} true pairs\n")
    rows, kinds = [], {}
    for name, model in (("tiny (32-d, random weights)", TINY), ("B/32 legacy (768-d, random weights)", b32)):
        out = root / f"out-{Path(model).stem}"
        embed_files([str(root / "images")], out, model=str(model))
        for center in (False, True):
            t = time.perf_counter()
            result = dedup(out, center=center)
            seconds = time.perf_counter() - t
            pred = _group_pairs(result.groups)
            p, r = _score(pred, pairs)
            cal = result.calibration
            space = "centred cosine" if center else "cosine"
            rows.append(
                f"| {name} | {space} | {result.threshold:.4f} | copies q05 {cal.copies['q05']:.4f}, "
                f"distinct q95 {cal.distinct['q95']:.4f} | {p:.3f} | {r:.3f} | {seconds:.1f} s |"
            )
            if not center:
                kinds[name] = _by_kind(pred, truth, root)
    phash = _phash(root / "images", site)
    if phash is not None:
        t = time.perf_counter()
        found = phash.find_duplicates(image_dir=str(root / "images"), max_distance_threshold=10)
        seconds = time.perf_counter() - t
        images = root / "images"
        pred = {
            tuple(sorted((str((images / a).resolve()), str((images / b).resolve()))))
            for a, dups in found.items()
            for b in dups
        }
        p, r = _score(pred, pairs)
        rows.append(
            f"| imagededup PHash | Hamming <= 10 of 64 bits | - | - | {p:.3f} | {r:.3f} | {seconds:.1f} s |"
        )
        kinds["PHash"] = _by_kind(pred, truth, root)
    print(
        "| model | similarity | threshold (calibrated) | calibration | pair precision | pair recall | time |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    names = sorted({k for v in kinds.values() for k in v})
    print("\nrecall of original-copy pairs by kind of copy:\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for who, values in kinds.items():
        print(f"| {who} | " + " | ".join(f"{values[k]:.2f}" for k in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["scale", "recall", "crossover", "quality"])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--b32", type=Path, default=BENCH / "original/patch32_v1.onnx")
    parser.add_argument("--phash-site", type=Path, default=BENCH / "imagededup-site")
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--no-exact", action="store_true", help="recall: skip exact search (large sizes)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.what == "scale":
        scale(sizes, args.dim)
    elif args.what == "recall":
        recall(args.size, args.dim, not args.no_exact)
    elif args.what == "crossover":
        crossover(sizes, args.dim)
    else:
        quality(args.b32, args.phash_site, args.originals)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
