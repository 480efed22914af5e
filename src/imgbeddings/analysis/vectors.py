"""The vectors an analysis works on: an output folder's good rows, or plain arrays.

>>> vs = VectorSet.from_output("out/")       # paths + float32 (N, D) as stored; failures left out
>>> unit = vs.unit()                          # L2-normalised rows: inner product = cosine
>>> similarity(unit[:1], unit)                # (1, N) cosines
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``: float32 (len(a), len(b)).
    A single vector may be given as a 1-d array."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1]:
        raise OptionError(f"cannot compare {a.shape[1]}-d vectors with {b.shape[1]}-d vectors")
    return l2_rows(a) @ l2_rows(b).T


@dataclass
class VectorSet:
    """Vectors with their paths (``paths[i]`` has ``vectors[i]``) and, for an output folder, its
    manifest (model, identity, fingerprint).

    ``vectors`` are as stored (float32 (N, D); may be a read-only memory map). ``unit()`` gives
    the L2-normalised rows every similarity in :mod:`imgbeddings.analysis` is computed on.
    """

    paths: list[str]
    vectors: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    #: The output folder the vectors were read from (None for plain arrays); named in errors.
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.paths) != len(self.vectors):
            raise OptionError(
                f"expected N paths and an (N, D) matrix, got {len(self.paths)} paths and shape "
                f"{self.vectors.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def fingerprint(self) -> str | None:
        """The output's fingerprint (what made the vectors), None for plain arrays."""
        return self.manifest.get("fingerprint")

    @classmethod
    def from_output(cls, out: str | os.PathLike[str], *, skip_damaged: bool = False) -> VectorSet:
        """The good rows of an output folder (failures have no vector and are left out)."""
        from ..store import load

        data = load(out, skip_damaged=skip_damaged)
        return cls(list(data.paths), data.vectors, dict(data.manifest), str(out))

    @classmethod
    def from_arrays(cls, vectors: Any, paths: list[str] | None = None) -> VectorSet:
        """Plain vectors (any (N, D) array); ``paths`` default to ``"0"``, ``"1"``, ..."""
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        return cls([str(i) for i in range(len(matrix))] if paths is None else list(paths), matrix)

    def unit(self, *, center: bool = False) -> np.ndarray:
        """L2-normalised rows (float32, a new array). With ``center``: normalised, the mean of
        the unit rows subtracted, normalised again — which removes a direction all vectors share
        (the original models' legacy vectors have a large one: unrelated photos often score
        0.7-0.95 raw). Centring before normalising fails when lengths vary (measured in
        ``benchmarks/bench_map.py --quality``: k-means ARI 0.01 against 1.00)."""
        x = l2_rows(np.asarray(self.vectors, dtype=np.float32))
        if center and len(x):
            x = l2_rows(x - x.mean(axis=0, keepdims=True))
        return x

    def index_of(self) -> dict[str, int]:
        """Row of each path."""
        return {p: i for i, p in enumerate(self.paths)}
