"""Pairs of rows whose cosine reaches a threshold: exact in blocks, or approximate with faiss.

Rows are unit vectors (inner product = cosine). Each row keeps at most ``k`` neighbours; a
row that had more is *saturated*, and ``rescan(row)`` finds all of them again when needed
(:mod:`imgbeddings.analysis.dedup` does it for each kept image), so memory stays at most
``k`` pairs a row whatever the threshold.

- :func:`exact_pairs`: every pair, in blocks of about 64 MB of similarities.
- :func:`ann_pairs`: each row's ``k`` nearest candidates in a 64-d PCA of the rows (faiss
  IVF-Flat, L2, ``nlist`` ~ 4 sqrt(N), ``nprobe`` 8, 16 from 250,000 rows; k-means on 39 rows
  a cell), every candidate scored again exactly on the full rows (``fvec_inner_products_by_idx``:
  no copies).
  Memory: the rows (float32) plus 4 x 64 bytes a row for the index; rows are projected 65,536
  at a time, so no full-width copy of many rows is made. The PCA's rows are orthonormal, so
  distances only shrink under it, and ``rescan`` searches the probed cells with the exact
  radius (cos >= t <=> squared distance <= 2 - 2t for unit rows) before scoring exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import extras

#: Up to this many rows ``dedup`` searches exactly (all pairs); above it, approximately. Measured
#: on 2 CPUs, 768-d (benchmarks/bench_dedup.py crossover): exact 2.7 s / approximate 3.9 s at
#: 10,000 rows, 9.3 s / 4.1 s at 20,000, 35.9 s / 5.4 s at 40,000.
EXACT_LIMIT = 10_000
#: Approximate search: PCA width, IVF cells probed per query, k-means iterations.
ANN_DIM = 64
NPROBE = 8
#: From this many rows, twice as many cells are probed (pair recall at 1M rows: 0.971 with 8,
#: 0.992 with 16; search 80 s -> 137 s on 2 CPUs).
NPROBE_TWICE_FROM = 250_000
_KMEANS_ITERATIONS = 10
#: Memory for one block of exact similarities (bytes).
BLOCK_BYTES = 64 << 20


@dataclass
class Neighbours:
    """Directed pairs (row ``i`` found ``j`` at similarity ``s`` >= the threshold), at most
    ``k`` per row; ``saturated`` rows may have more, which ``rescan(row)`` finds."""

    i: np.ndarray
    j: np.ndarray
    s: np.ndarray
    saturated: np.ndarray
    rescan: Callable[[int], tuple[np.ndarray, np.ndarray]]


def exact_pairs(x: np.ndarray, t: float, k: int) -> Neighbours:
    """Every pair of rows scoring >= ``t``, at most ``k`` per row (its best), computed in blocks."""
    n = len(x)
    step = max(1, BLOCK_BYTES // max(1, 4 * n))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    saturated = np.zeros(n, dtype=bool)
    for start in range(0, n, step):
        sims = x[start : start + step] @ x.T
        local = np.arange(len(sims))
        sims[local, start + local] = -np.inf
        rows, cols = np.nonzero(sims >= t)
        counts = np.bincount(rows, minlength=len(sims))
        over = np.flatnonzero(counts > k)
        if len(over):  # keep each crowded row's k best; the row is searched again if kept
            saturated[start + over] = True
            top = np.argpartition(-sims[over], k - 1, axis=1)[:, :k]
            keep = ~np.isin(rows, over)
            rows = np.concatenate([rows[keep], np.repeat(over, k)])
            cols = np.concatenate([cols[keep], top.ravel()])
        parts.append((start + rows, cols, sims[rows, cols]))

    def rescan(r: int) -> tuple[np.ndarray, np.ndarray]:
        sims = x @ x[r]
        sims[r] = -np.inf
        found = np.flatnonzero(sims >= t)
        return found, sims[found]

    i, j, s = (np.concatenate([p[m] for p in parts]) if parts else np.empty(0) for m in range(3))
    return Neighbours(i.astype(np.int64), j.astype(np.int64), s.astype(np.float32), saturated, rescan)


def ann_pairs(x: np.ndarray, t: float, k: int) -> Neighbours:
    """k nearest candidates in a PCA of the rows (IVF-Flat, L2), each scored exactly."""
    faiss = extras.faiss(f"near-duplicates among more than {EXACT_LIMIT:,} images")
    n, d = x.shape
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
    train = np.unique(np.linspace(0, n - 1, min(n, max(50_000, 39 * nlist))).astype(np.int64))
    width = min(ANN_DIM, d)
    if width < d:
        pca = faiss.PCAMatrix(d, width)  # orthonormal rows: projected distances <= full distances
        pca.train(np.ascontiguousarray(x[train[:: max(1, len(train) // 20_000)]]))

        def project(rows: np.ndarray) -> np.ndarray:
            return pca.apply(np.ascontiguousarray(rows))
    else:

        def project(rows: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(rows, dtype=np.float32)

    step = 65_536  # rows projected at a time: no full-width copy of many rows
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(width), width, nlist, faiss.METRIC_L2)
    index.cp.niter, index.cp.max_points_per_centroid, index.cp.seed = _KMEANS_ITERATIONS, 39, 1234
    index.train(np.concatenate([project(x[train[s : s + step]]) for s in range(0, len(train), step)]))
    for start in range(0, n, step):
        index.add(project(x[start : start + step]))
    index.nprobe = min(NPROBE * (2 if n >= NPROBE_TWICE_FROM else 1), nlist)
    want = min(k + 1, n)
    parts, saturated = [], np.zeros(n, dtype=bool)
    for start in range(0, n, 16_384):
        queries = x[start : start + 16_384]
        _, ids = index.search(project(queries), want)
        own = np.arange(start, start + len(queries))[:, None]
        ids = np.where(ids < 0, own, ids)  # unfilled slots: scored as the row itself, dropped below
        sims = np.empty(ids.shape, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(sims), faiss.swig_ptr(np.ascontiguousarray(queries)), faiss.swig_ptr(x),
            faiss.swig_ptr(np.ascontiguousarray(ids)), d, len(queries), want,
        )  # fmt: skip
        hit = (sims >= t) & (ids != own)
        saturated[start : start + len(queries)] = hit.sum(axis=1) >= min(k, n - 1)
        rows, cols = np.nonzero(hit)
        parts.append((start + rows, ids[rows, cols], sims[rows, cols]))
    radius = max(0.0, 2.0 - 2.0 * t) + 1e-4  # unit rows: cos >= t  <=>  squared distance <= 2 - 2t

    def rescan(r: int) -> tuple[np.ndarray, np.ndarray]:
        lims, _, found = index.range_search(project(x[r : r + 1]), radius)
        found = found[lims[0] : lims[1]]
        found = found[found != r]
        sims = x[found] @ x[r]
        return found[sims >= t], sims[sims >= t]

    i, j, s = (np.concatenate([p[m] for p in parts]) for m in range(3))
    return Neighbours(i.astype(np.int64), j.astype(np.int64), s.astype(np.float32), saturated, rescan)
