"""PCA: fitted with scikit-learn, saved as plain arrays, transformed in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from imgbeddings.pca import PCAModel, as_pca, fit_pca


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(42)
    return (rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24))).astype(np.float32)


@pytest.mark.parametrize("whiten", [False, True])
def test_transform_matches_sklearn(data, whiten):
    ours = fit_pca(data, 6, whiten=whiten)
    sk = PCA(n_components=6, whiten=whiten, random_state=0).fit(data)
    assert np.allclose(ours.transform(data), sk.transform(data), atol=1e-3 * np.abs(sk.transform(data)).max())
    assert ours.total_explained_variance == pytest.approx(float(sk.explained_variance_ratio_.sum()), rel=1e-5)
    assert ours.in_dim == 24 and ours.out_dim == 6 and ours.n_components_ == 6


def test_save_load_roundtrip_without_pickle(data, tmp_path):
    pca = fit_pca(data, 5, whiten=True)
    path = pca.save(tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as raw:
        assert set(raw.files) >= {
            "mean",
            "components",
            "explained_variance",
            "explained_variance_ratio",
            "whiten",
        }
    again = PCAModel.load(path)
    assert again.whiten and np.allclose(again.transform(data), pca.transform(data), atol=1e-6)


def test_as_pca_accepts_sklearn_objects_and_paths(data, tmp_path):
    sk = PCA(n_components=3).fit(data)
    assert np.allclose(as_pca(sk).transform(data), sk.transform(data), atol=1e-3)
    path = fit_pca(data, 3).save(tmp_path / "q.npz")
    assert as_pca(str(path)).out_dim == 3
    with pytest.raises(TypeError):
        as_pca(12)


def test_errors(data, tmp_path):
    with pytest.raises(ValueError, match="out_dim"):
        fit_pca(data, 100)
    with pytest.raises(ValueError, match="2-d"):
        fit_pca(data[0], 2)
    with pytest.raises(ValueError, match="24-d"):
        fit_pca(data, 3).transform(np.zeros((2, 5)))
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a PCA file"):
        PCAModel.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        PCAModel.load(tmp_path / "none.npz")


def test_repr_is_short(data):
    pca = fit_pca(data, 6)
    text = repr(pca)
    explained = pca.total_explained_variance
    assert text == f"PCAModel(in_dim=24, out_dim=6, whiten=False, explained={explained:.2f})"
    bare = PCAModel(mean=np.zeros(768, np.float32), components=np.zeros((128, 768), np.float32), whiten=True)
    assert repr(bare) == "PCAModel(in_dim=768, out_dim=128, whiten=True, explained=None)"
