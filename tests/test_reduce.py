"""``analysis.reduce``: the centred unit vectors clusters and maps use, and a PCA fitted on an
output's vectors that ``embed --pca`` then takes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from imgbeddings import Embedder, embed_files, load
from imgbeddings.analysis.reduce import centered_unit, fit_pca_on, require_vectors
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.cli import app
from imgbeddings.errors import OptionError, OutputError
from imgbeddings.pca import PCAModel
from twoclass import TINY


def test_centered_unit_removes_the_shared_direction_whatever_the_lengths():
    rng = np.random.default_rng(0)
    common = rng.normal(size=64) * 4
    x = (common + rng.normal(size=(200, 64))) * rng.uniform(0.5, 2.0, (200, 1))
    raw = VectorSet.from_arrays(x).unit()
    assert (raw @ raw.T).mean() > 0.9  # everything looks alike
    u = centered_unit(x)
    assert u.dtype == np.float32 and np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-5)
    assert abs((u @ u.T)[~np.eye(200, dtype=bool)].mean()) < 0.05
    assert np.array_equal(centered_unit(x[:1]), VectorSet.from_arrays(x[:1]).unit())  # one row: unit only


def test_require_vectors_names_the_problem():
    require_vectors(VectorSet.from_arrays(np.ones((2, 3))), 2, "do it")
    with pytest.raises(OptionError, match="cannot do it: got no vectors, needs at least 1"):
        require_vectors(VectorSet.from_arrays(np.empty((0, 3))), 1, "do it")
    output = VectorSet(["a"], np.ones((1, 3), np.float32), {"fingerprint": "f"})
    with pytest.raises(OutputError, match=r"holds only 1 vector \(needs at least 2\)"):
        require_vectors(output, 2, "do it")


def test_pca_fitted_on_an_output_is_taken_by_embed(tmp_path, image_paths):
    items = [str(p) for p in image_paths]
    embed_files(items, tmp_path / "raw", model=str(TINY), workers=0)
    vs = VectorSet.from_output(tmp_path / "raw")
    pca = fit_pca_on(vs, 4)
    saved = pca.save(tmp_path / "pca.npz")
    assert PCAModel.load(saved).fingerprint() == pca.fingerprint()
    Embedder(str(TINY), pca=saved)  # fits the model
    result = CliRunner().invoke(
        app, ["embed", *items, "-o", str(tmp_path / "projected"), "-m", str(TINY), "--pca", str(saved)]
    )
    assert result.exit_code == 0, result.output
    projected = load(tmp_path / "projected")
    assert projected.vectors.shape == (8, 4)
    by_path = dict(zip(vs.paths, vs.vectors, strict=True))
    raw = np.stack([by_path[p] for p in projected.paths])
    assert np.allclose(projected.vectors, pca.transform(raw), atol=1e-4)
    with pytest.raises(OptionError, match="already projected by PCA"):
        fit_pca_on(VectorSet.from_output(tmp_path / "projected"), 2)
    sampled = fit_pca_on(vs, 2, sample=5, seed=1)
    assert sampled.out_dim == 2 and not np.allclose(sampled.mean, fit_pca_on(vs, 2).mean)


def test_pca_refuses_what_embed_could_not_use(tmp_path, image_paths):
    items = [str(p) for p in image_paths[:3]]
    embed_files(items, tmp_path / "norm", model=str(TINY), normalize=True, workers=0)
    with pytest.raises(OptionError, match="--normalize"):
        fit_pca_on(VectorSet.from_output(tmp_path / "norm"), 2)
    vs = VectorSet.from_arrays(np.random.default_rng(0).normal(size=(5, 8)))
    for dim in (0, 6):
        with pytest.raises(OptionError, match="can keep 1 to 5 components"):
            fit_pca_on(vs, dim)
    with pytest.raises(OptionError, match="sample"):
        fit_pca_on(vs, 3, sample=2)
    with pytest.raises(OptionError, match="only 1 vector"):
        fit_pca_on(VectorSet.from_arrays(np.ones((1, 8))), 1)
