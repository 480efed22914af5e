"""Write a folder of JPEGs in a realistic mix for the end-to-end benchmark (fixed seed).

Per 10 files: 4 12-MP phone photos (4032 x 3024, half of them with an EXIF orientation tag),
2 1080p frames, 2 small images (640 x 480, 320 x 240), 1 panorama (4000 x 1000) and 1 tall
screenshot-like image (1080 x 2400). Content is photo-like (gradients, shapes, mild noise),
made at a quarter of the size and upscaled, so file sizes are phone-like (a few MB at 12 MP).

Usage: python benchmarks/make_photos.py OUT_DIR [--count 120] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from imgbeddings.export.samples import photo_like

MIX = [
    (4032, 3024, 6),
    (4032, 3024, 0),
    (4032, 3024, 8),
    (4032, 3024, 0),
    (1920, 1080, 0),
    (1080, 1920, 0),
    (640, 480, 0),
    (320, 240, 0),
    (4000, 1000, 0),
    (1080, 2400, 0),
]


def make_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Photo-like content at full size: drawn at 1/4 scale, upscaled, with mild sensor noise."""
    small = photo_like(max(8, width // 4), max(8, height // 4), rng)
    img = small.resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 2.5, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_photos(out: Path, count: int = 120, seed: int = 0) -> list[Path]:
    """Write ``count`` JPEGs to ``out`` (skipped if already there); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h, orientation = MIX[i % len(MIX)]
        path = out / f"img_{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        img = make_photo(w, h, rng)
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
            img = img.transpose(Image.Transpose.ROTATE_90)  # stored sideways, as cameras do
        img.save(path, quality=90, exif=exif.tobytes())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_photos(args.out, args.count, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} JPEGs, {total / 1e6:.0f} MB in {args.out}")


if __name__ == "__main__":
    main()
