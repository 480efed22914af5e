"""The near-duplicate threshold, measured on the collection itself.

A fixed value cannot hold across models: the original models' legacy vectors share a large
common component, so unrelated photos score 0.7-0.95 raw cosine, while other models put them
near 0. :func:`calibrate_rows` takes up to ``sample`` images of the collection (in the order of
a hash of their path, so the same files whatever the row order; unreadable ones are skipped),
makes three altered copies of each in memory (resized to 50 %, re-encoded as JPEG quality 60,
the top-left 95 % x 95 % crop), embeds them with the output's model, and compares:

- *copies*: each image's similarity to its own altered copies;
- *distinct*: each image's similarity to its nearest neighbour in the collection that scores
  below the image's own worst copy (a neighbour at or above it is a copy by the model's own
  measure: a duplicate already in the collection; those are counted and skipped).

The threshold lies midway between the copies' 5th percentile and the distinct images' 95th;
where those overlap (the model cannot tell some copies from distinct images), it is the
distinct images' 95th percentile: precision first, the hardest copies (crops) are missed.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelMismatch, OptionError
from .dedup_search import BLOCK_BYTES

if TYPE_CHECKING:
    from ..embedder import Embedder

#: Images whose altered copies calibrate the threshold.
DEFAULT_SAMPLE = 64
#: The threshold lies midway between these quantiles of copy and nearest-distinct similarities.
COPY_QUANTILE = 0.05
DISTINCT_QUANTILE = 0.95


def _summary(values: Sequence[float], quantile: float | None = None) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    stats = {"n": len(v), "min": v.min(), "median": np.median(v), "max": v.max()}
    if quantile is not None:
        stats[f"q{round(quantile * 100):02d}"] = np.quantile(v, quantile)
    return {k: (int(x) if k == "n" else round(float(x), 4)) for k, x in stats.items()}


@dataclass
class Calibration:
    """How the threshold was chosen: the similarities of sampled images to their own altered
    copies (``copies``) and to their nearest distinct neighbour (``distinct``), summarised."""

    threshold: float
    copies: dict[str, float]
    distinct: dict[str, float]
    sample: int
    already_duplicated: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def separated(self) -> bool:
        """Whether the low quantile of copies lies above the high quantile of distinct images."""
        lo, hi = self.copies.get("q05"), self.distinct.get("q95")
        return lo is None or hi is None or lo > hi

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "sample": self.sample,
            "copies": self.copies,
            "distinct": self.distinct,
            "already_duplicated": self.already_duplicated,
            "unreadable": len(self.unreadable),
            "separated": self.separated,
        }

    def summary(self) -> str:
        """One line per distribution and the choice, for people."""

        def show(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items())

        lines = [
            f"calibrated on {self.sample} image(s) of the collection"
            + (f" ({len(self.unreadable)} could not be read)" if self.unreadable else ""),
            f"  to their altered copies: {show(self.copies)}",
            f"  to their nearest distinct image: {show(self.distinct)}"
            + (
                f" ({self.already_duplicated} had a near-copy in the collection already)"
                if self.already_duplicated
                else ""
            ),
            f"  threshold {self.threshold:.4f}"
            + (
                ""
                if self.separated
                else " (they overlap: set at the distinct images' q95; the least similar copies are missed)"
            ),
        ]
        return "\n".join(lines)


def _altered_copies(path: str, max_side: int = 1024) -> list[Any] | None:
    """Three altered copies of an image (PIL images or JPEG bytes), or None if it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))  # JPEGs: decode at a reduced scale, >= max_side
            img = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    w, h = img.size
    half = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    crop = img.crop((0, 0, round(w * 0.95), round(h * 0.95)))
    return [half, buf.getvalue(), crop]


