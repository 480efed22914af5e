"""Shared by the example scripts: a small synthetic image set (when you give no images of your
own) and the options every script takes.

The synthetic set has two visually different classes, written as JPEGs of varied sizes:

- ``warm/NNN.jpg``: reddish and orange discs and ellipses on light, creamy backgrounds;
- ``cool/NNN.jpg``: bluish stripes and grids.

Everything is drawn from a seeded random generator, so the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

#: Sizes (width, height) the images cycle through: square and not.
SIZES = [(320, 240), (200, 300), (256, 256), (300, 200), (240, 320)]


def _warm(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers([225, 215, 195], [256, 240, 225])))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        r = int(rng.integers(min(w, h) // 10, min(w, h) // 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        ry = int(r * rng.uniform(0.6, 1.4))
        colour = tuple(int(v) for v in rng.integers([170, 20, 0], [256, 140, 60]))
        draw.ellipse([x - r, y - ry, x + r, y + ry], fill=colour)
    return img


def _cool(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers([10, 30, 90], [60, 90, 160])))
    draw = ImageDraw.Draw(img)
    step = int(rng.integers(12, 40))
    width = int(rng.integers(3, max(4, step // 2)))
    colour = tuple(int(v) for v in rng.integers([60, 140, 200], [140, 220, 256]))
    grid = rng.random() < 0.5
    offset = int(rng.integers(0, step))
    for pos in range(offset - step, max(w, h) + step, step):
        draw.line([(0, pos), (w, pos)], fill=colour, width=width)  # horizontal stripes
        if grid:
            draw.line([(pos, 0), (pos, h)], fill=colour, width=width)
    return img.rotate(float(rng.uniform(-30, 30)), fillcolor=colour) if not grid else img


def _noisy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A little sensor-like noise, so the JPEGs look less flat."""
    pixels = np.asarray(img, np.float32) + rng.normal(0, 6, (img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_classes(folder: str | Path, per_class: int = 20, seed: int = 0) -> dict[str, list[Path]]:
    """Write ``folder/warm/NNN.jpg`` and ``folder/cool/NNN.jpg`` (``per_class`` each)."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for name, draw in (("warm", _warm), ("cool", _cool)):
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            path = Path(folder) / name / f"{i:03d}.jpg"
            _noisy(draw(rng, SIZES[i % len(SIZES)]), rng).save(path, quality=90)
            written[name].append(path)
    return written


def make_near_copies(originals: list[Path], folder: str | Path) -> list[Path]:
    """For each original: a half-size, more compressed copy and a slightly brighter copy, in
    ``folder/near_copies/`` (what a duplicate search should find)."""
    target = Path(folder) / "near_copies"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for src in originals:
        img = Image.open(src).convert("RGB")
        stem = f"{src.parent.name}_{src.stem}"
        small = target / f"{stem}_small.jpg"
        img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(small, quality=60)
        bright = target / f"{stem}_bright.jpg"
        ImageEnhance.Brightness(img).enhance(1.15).save(bright, quality=85)
        written += [small, bright]
    return written


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--images``, ``--workdir``, ``--per-class``, ``--seed``."""
    parser.add_argument(
        "--model", default="patch32_v1", help="model name or .onnx file (default: %(default)s)"
    )
    parser.add_argument("--images", type=Path, help="your image folder (default: a synthetic set)")
    parser.add_argument("--workdir", type=Path, help="where outputs go (default: a new temporary folder)")
    parser.add_argument("--per-class", type=int, default=20, help="synthetic images per class (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images (default: 0)")


def prepare(args: argparse.Namespace, *, near_copies: bool = False) -> tuple[Path, Path]:
    """(image folder, work folder): the user's ``--images`` (checked), or a synthetic set
    generated into ``WORKDIR/images``. Exits with a message on a missing image folder."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="imgbeddings-example-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.images is not None:
        if not args.images.is_dir():
            raise SystemExit(f"error: --images {args.images}: no such folder")
        return args.images.resolve(), workdir.resolve()
    if args.per_class < 2:
        raise SystemExit(f"error: --per-class must be at least 2, got {args.per_class}")
    images = workdir / "images"
    classes = make_classes(images, args.per_class, args.seed)
    if near_copies:
        make_near_copies([files[0] for files in classes.values()], images)
    print(f"Generated a synthetic image set in {images} (use --images DIR for your own).")
    return images.resolve(), workdir.resolve()


def model_note(model: str) -> None:
    """Be plain about what the numbers mean for a model file."""
    if str(model).endswith(".onnx"):
        print(f"Note: model file {Path(model).name}. A random-weight test model (tests/data/models/tiny_*)")
        print("gives meaningless numbers: they only show the code runs. patch32_v1 gives real ones.")
