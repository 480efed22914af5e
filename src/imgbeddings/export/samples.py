"""Deterministic, photo-like sample images (NumPy + Pillow only): for the exporter's accuracy
checks, the test assets and the benchmarks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image with photo-like structure: smooth gradients, blurred shapes, sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / (width / rng.uniform(1, 4)) + rng.uniform(0, 6)),
            128 + 100 * np.cos(yy / (height / rng.uniform(1, 4)) + rng.uniform(0, 6)),
            128 + 80 * np.sin((xx + yy) / ((width + height) / rng.uniform(2, 6))),
        ],
        axis=-1,
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, min(width, height) / 150)))
    noise = rng.normal(0, 6, (height, width, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def varied_images(n: int = 16, seed: int = 0) -> list[Image.Image]:
    """``n`` images of varied content and shape: photo-like scenes at several aspect ratios,
    a flat colour, pure noise, hard-edged stripes, a dark and a bright frame."""
    rng = np.random.default_rng(seed)
    shapes = [(320, 240), (240, 320), (300, 300), (480, 160), (160, 480), (256, 192)]
    images = []
    for i in range(n):
        kind = i % 8
        w, h = shapes[i % len(shapes)]
        if kind == 5:
            images.append(Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3))))
        elif kind == 6:
            images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        elif kind == 7:
            stripes = ((np.arange(w)[None, :, None] // rng.integers(4, 24)) % 2) * 255
            images.append(Image.fromarray(np.broadcast_to(stripes, (h, w, 3)).astype(np.uint8)))
        else:
            img = photo_like(w, h, rng)
            if kind == 3:
                img = img.point(lambda v: v // 4)
            elif kind == 4:
                img = img.point(lambda v: 192 + v // 4)
            images.append(img)
    return images
