"""Near-duplicate groups in an output folder (or plain vectors), a report, and reversible moves.

>>> result = dedup("out/")                 # threshold calibrated on the collection itself
>>> print(result.calibration.summary())   # how: copies vs nearest distinct images
>>> result.groups[0]  # {"group": 0, "keep": "/p/a.jpg", "members": [{"path": "/p/a.jpg", "score": 1.0}, ..]}
>>> write_report(result, "dups.csv")       # or .parquet: path, group, keep, score
>>> moved = move_to(result, "review/")     # the members that are not kept, plus a manifest
>>> undo(moved.manifest)                   # every moved file back where it was

**Similarity** is the cosine of the stored vectors. ``center=True`` compares unit rows centred
on the collection's mean and normalised again (as :func:`~imgbeddings.analysis.reduce.centered_unit`);
it is not the default: on the measured models it separated copies from distinct images worse
(README, "Near-duplicates"), and on a small collection the mean is made of the images
themselves (two images centred always score -1).

**Threshold**: given, or calibrated on the collection (:mod:`.dedup_calibrate`): altered copies
of a sample of its images against their nearest distinct neighbours.

**Groups form around representatives, without chaining.** Images with at least one neighbour
at or above the threshold are taken in the order of the keep rule; each one not yet in a group
becomes the kept image of a new group and takes every image not yet in a group whose similarity
*to it* reaches the threshold. Every member is a near-duplicate of the kept image: A~B and B~C
with A!~C make {A, B} when A comes first (C stays alone), {B, A, C} only when B is kept (A and
C are then both its near-duplicates). Rows are put in path order first, so the same vectors
give the same groups whatever their order.

**Keep rule** (:func:`keep_key`): the most pixels (width x height from the image header, not
decoded), then the oldest modification time, then the path. A file that cannot be read counts
0 pixels.

**Search** (:mod:`.dedup_search`): exact up to :data:`EXACT_LIMIT` vectors (all pairs, in
blocks of bounded memory); above, each vector's ``k`` nearest candidates from a faiss IVF index
on a 64-d PCA, each scored again exactly. A kept image whose ``k`` candidates all passed is
searched again without the limit, so large groups stay whole.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import OptionError, OutputError
from .dedup_calibrate import DEFAULT_SAMPLE, Calibration, calibrate_rows
from .dedup_files import MoveReport, move_to, read_report, undo, write_report
from .dedup_search import BLOCK_BYTES, EXACT_LIMIT, Neighbours, ann_pairs, exact_pairs
from .vectors import VectorSet, l2_rows

if TYPE_CHECKING:
    from ..embedder import Embedder

__all__ = [
    "EXACT_LIMIT",
    "Calibration",
    "DedupResult",
    "MoveReport",
    "calibrate",
    "dedup",
    "keep_key",
    "move_to",
    "read_report",
    "undo",
    "write_report",
]

log = logging.getLogger(__name__)

#: Neighbours each image keeps (approximate search: candidates per image).
DEFAULT_K = 32
#: Rows above this size are put in path order in place rather than by a copy.
_COPY_LIMIT_BYTES = 512 << 20

Method = Literal["auto", "exact", "ann"]


# --- the collection -------------------------------------------------------------------------


@dataclass
class _Collection:
    """Rows in path order: unit vectors (centred first with ``center``) and their paths."""

    paths: list[str]
    x: np.ndarray
    mean: np.ndarray | None
    manifest: dict[str, Any]
    failed: int
    out: Path | None

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Other vectors (calibration copies) put in the same space as the rows."""
        unit = l2_rows(vectors)
        return unit if self.mean is None else l2_rows(unit - self.mean)


