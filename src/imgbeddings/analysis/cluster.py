"""Clusters of an output's images: k-means with a given ``k``, or HDBSCAN finding them itself.

>>> vs = VectorSet.from_output("out/")
>>> res = cluster(vs, k=20)              # k-means; MiniBatchKMeans above 50,000 vectors
>>> res = cluster(vs, auto=True)         # HDBSCAN on a 5-d UMAP of the vectors; noise = -1
>>> write_clusters(res, "clusters.parquet")
>>> contact_sheets(res, "sheets/")       # one PNG per cluster, nearest the centre first

Both work on :func:`~imgbeddings.analysis.reduce.centered_unit` vectors (unit rows, centred,
unit again: the module docstring there gives the measurements): k-means on unit vectors,
close to grouping by cosine similarity. ``distance`` is each image's cosine distance (1 - cosine) to
its cluster's centre in that space; noise points have none (NaN).

``auto`` reduces the vectors to 5 dimensions with UMAP (after a 64-d PCA; cosine metric,
``min_dist=0``, fixed ``random_state``) before HDBSCAN: density clustering on 768-d vectors
calls almost everything noise, on a 5-d UMAP it finds the classes (README, "Clusters and
maps", has the numbers). ``reduce="pca"`` uses a 10-d PCA instead (faster, weaker);
``reduce=None`` clusters the vectors themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import OptionError
from .reduce import centered_unit, pca_reduce, require_vectors
from .sheets import contact_sheets
from .vectors import VectorSet, l2_rows

__all__ = ["ClusterResult", "cluster", "contact_sheets", "read_clusters", "write_clusters"]

#: Above this many vectors, k-means runs as MiniBatchKMeans (memory and time stay bounded).
MINIBATCH_ABOVE = 50_000
#: Fewest vectors ``auto`` works on.
AUTO_MINIMUM = 10

Reduce = Literal["umap", "pca"]


@dataclass
class ClusterResult:
    """Cluster id per path (``labels[i]`` for ``paths[i]``; -1 = noise, HDBSCAN only), each
    image's cosine distance to its cluster's centre (NaN for noise), and the centres
    (``centroids[c]``, unit rows in the centred space; None when read back from Parquet)."""

    paths: list[str]
    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_clusters(self) -> int:
        """Number of clusters (noise not counted)."""
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0

    @property
    def n_noise(self) -> int:
        """Images in no cluster (HDBSCAN's noise)."""
        return int(np.sum(self.labels < 0))

    def sizes(self) -> dict[int, int]:
        """Images per cluster id, largest cluster first (noise, -1, last if any)."""
        ids, counts = np.unique(self.labels, return_counts=True)
        order = sorted(zip(ids.tolist(), counts.tolist(), strict=True), key=lambda t: (t[0] < 0, -t[1], t[0]))
        return dict(order)

    def members(self, cluster_id: int) -> np.ndarray:
        """Row indices of a cluster's images, nearest its centre first (noise: in path order)."""
        rows = np.flatnonzero(self.labels == cluster_id)
        if cluster_id < 0:
            return rows
        return rows[np.argsort(self.distances[rows], kind="stable")]


def _kmeans(x: np.ndarray, k: int, seed: int, minibatch_above: int) -> tuple[np.ndarray, str]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(x) > minibatch_above:
        model = MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=seed)
        return model.fit_predict(x), "minibatch-kmeans"
    return KMeans(k, n_init=3, random_state=seed).fit_predict(x), "kmeans"


def _reduced(x: np.ndarray, reduce: Reduce | None, seed: int) -> np.ndarray:
    if reduce is None:
        return x
    if reduce == "pca":
        from sklearn.decomposition import PCA

        return PCA(min(10, *x.shape), random_state=seed).fit_transform(x)
    if reduce == "umap":
        from .mapping import umap_embed

        return umap_embed(pca_reduce(x, seed=seed), 5, seed=seed, min_dist=0.0)
    raise OptionError(f"reduce must be 'umap', 'pca' or None, not {reduce!r}")


