"""Write a near-duplicate test set with known ground truth (fixed seed).

Distinct photo-like originals (smooth gradients, blurred shapes, sensor-like noise; each its own
random scene, 480-1024 px, saved as JPEG quality 92) and, for about 3 in 4 of them, 1-3 copies
made the way duplicates arise: resized (50 %, 75 %), re-encoded (JPEG quality 55), converted
(PNG, WebP), cropped (93-97 %, off centre), or resized and re-encoded together. Every copy
is made from the original's decoded pixels.

Writes ``OUT/images/`` and ``OUT/truth.json``: ``{"groups": [[file, ...], ...], "seed": ..}``,
one group per original (its file first, then its copies; originals without copies are groups
of one), file names relative to ``OUT/images``. Names do not give the groups away: files are
named ``img_NNNN.ext`` in a shuffled order.

Usage: python benchmarks/make_near_duplicates.py OUT_DIR [--originals 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from imgbeddings.export.samples import photo_like

SIZES = [(640, 480), (480, 640), (800, 600), (600, 600), (1024, 768), (720, 480)]
COPIES_PER_ORIGINAL = [0, 1, 1, 2, 2, 3]  # drawn uniformly: ~1.5 copies per original, 1 in 6 alone


def _scaled(img: Image.Image, factor: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)


def _cropped(img: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# name -> (how to make the copy's pixels, file format); the copy is saved in that format
ALTERATIONS: dict[str, tuple[Callable[[Image.Image, np.random.Generator], Image.Image], str]] = {
    "resize50": (lambda img, rng: _scaled(img, 0.5), "jpg"),
    "resize75": (lambda img, rng: _scaled(img, 0.75), "jpg"),
    "jpeg55": (lambda img, rng: _jpeg(img, 55), "jpg"),
    "png": (lambda img, rng: img, "png"),
    "webp": (lambda img, rng: img, "webp"),
    "crop93": (lambda img, rng: _cropped(img, 0.93, rng), "jpg"),
    "crop97": (lambda img, rng: _cropped(img, 0.97, rng), "jpg"),
    "resize50+jpeg55": (lambda img, rng: _jpeg(_scaled(img, 0.5), 55), "jpg"),
}


def _save(img: Image.Image, path: Path) -> None:
    options = {"jpg": {"quality": 92}, "webp": {"quality": 80}, "png": {}}[path.suffix[1:]]
    img.save(path, **options)


def make_near_duplicates(out: Path, originals: int = 150, seed: int = 0) -> dict:
    """Write the set to ``out`` (an existing set with the same seed and size is kept); returns
    the truth (also written to ``out/truth.json``)."""
    truth_file = out / "truth.json"
    if truth_file.is_file():
        truth = json.loads(truth_file.read_text())
        if (truth.get("seed"), truth.get("originals")) == (seed, originals):
            return truth
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan: list[tuple[int, str, Image.Image, str]] = []  # (group, alteration, pixels, format)
    for g in range(originals):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        original = _jpeg(photo_like(w, h, rng), 92)  # the original's pixels as a reader sees them
        plan.append((g, "original", original, "jpg"))
        n_copies = COPIES_PER_ORIGINAL[int(rng.integers(len(COPIES_PER_ORIGINAL)))]
        names = rng.choice(sorted(ALTERATIONS), size=n_copies, replace=False)
        for name in names:
            make, fmt = ALTERATIONS[str(name)]
            plan.append((g, str(name), make(original, rng), fmt))
    order = rng.permutation(len(plan))  # file numbers in a shuffled order: names hide the groups
    groups: list[list[str]] = [[] for _ in range(originals)]
    kinds: dict[str, str] = {}
    for number, i in enumerate(order):
        g, kind, img, fmt = plan[int(i)]
        name = f"img_{number:04d}.{fmt}"
        _save(img, images / name)
        kinds[name] = kind
        groups[g].append(name)
    for members in groups:  # the original first
        members.sort(key=lambda n: (kinds[n] != "original", n))
    truth = {"seed": seed, "originals": originals, "groups": groups, "kinds": kinds}
    truth_file.write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def true_pairs(truth: dict, root: Path) -> set[tuple[str, str]]:
    """Every unordered pair of files that are copies of one original, as sorted absolute paths."""
    pairs = set()
    for members in truth["groups"]:
        paths = sorted(str((root / "images" / m).resolve()) for m in members)
        pairs.update((a, b) for i, a in enumerate(paths) for b in paths[i + 1 :])
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = make_near_duplicates(args.out, args.originals, args.seed)
    files = sum(len(g) for g in truth["groups"])
    pairs = len(true_pairs(truth, args.out))
    print(f"{files} images ({len(truth['groups'])} originals, {pairs} duplicate pairs) in {args.out}/images")


if __name__ == "__main__":
    main()
