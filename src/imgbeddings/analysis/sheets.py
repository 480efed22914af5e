"""Thumbnails and contact sheets: small pictures of the images behind the vectors.

Each image is decoded with :func:`~imgbeddings.images.decode.load_image` (EXIF orientation,
alpha, odd modes, the pixel limit: the same rules as embedding) with JPEG draft decoding, so a
12-MP JPEG is decoded at 1/8 scale or less, and shrunk to at most ``side`` pixels (128 by
default) before the next one is decoded: a thread holds one decoded image at a time. An image
that cannot be read any more (moved, deleted, broken) gets a grey placeholder tile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from .. import settings
from ..errors import InputError, OptionError
from ..images.decode import load_image

if TYPE_CHECKING:
    from .cluster import ClusterResult

#: Largest thumbnail side (pixels).
MAX_SIDE = 128
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (200, 200, 200)
_PAD = 4
_HEADER = 28


def thumbnail(path: str, side: int = MAX_SIDE) -> Image.Image | None:
    """``path`` shrunk to fit a ``side`` x ``side`` square (RGB), or None if it cannot be read."""
    if not 1 <= side <= MAX_SIDE:
        raise OptionError(f"thumbnail side must be 1 to {MAX_SIDE} pixels, got {side}")
    try:
        img = load_image(path, draft_long_side=side)
    except InputError:
        return None
    img.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return img


def thumbnails(
    paths: Sequence[str], side: int = MAX_SIDE, workers: int | None = None
) -> list[Image.Image | None]:
    """:func:`thumbnail` of each path, in order, decoded in ``workers`` threads (default: the CPUs
    this process may use, at most 8)."""
    workers = workers or min(8, settings.available_cpus())
    if workers <= 1 or len(paths) <= 1:
        return [thumbnail(p, side) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: thumbnail(p, side), paths))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def grid_shape(count: int, per_sheet: int) -> tuple[int, int]:
    """(columns, rows) of a sheet showing ``min(count, per_sheet)`` tiles: columns =
    ``ceil(sqrt(per_sheet))``, rows as many as the tiles need."""
    cols = math.ceil(math.sqrt(per_sheet))
    return cols, max(1, math.ceil(min(count, per_sheet) / cols))


def sheet_size(count: int, per_sheet: int, side: int = MAX_SIDE) -> tuple[int, int]:
    """Pixel (width, height) of a sheet of ``count`` images (at most ``per_sheet`` shown)."""
    cols, rows = grid_shape(count, per_sheet)
    cell = side + 2 * _PAD
    return cols * cell + 2 * _PAD, _HEADER + rows * cell + 2 * _PAD


def contact_sheet(
    images: Sequence[Image.Image | None], title: str, *, per_sheet: int, side: int = MAX_SIDE
) -> Image.Image:
    """A white RGB sheet: ``title`` on top, then a grid of the first ``per_sheet`` images, each
    centred in a ``side`` x ``side`` cell (None: a grey placeholder)."""
    cols, _ = grid_shape(len(images), per_sheet)
    sheet = Image.new("RGB", sheet_size(len(images), per_sheet, side), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD + 2, 6), title, fill=(0, 0, 0), font=_font(16))
    cell = side + 2 * _PAD
    for i, img in enumerate(images[:per_sheet]):
        x0 = _PAD + (i % cols) * cell + _PAD
        y0 = _HEADER + _PAD + (i // cols) * cell + _PAD
        if img is None:
            draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=_PLACEHOLDER)
            draw.line([x0, y0, x0 + side - 1, y0 + side - 1], fill=(150, 150, 150), width=2)
            draw.line([x0, y0 + side - 1, x0 + side - 1, y0], fill=(150, 150, 150), width=2)
            continue
        sheet.paste(img, (x0 + (side - img.width) // 2, y0 + (side - img.height) // 2))
    return sheet


def contact_sheets(
    result: ClusterResult,
    folder: str | os.PathLike[str],
    *,
    per_sheet: int = 36,
    side: int = MAX_SIDE,
    workers: int | None = None,
) -> list[Path]:
    """One PNG per cluster in ``folder`` (created): ``cluster_<id>.png`` (ids zero-padded), and
    ``noise.png`` for HDBSCAN's noise. Each shows the cluster's ``per_sheet`` images nearest its
    centre, nearest first, under a title with the cluster's size. Returns the files written,
    in cluster order (noise last)."""
    if per_sheet < 1:
        raise OptionError(f"per_sheet must be at least 1, got {per_sheet}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(max(result.n_clusters - 1, 0)))
    written = []
    for cluster_id, size in result.sizes().items():
        rows = result.members(cluster_id)[:per_sheet]
        shown = f"{len(rows)} nearest the centre" if cluster_id >= 0 else f"{len(rows)} shown"
        if cluster_id < 0:
            title, name = f"noise: {size} images in no cluster ({shown})", "noise.png"
        else:
            title = f"cluster {cluster_id}: {size} image{'s' if size != 1 else ''} ({shown})"
            name = f"cluster_{cluster_id:0{width}d}.png"
        tiles = thumbnails([result.paths[i] for i in rows], side, workers)
        target = folder / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            contact_sheet(tiles, title, per_sheet=per_sheet, side=side).save(tmp, format="PNG")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return written