def _hdbscan(x: np.ndarray, min_cluster_size: int, min_samples: int | None) -> np.ndarray:
    try:
        from sklearn.cluster import HDBSCAN
    except ImportError as exc:  # scikit-learn < 1.3
        raise OptionError("automatic clustering needs scikit-learn >= 1.3 (HDBSCAN)") from exc
    options: dict[str, Any] = {"min_cluster_size": min_cluster_size, "min_samples": min_samples}
    if "copy" in HDBSCAN().get_params():
        options["copy"] = True  # its default changes in 1.10 (and it warns until then)
    return HDBSCAN(**options).fit_predict(x)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Cluster ids by size, largest first (0, 1, ...); ties by first appearance; -1 stays."""
    labels = np.asarray(labels, dtype=np.int64)
    member = labels >= 0
    ids, first, counts = np.unique(labels[member], return_index=True, return_counts=True)
    new = np.empty(len(ids), dtype=np.int32)
    new[np.lexsort((first, -counts))] = np.arange(len(ids), dtype=np.int32)
    out = np.full(len(labels), -1, dtype=np.int32)
    out[member] = new[np.searchsorted(ids, labels[member])]
    return out


def _centres(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_clusters = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    sums = np.zeros((n_clusters, x.shape[1]), dtype=np.float64)
    member = labels >= 0
    np.add.at(sums, labels[member], x[member])
    centroids = l2_rows(sums)
    distances = np.full(len(x), np.nan, dtype=np.float32)
    distances[member] = 1.0 - np.einsum("ij,ij->i", x[member], centroids[labels[member]])
    return centroids, np.clip(distances, 0.0, 2.0)


def cluster(
    vs: VectorSet,
    *,
    k: int | None = None,
    auto: bool = False,
    seed: int = 0,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    reduce: Reduce | None = "umap",
    minibatch_above: int = MINIBATCH_ABOVE,
) -> ClusterResult:
    """Cluster ``vs`` with k-means (``k``) or HDBSCAN (``auto=True``); give exactly one.

    Args:
        k: number of clusters (1 to N). k-means++ with 3 inits; MiniBatchKMeans above
            ``minibatch_above`` vectors.
        auto: HDBSCAN; noise points get cluster -1.
        seed: random state of k-means and UMAP (same seed and input, same clusters).
        min_cluster_size: HDBSCAN's smallest cluster (default ``max(5, min(50, N // 100))``).
        min_samples: HDBSCAN's density smoothing (default: ``min_cluster_size``).
        reduce: what ``auto`` clusters on: ``"umap"`` (5-d, default), ``"pca"`` (10-d) or None.

    Cluster ids are renumbered by size, 0 the largest. Raises :class:`OptionError` for a bad
    ``k`` or too few vectors for ``auto`` (fewer than 10), :class:`OutputError` for an empty output.
    """
    if (k is None) == (not auto):
        raise OptionError("give either k (k-means) or auto=True (HDBSCAN), not both and not neither")
    require_vectors(vs, 1, "cluster")
    x = centered_unit(vs.vectors)
    params: dict[str, Any] = {"seed": seed, "n": len(vs), "fingerprint": vs.fingerprint}
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(vs):
            raise OptionError(f"k must be between 1 and the number of vectors ({len(vs)}), got {k!r}")
        if len(vs) == 1:
            raw, method = np.zeros(1, dtype=np.int32), "kmeans"
        else:
            raw, method = _kmeans(x, int(k), seed, minibatch_above)
        params["k"] = int(k)
    else:
        require_vectors(vs, AUTO_MINIMUM, "find clusters automatically (give k for a small set)")
        size = max(5, min(50, len(vs) // 100)) if min_cluster_size is None else min_cluster_size
        if size < 2:
            raise OptionError(f"min_cluster_size must be at least 2, got {size}")
        raw = _hdbscan(_reduced(x, reduce, seed), size, min_samples)
        method = "hdbscan" if reduce is None else f"hdbscan on {reduce}"
        params.update(min_cluster_size=size, min_samples=min_samples, reduce=reduce)
    labels = _renumber(np.asarray(raw))
    centroids, distances = _centres(x, labels)
    return ClusterResult(list(vs.paths), labels, distances, centroids.astype(np.float32), method, params)


# --- files ------------------------------------------------------------------------------------

_META_PREFIX = b"imgbeddings."


def write_clusters(result: ClusterResult, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (Parquet): columns ``path``, ``cluster`` (int32, -1 = noise) and
    ``distance`` (float32 cosine distance to the centre, null for noise), rows in the output's
    order; the method and its parameters go in the file's metadata. Written to a temporary name
    and renamed, so a reader never sees half a file."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    distances = pa.array(result.distances, type=pa.float32(), mask=np.isnan(result.distances))
    table = pa.table(
        {
            "path": pa.array(result.paths, type=pa.string()),
            "cluster": pa.array(result.labels, type=pa.int32()),
            "distance": distances,
        }
    )
    meta = {
        _META_PREFIX + b"method": result.method.encode(),
        _META_PREFIX + b"params": json.dumps(result.params).encode(),
    }
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_clusters(path: str | os.PathLike[str]) -> ClusterResult:
    """A clusters file written by :func:`write_clusters` (``centroids`` is None)."""
    import json

    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["path", "cluster", "distance"])
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise OptionError(f"{path} is not a clusters file (path, cluster, distance): {exc}") from exc
    meta = table.schema.metadata or {}
    distances = table.column("distance").to_numpy(zero_copy_only=False)
    return ClusterResult(
        table.column("path").to_pylist(),
        table.column("cluster").to_numpy().astype(np.int32),
        np.asarray(distances, dtype=np.float32),
        None,
        meta.get(_META_PREFIX + b"method", b"unknown").decode(),
        json.loads(meta.get(_META_PREFIX + b"params", b"{}")),
    )


def labels_for(result: ClusterResult, paths: Sequence[str]) -> list[str]:
    """The cluster of each of ``paths`` as a label (``"3"``, ``"noise"``; ``""`` if absent)."""
    where = dict(zip(result.paths, result.labels.tolist(), strict=True))
    return [("noise" if where[p] < 0 else str(where[p])) if p in where else "" for p in paths]
