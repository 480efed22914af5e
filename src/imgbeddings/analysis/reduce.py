"""Vectors made ready for clustering and maps, and a PCA fitted on an output's vectors.

Clustering and maps work on :func:`centered_unit` vectors: rows L2-normalised, the mean of
those unit rows subtracted, and normalised again. The original models' legacy vectors share
a large common direction (unrelated photos score 0.7-0.95 cosine raw), which squeezes every
cosine into a narrow band; subtracting the mean removes it. Normalising *first* matters: a
plain ``x - mean`` on raw vectors keeps ``(length_i - mean length) * common direction``, so
when vector lengths vary, length becomes the main axis and the classes drown in it.
Measured on generated legacy-like data (2,000 x 768, 8 classes, shared component 4x the
noise, lengths 0.7-1.3x; ``python benchmarks/bench_map.py --quality``):

==========================  =====================  =====================
vectors                     k-means ARI (3 seeds)  2-D map 5-NN accuracy
==========================  =====================  =====================
unit rows (no centring)     0.95                   0.92
centre, then unit           0.01                   0.77
unit, centre, unit (this)   1.00                   0.96
==========================  =====================  =====================
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError, OutputError
from ..pca import PCAModel, fit_pca
from .vectors import VectorSet, l2_rows


def centered_unit(vectors: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, centred on their mean, and L2-normalised again (float32, new array)."""
    unit = l2_rows(vectors)
    if len(unit) > 1:
        unit -= unit.mean(axis=0, keepdims=True)
    return l2_rows(unit)


def pca_reduce(x: np.ndarray, dims: int | None = 64, *, seed: int = 0) -> np.ndarray:
    """``x`` projected on its first ``dims`` principal components (float32), the step before
    UMAP: it drops the noise spread over hundreds of minor directions, which sharpens UMAP's
    neighbour graph. ``x`` itself when it has ``dims`` columns or fewer, when ``dims`` is None,
    or when there are too few rows to fit that many components."""
    if dims is None or x.shape[1] <= dims or len(x) <= dims:
        return x
    from sklearn.decomposition import PCA

    return PCA(dims, random_state=seed).fit_transform(x).astype(np.float32)


def require_vectors(vs: VectorSet, minimum: int, purpose: str) -> None:
    """Raise a clear error when ``vs`` has fewer than ``minimum`` vectors for ``purpose``.

    An output folder with too few embedded images raises :class:`OutputError`, plain arrays
    :class:`OptionError`.
    """
    if len(vs) >= minimum:
        return
    has = "no vectors" if len(vs) == 0 else f"only {len(vs)} vector{'s' if len(vs) > 1 else ''}"
    if vs.manifest:
        where = vs.origin or "the output"
        raise OutputError(
            f"cannot {purpose}: {where} holds {has} (needs at least {minimum}); embed more images "
            f"into it, or check its failures with `imgbeddings info {vs.origin or 'OUT'}`"
        )
    raise OptionError(f"cannot {purpose}: got {has}, needs at least {minimum}")


def fit_pca_on(
    vs: VectorSet, dim: int, *, whiten: bool = False, sample: int | None = None, seed: int = 0
) -> PCAModel:
    """A PCA to ``dim`` components fitted on an output's vectors, usable as
    ``Embedder(pca=...)`` / ``imgbeddings embed --pca`` once saved with ``.save(path)``.

    The embedder applies a PCA to the model's raw outputs (before any L2 normalisation), so
    the vectors it is fitted on must be raw outputs too: an output made with a PCA, or one
    L2-normalised by ``--normalize`` (for a model whose raw outputs are not unit length), is
    refused. ``sample`` fits on that many rows, drawn with ``seed`` (all rows by default).
    """
    identity = vs.manifest.get("identity") or {}
    if identity.get("pca"):
        raise OptionError(
            f"the vectors were already projected by PCA {identity['pca']}: fit a PCA on an output "
            "embedded without --pca"
        )
    card_output = (vs.manifest.get("card") or {}).get("output") or {}
    if identity.get("normalize") and not card_output.get("normalized", False):
        raise OptionError(
            "the vectors were L2-normalised (--normalize) but the embedder applies a PCA before "
            "normalising: fit it on an output embedded without --normalize (then embed with "
            "--pca FILE --normalize)"
        )
    require_vectors(vs, 2, "fit a PCA")
    if not 1 <= dim <= min(len(vs), vs.dim):
        raise OptionError(
            f"a PCA of {len(vs)} {vs.dim}-d vectors can keep 1 to {min(len(vs), vs.dim)} components, "
            f"not {dim}"
        )
    x = vs.vectors
    if sample is not None and sample < len(vs):
        if sample < dim:
            raise OptionError(f"sample ({sample}) must be at least dim ({dim})")
        rows = np.sort(np.random.default_rng(seed).choice(len(vs), size=sample, replace=False))
        x = x[rows]
    return fit_pca(np.asarray(x, dtype=np.float32), dim, whiten=whiten, seed=seed)