def _check_embedder(embedder: Embedder, manifest: dict[str, Any]) -> None:
    if manifest.get("fingerprint") is None:
        return
    from ..shards import identity_of
    from ..store import describe_mismatch

    theirs = identity_of(manifest)
    if embedder.identity() != theirs:
        message = describe_mismatch(Path("the output"), theirs, embedder.identity())
        raise ModelMismatch(message + " Calibrate with the model (and PCA) the output was made with.")


def _sample_rows(paths: list[str], limit: int) -> list[int]:
    """Rows in a fixed pseudo-random order (a hash of the path), the first ``limit`` of them."""
    keys = sorted(range(len(paths)), key=lambda i: hashlib.sha1(os.fsencode(paths[i])).digest())
    return keys[:limit]


def calibrate_rows(
    paths: list[str],
    x: np.ndarray,
    prepare: Callable[[np.ndarray], np.ndarray],
    manifest: dict[str, Any],
    embedder: Embedder,
    sample: int,
) -> Calibration:
    """Calibrate on unit rows ``x`` (``paths[i]`` has ``x[i]``); ``prepare`` puts the copies'
    vectors into the rows' space (unit, centred as the rows were)."""
    _check_embedder(embedder, manifest)
    rows, items, unreadable = [], [], []
    for i in _sample_rows(paths, 4 * sample):
        if len(rows) == sample:
            break
        copies = _altered_copies(paths[i])
        if copies is None:
            unreadable.append(paths[i])
            continue
        rows.append(i)
        items.extend(copies)
    if not rows:
        raise OptionError(
            f"cannot calibrate a threshold: none of the {len(unreadable)} sampled images could be read "
            "(moved or deleted?); give a threshold (threshold=, --threshold)"
        )
    batch = embedder.embed_with_failures(items)
    copies = prepare(batch.vectors[batch.ok]) if batch.ok.any() else np.empty((0, x.shape[1]))
    owner = np.repeat(np.arange(len(rows)), 3)[batch.ok]
    own = np.einsum("ij,ij->i", x[np.asarray(rows)][owner], copies)
    if not len(own):
        raise OptionError("cannot calibrate a threshold: no altered copy could be embedded; give a threshold")
    worst = np.full(len(rows), np.inf, dtype=np.float32)
    np.minimum.at(worst, owner, own)
    embedded = np.isfinite(worst)  # images with at least one copy embedded
    nearest, duplicated = _nearest_distinct(x, np.asarray(rows)[embedded], worst[embedded])
    distinct = nearest[np.isfinite(nearest)]
    lo = float(np.quantile(own, COPY_QUANTILE))
    # midway between the two; where they overlap, no lower than the distinct images' high quantile
    # (precision first); with no distinct neighbour (a collection of copies), what a copy looks like
    hi = float(np.quantile(distinct, DISTINCT_QUANTILE)) if len(distinct) else lo
    threshold = max((lo + hi) / 2, hi)
    return Calibration(
        round(threshold, 4),
        _summary(own, COPY_QUANTILE),
        _summary(distinct, DISTINCT_QUANTILE),
        int(embedded.sum()),
        duplicated,
        unreadable,
    )


def _nearest_distinct(x: np.ndarray, rows: np.ndarray, worst: np.ndarray) -> tuple[np.ndarray, int]:
    """Each sampled row's best similarity to another row scoring below its own worst copy
    (-inf if none), and how many sampled rows have a row at or above it."""
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    duplicated = np.zeros(len(rows), dtype=bool)
    queries = x[rows]
    step = max(1, BLOCK_BYTES // max(1, 4 * len(rows)))
    for s in range(0, len(x), step):
        sims = queries @ x[s : s + step].T
        own = (rows >= s) & (rows < s + step)
        sims[np.flatnonzero(own), rows[own] - s] = -np.inf
        copy_like = sims >= worst[:, None]
        duplicated |= copy_like.any(axis=1)
        sims[copy_like] = -np.inf
        best = np.maximum(best, sims.max(axis=1, initial=-np.inf))
    return best, int(duplicated.sum())
