"""Pure image operations: geometry and normalisation. No I/O, no model names.

``pad_resize_exact`` reproduces, bit for bit, Pillow resizing a square-padded copy of the
image (what the original imgbeddings did at full resolution), without ever building that
square: Pillow resamples in two separable passes (horizontal, then vertical, with an 8-bit
intermediate), so each pass can be run on just the rows or columns that carry image data.
A 12000 x 4000 panorama needs a few MB instead of the 430 MB square.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_STRIP_ROWS = 256  # rows per horizontal pass on tall images: bounds the temporary canvas


def pad_to_square(img: Image.Image, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Pad ``img`` to a centred square of ``fill`` at full resolution (the original recipe)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def pad_resize_exact(
    img: Image.Image,
    size: int,
    fill: tuple[int, int, int] = (0, 0, 0),
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """Same pixels as ``pad_to_square(img, fill).resize((size, size), resample)``, in bounded memory."""
    w, h = img.size
    if w == h:
        return img.resize((size, size), resample)
    side = max(w, h)
    if w > h:
        # Padding is above and below. Horizontal pass over the real rows only; a padded row is
        # a constant row, whose horizontal pass we compute once on a 1-row image.
        body = img.resize((size, h), resample)
        pad_row = Image.new(img.mode, (side, 1), fill).resize((size, 1), resample)
        canvas = pad_row.resize((size, side), Image.Resampling.NEAREST)
        canvas.paste(body, (0, (side - h) // 2))
    else:
        # Padding is left and right, inside every row: run the horizontal pass strip by strip.
        canvas = Image.new(img.mode, (size, h))
        left = (side - w) // 2
        for top in range(0, h, _STRIP_ROWS):
            rows = min(_STRIP_ROWS, h - top)
            strip = Image.new(img.mode, (side, rows), fill)
            strip.paste(img.crop((0, top, w, top + rows)), (left, 0))
            canvas.paste(strip.resize((size, rows), resample), (0, top))
    # Vertical pass only (the width is already ``size``).
    return canvas.resize((size, size), resample)


def reduce_to(img: Image.Image, min_long_side: int) -> Image.Image:
    """Shrink by the largest integer factor that keeps the long side >= ``min_long_side``
    (Pillow's box-filter ``reduce``; cheap). Images already small enough come back as they are."""
    factor = max(img.size) // min_long_side
    return img.reduce(factor) if factor >= 2 else img


def resize_shortest_crop(
    img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resize the shortest edge to ``size`` (keeping the aspect ratio) and centre-crop a square,
    as CLIP's own image processor does."""
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), resample)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img.crop((left, top, left + size, top + size))


def squash(img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize to ``size`` x ``size`` ignoring the aspect ratio (SigLIP)."""
    return img.resize((size, size), resample)


@lru_cache(maxsize=32)
def standardize_lut(
    rescale: float, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """A (3, 256) float32 table: ``(v * rescale - mean[c]) / std[c]`` for every byte value."""
    values = (np.arange(256, dtype=np.float64) * rescale).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    lut = (values[None, :] - m) / s
    lut.setflags(write=False)
    return lut


def to_chw_float(img: Image.Image | np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB image (PIL, or uint8 H x W x 3 array) as a normalised float32 (3, H, W) array,
    by table lookup.

    ``out``, if given, is filled in place (e.g. one slot of a preallocated batch).
    """
    arr = np.asarray(img, dtype=np.uint8)
    if out is None:
        out = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], arr[:, :, c], out=out[c])
    return out