def _permute_rows(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``x[order]``, in place (one row of extra memory) when a copy would be large."""
    if x.nbytes <= _COPY_LIMIT_BYTES:
        return np.ascontiguousarray(x[order])
    done = np.zeros(len(order), dtype=bool)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        saved, i = x[start].copy(), start
        while True:  # follow the cycle: row i takes row order[i]
            done[i] = True
            j = int(order[i])
            if j == start:
                x[i] = saved
                break
            x[i] = x[j]
            i = j
    return x


def _normalise_in_place(x: np.ndarray, center: bool) -> np.ndarray | None:
    """Unit rows (then centred on their mean and unit again); returns the mean subtracted."""
    step = max(1, BLOCK_BYTES // max(1, 4 * x.shape[1]))
    for s in range(0, len(x), step):
        x[s : s + step] = l2_rows(x[s : s + step])
    if not center or len(x) < 2:
        return None
    total = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, len(x), step):
        total += x[s : s + step].sum(axis=0, dtype=np.float64)
    mean = (total / len(x)).astype(np.float32)
    for s in range(0, len(x), step):
        x[s : s + step] = l2_rows(x[s : s + step] - mean)
    return mean


def _read_output(out: Path) -> tuple[list[str], np.ndarray, dict[str, Any], int]:
    """Paths, vectors (one preallocated array, filled shard by shard), manifest, failures."""
    from ..store import iter_load, summarize

    info = summarize(out, verify=False)
    n, dim = int(info["vectors"]), int(info["manifest"]["dim"])
    x = np.empty((n, dim), dtype=np.float32)
    paths: list[str] = []
    for shard_paths, vectors in iter_load(out):
        if len(paths) + len(shard_paths) > n:
            break
        x[len(paths) : len(paths) + len(shard_paths)] = vectors
        paths.extend(shard_paths)
    if len(paths) != n:
        raise OutputError(
            f"{out} changed while being read (a run is writing it): run dedup again when it has finished"
        )
    return paths, x, dict(info["manifest"]), len(info["failures"])


def _collect(source: VectorSet | str | os.PathLike[str], center: bool) -> _Collection:
    if isinstance(source, VectorSet):
        paths, x, manifest, failed, out = (
            source.paths,
            np.array(source.vectors, np.float32),
            source.manifest,
            0,
            None,
        )
    else:
        out = Path(source)
        paths, x, manifest, failed = _read_output(out)
    if len(set(paths)) != len(paths):
        raise OptionError("the vectors' paths are not unique: each image must appear once")
    order = np.array(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
    x = _permute_rows(x, order)
    mean = _normalise_in_place(x, center)
    return _Collection([paths[i] for i in order], x, mean, dict(manifest), failed, out)


# --- calibration ----------------------------------------------------------------------------


def calibrate(
    source: VectorSet | str | os.PathLike[str],
    embedder: Embedder | None = None,
    *,
    center: bool = False,
    sample: int = DEFAULT_SAMPLE,
) -> Calibration:
    """The near-duplicate threshold for this collection (see the module docstring).

    ``embedder`` must make vectors the way the output's were made; for an output folder it
    defaults to :func:`~imgbeddings.analysis.query.embedder_for` the output.
    """
    coll = _collect(source, center)
    return calibrate_rows(
        coll.paths, coll.x, coll.prepare, coll.manifest, _embedder_for(coll, embedder), sample
    )


def _embedder_for(coll: _Collection, embedder: Embedder | None) -> Embedder:
    if embedder is not None:
        return embedder
    if coll.out is None:
        raise OptionError("plain vectors have no model to calibrate with: pass embedder= or threshold=")
    from .query import embedder_for

    return embedder_for(coll.out)


# --- groups ---------------------------------------------------------------------------------

_NO_TIME = 2**63 - 1


def keep_key(path: str) -> tuple[int, int, str]:
    """The keep rule as a sort key (smallest first): most pixels (from the image header, not
    decoded; 0 when unreadable), then oldest modification time, then the path."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = img.size[0] * img.size[1]
    except (OSError, ValueError, Image.DecompressionBombError):
        pixels = 0
    try:
        mtime = os.stat(path).st_mtime_ns
    except (OSError, ValueError):
        mtime = _NO_TIME
    return (-pixels, mtime, path)


def _adjacency(nb: Neighbours, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs found from either side as one symmetric list per row: (starts, cols, scores)."""
    i, j = np.concatenate([nb.i, nb.j]), np.concatenate([nb.j, nb.i])
    s = np.concatenate([nb.s, nb.s])
    _, first = np.unique(i * n + j, return_index=True)  # sorted by (i, j); one score per pair
    i, j, s = i[first], j[first], s[first]
    return np.searchsorted(i, np.arange(n + 1)), j, s


def _group(
    coll: _Collection, nb: Neighbours, keep: Callable[[str], Any], workers: int = 8
) -> tuple[list[dict[str, Any]], int]:
    """Representatives in keep order; each other image joins its most similar earlier one."""
    n, paths = len(coll.paths), coll.paths
    starts, cols, scores = _adjacency(nb, n)
    active = np.flatnonzero(np.diff(starts) > 0)
    with ThreadPoolExecutor(workers) as pool:  # header reads: I/O bound
        keys = list(pool.map(keep, [paths[r] for r in active]))
    order = [r for _, r in sorted(zip(keys, active.tolist(), strict=True))]
    done = np.zeros(n, dtype=bool)
    offer = np.full(n, -np.inf, dtype=np.float32)  # best similarity to a representative so far
    joins = np.full(n, -1, dtype=np.int64)  # ... and which one
    members: dict[int, list[int]] = {}
    for r in order:
        done[r] = True
        if joins[r] >= 0:
            members[int(joins[r])].append(r)
            continue
        members[r] = []  # no earlier representative within the threshold: r is one
        if nb.saturated[r]:
            near, sims = nb.rescan(r)
        else:
            near, sims = cols[starts[r] : starts[r + 1]], scores[starts[r] : starts[r + 1]]
        better = ~done[near] & (sims > offer[near])  # ties stay with the earlier representative
        offer[near[better]], joins[near[better]] = sims[better], r
    groups: list[dict[str, Any]] = []
    for r in order:
        if members.get(r):
            ranked = sorted((-float(offer[m]), paths[m]) for m in members[r])
            rows = [{"path": paths[r], "score": 1.0}] + [
                {"path": p, "score": round(-s, 6)} for s, p in ranked
            ]
            groups.append({"group": len(groups), "keep": paths[r], "members": rows})
    return groups, (len(cols) // 2)


# --- the result -----------------------------------------------------------------------------


@dataclass
class DedupResult:
    """Near-duplicate groups: ``groups[g]`` is ``{"group": g, "keep": path, "members": [{"path",
    "score"}, ...]}`` with the kept image first (score 1.0), then the others by similarity to it.

    ``compared`` vectors were compared (``failed`` inputs of the output have none);
    ``pairs`` is how many pairs scored at or above ``threshold``; ``method`` is ``exact`` or
    ``ann``; ``calibration`` says how the threshold was chosen (None when it was given).
    """

    groups: list[dict[str, Any]]
    threshold: float | None
    compared: int
    failed: int = 0
    method: str = "exact"
    centered: bool = False
    pairs: int = 0
    calibration: Calibration | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Images in a group that are not kept."""
        return sum(len(g["members"]) - 1 for g in self.groups)

    def rows(self) -> list[tuple[str, int, str, float]]:
        """``(path, group, keep, score)`` for every member of every group (kept images included)."""
        return [(m["path"], g["group"], g["keep"], m["score"]) for g in self.groups for m in g["members"]]

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "similarity": "centred cosine" if self.centered else "cosine",
            "method": self.method,
            "compared": self.compared,
            "failed": self.failed,
            "pairs": self.pairs,
            "duplicates": self.duplicates,
            "calibration": self.calibration.to_json() if self.calibration else None,
            "groups": self.groups,
        }


def dedup(
    source: VectorSet | str | os.PathLike[str],
    *,
    threshold: float | None = None,
    embedder: Embedder | None = None,
    center: bool = False,
    method: Method = "auto",
    k: int = DEFAULT_K,
    sample: int = DEFAULT_SAMPLE,
    keep: Callable[[str], Any] = keep_key,
) -> DedupResult:
    """Near-duplicate groups of an output folder or a :class:`VectorSet` (module docstring).

    Args:
        threshold: similarity at or above which two images are near-duplicates; default:
            calibrated on the collection (:func:`calibrate`, which needs ``embedder`` for plain
            vectors; an output folder gets :func:`~imgbeddings.analysis.query.embedder_for`).
        center: compare centred vectors instead of raw cosine.
        method: ``exact`` (all pairs), ``ann`` (approximate, faiss), or ``auto``: exact up to
            :data:`EXACT_LIMIT` vectors.
        k: neighbours kept per image (a kept image with more is searched again).
        sample: images whose altered copies calibrate the threshold.
        keep: sort key choosing each group's kept image (smallest first; :func:`keep_key`).
    """
    if method not in ("auto", "exact", "ann"):
        raise OptionError(f"method must be auto, exact or ann, got {method!r}")
    if k < 1 or sample < 1:
        raise OptionError(f"k and sample must be >= 1, got k={k}, sample={sample}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise OptionError(f"threshold is a cosine similarity: between -1 and 1, got {threshold}")
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 3)
        log.info("dedup: %s %.1f s", name, seconds[name])

    coll = _collect(source, center)
    n = len(coll.paths)
    chosen = method if method != "auto" else ("exact" if n <= EXACT_LIMIT else "ann")
    result = DedupResult([], threshold, n, coll.failed, chosen, center, seconds=seconds)
    lap("load")
    if n < 2:
        return result
    if threshold is None:
        emb = _embedder_for(coll, embedder)
        result.calibration = calibrate_rows(coll.paths, coll.x, coll.prepare, coll.manifest, emb, sample)
        result.threshold = threshold = result.calibration.threshold
        lap("calibrate")
    nb = (exact_pairs if chosen == "exact" else ann_pairs)(coll.x, threshold, k)
    lap("search")
    result.groups, result.pairs = _group(coll, nb, keep)
    lap("group")
    return result
