"""PCA for embeddings: fit with scikit-learn, save/load as a plain ``.npz``, transform in NumPy.

The saved file holds arrays only (``mean``, ``components``, ``explained_variance``,
``explained_variance_ratio``, ``whiten``), so it reloads on any scikit-learn version, or
without scikit-learn at all. Files saved by the original imgbeddings (``mean`` and
``components`` only) load too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PCAModel:
    """A fitted PCA: ``transform(x) = (x - mean) @ components.T`` (divided by the component
    standard deviations when ``whiten``). The sklearn-style attribute names (``mean_``,
    ``components_``, ``explained_variance_ratio_``) work too."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    whiten: bool = False

    @property
    def in_dim(self) -> int:
        """Width of the vectors it takes."""
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        """Width of the vectors it returns."""
        return int(self.components.shape[0])

    @property
    def total_explained_variance(self) -> float | None:
        """Share of the training data's variance the kept components explain (0-1), if known."""
        if self.explained_variance_ratio is None:
            return None
        return float(np.sum(self.explained_variance_ratio))

    def __repr__(self) -> str:
        explained = self.total_explained_variance
        shown = "None" if explained is None else f"{explained:.2f}"
        return (
            f"PCAModel(in_dim={self.in_dim}, out_dim={self.out_dim}, whiten={self.whiten}, explained={shown})"
        )

    def fingerprint(self) -> str:
        """A short hash of the arrays that define the projection (outputs record it: vectors
        projected by different PCAs are not comparable)."""
        import hashlib

        h = hashlib.sha256()
        for arr in (self.mean, self.components):
            a = np.ascontiguousarray(arr, dtype=np.float32)
            h.update(str(a.shape).encode() + a.tobytes())
        if self.whiten and self.explained_variance is not None:
            h.update(b"whiten" + np.ascontiguousarray(self.explained_variance, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    # sklearn-compatible names, for code written against the original package's PCA object
    mean_ = property(lambda self: self.mean)
    components_ = property(lambda self: self.components)
    explained_variance_ratio_ = property(lambda self: self.explained_variance_ratio)
    n_components_ = property(lambda self: self.out_dim)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project (N, in_dim) vectors to (N, out_dim) float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"PCA expects {self.in_dim}-d vectors, got shape {x.shape}")
        out = (x - self.mean.astype(np.float32)) @ self.components.astype(np.float32).T
        if self.whiten and self.explained_variance is not None:
            out /= np.sqrt(self.explained_variance.astype(np.float32))
        return out.astype(np.float32, copy=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a compressed ``.npz`` (arrays only); returns the path written."""
        path = Path(path)
        arrays = {
            "mean": self.mean,
            "components": self.components,
            "whiten": np.array(self.whiten),
            "format_version": np.array(FORMAT_VERSION),
        }
        if self.explained_variance is not None:
            arrays["explained_variance"] = self.explained_variance
        if self.explained_variance_ratio is not None:
            arrays["explained_variance_ratio"] = self.explained_variance_ratio
        np.savez_compressed(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCAModel:
        """Read a PCA saved by :meth:`save` or by the original imgbeddings ``pca_fit``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "mean" not in data or "components" not in data:
                    raise ValueError(f"{path} is not a PCA file: it lacks 'mean'/'components' arrays")
                return cls(
                    mean=data["mean"],
                    components=data["components"],
                    explained_variance=data["explained_variance"] if "explained_variance" in data else None,
                    explained_variance_ratio=(
                        data["explained_variance_ratio"] if "explained_variance_ratio" in data else None
                    ),
                    whiten=bool(data["whiten"]) if "whiten" in data else False,
                )
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load PCA from {path}: {exc}") from exc


def fit_pca(embeddings: np.ndarray, out_dim: int = 128, *, whiten: bool = False, seed: int = 0) -> PCAModel:
    """Fit a PCA with scikit-learn on (N, D) vectors, keeping ``out_dim`` components."""
    from sklearn.decomposition import PCA

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d (N, D) array, got shape {x.shape}")
    if not 1 <= out_dim <= min(x.shape):
        raise ValueError(f"out_dim must be between 1 and min(N, D) = {min(x.shape)}, got {out_dim}")
    pca = PCA(n_components=out_dim, whiten=whiten, random_state=seed).fit(x)
    return PCAModel(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance=pca.explained_variance_.astype(np.float32),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float32),
        whiten=whiten,
    )


def as_pca(pca: PCAModel | str | os.PathLike[str] | None) -> PCAModel | None:
    """Accept a PCAModel, a path to a saved one, a fitted sklearn PCA, or None."""
    if pca is None or isinstance(pca, PCAModel):
        return pca
    if isinstance(pca, (str, os.PathLike)):
        return PCAModel.load(pca)
    if hasattr(pca, "components_") and hasattr(pca, "mean_"):  # a fitted sklearn PCA
        return PCAModel(
            mean=np.asarray(pca.mean_),
            components=np.asarray(pca.components_),
            explained_variance=getattr(pca, "explained_variance_", None),
            explained_variance_ratio=getattr(pca, "explained_variance_ratio_", None),
            whiten=bool(getattr(pca, "whiten", False)),
        )
    raise TypeError(
        f"pca must be a PCAModel, a path to a saved .npz, or a fitted sklearn PCA; got {type(pca)}"
    )
