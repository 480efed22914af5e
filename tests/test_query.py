"""An embedder comparable with an output's, rebuilt from what the output records."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import MODELS
from imgbeddings import Embedder, ModelMismatch, OptionError, embed_files, fit_pca, load
from imgbeddings.analysis.query import embedder_for

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


def test_the_output_records_how_to_embed_a_query(tmp_path, image_paths):
    out = tmp_path / "o"
    embed_files([str(p) for p in image_paths[:3]], out, model=MODEL, normalize=True)
    emb = embedder_for(out)
    assert emb.identity() == load(out).manifest["identity"] and emb.normalize
    data = load(out)
    again = emb.embed(data.paths)
    assert np.allclose(again, data.vectors, atol=1e-5)


def test_another_model_is_refused_naming_the_difference(tmp_path, image_paths):
    out = tmp_path / "o"
    embed_files([str(image_paths[0])], out, model=MODEL)
    with pytest.raises(ModelMismatch, match="model: the output has 'tiny_b32_legacy'"):
        embedder_for(out, model=str(MODELS / "tiny_b32_legacy_int8.onnx"))


def test_a_pca_that_moved_must_be_given(tmp_path, image_paths):
    raw = Embedder(MODEL).embed(image_paths)
    fit_pca(raw, 4).save(tmp_path / "pca.npz")
    out = tmp_path / "o"
    embed_files([str(image_paths[0])], out, model=MODEL, pca=str(tmp_path / "pca.npz"))
    assert embedder_for(out).dim == 4
    shutil.move(tmp_path / "pca.npz", tmp_path / "moved.npz")
    with pytest.raises(OptionError, match="pass the PCA file"):
        embedder_for(out)
    assert embedder_for(out, pca=tmp_path / "moved.npz").dim == 4
