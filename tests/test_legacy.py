"""The original imgbeddings 0.1.0 API: same vectors as the original package on the same model
files (reference produced by running 0.1.0 itself, see scripts/make_test_assets.py), the
default models fetched through the real huggingface_hub code from a local Hub stand-in, PCA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from conftest import MODELS, cosine, load_reference
from imgbeddings import ModelUnavailable, PCAModel, imgbeddings

ORIGINAL_MODELS = [("tiny_b32_legacy", 32), ("tiny_b32_legacy_int8", 32), ("tiny_b16_legacy_int8", 16)]


@pytest.mark.parametrize(("model", "patch"), ORIGINAL_MODELS)
@pytest.mark.parametrize("batch_size", [64, 3])
def test_same_vectors_as_original_package(model, patch, batch_size, image_paths):
    """The compatibility figure: cosine to imgbeddings 0.1.0 on every image (README states it)."""
    key = model if batch_size == 64 else model + "__batch3"
    ref = load_reference("original")[key]
    ibed = imgbeddings(model_path=str(MODELS / f"{model}.onnx"), patch_size=patch)
    out = ibed.to_embeddings([str(p) for p in image_paths], batch_size=batch_size)
    assert out.shape == ref.shape == (len(image_paths), 32) and out.dtype == np.float32
    assert cosine(out, ref).min() >= 0.99999
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_documented_call_forms(image_paths):
    ibed = imgbeddings(model_path=str(MODELS / "tiny_b32_legacy_int8.onnx"))
    assert ibed.to_embeddings(Image.open(image_paths[0])).shape == (1, 32)
    assert ibed.to_embeddings(str(image_paths[0])).shape == (1, 32)
    mixed = [str(image_paths[0]), Image.open(image_paths[1]), str(image_paths[2])]
    assert ibed.to_embeddings(mixed, batch_size=64).shape == (3, 32)
    assert ibed.to_embeddings(tuple(mixed)).shape == (3, 32)  # the original took a tuple as one image
    px = ibed.process_inputs(mixed)
    assert px["pixel_values"].shape == (3, 3, 224, 224)
    assert np.allclose(ibed.create_embeddings(px), ibed.to_embeddings(mixed), atol=1e-5)
    assert ibed.to_pil(str(image_paths[0])).mode == "RGB"
    assert ibed.session.get_inputs()[0].name == "pixel_values"


def test_repr_is_short(tmp_path, vectors):
    path = str(MODELS / "tiny_b32_legacy.onnx")
    ibed = imgbeddings(model_path=path)
    assert repr(ibed) == f"imgbeddings(model_path={path!r}, patch_size=32, dim=32, pca=None)"
    ibed.pca_fit(vectors, out_dim=8, save_path=None)
    text = repr(ibed)
    assert text.endswith(f"dim=32, pca={ibed.pca!r})") and "PCAModel(in_dim=32, out_dim=8" in text
    assert len(text) < 200 and "array" not in text


def test_patch_size_validation():
    with pytest.raises(ValueError, match="patch_size"):
        imgbeddings(patch_size=8)


@pytest.fixture
def tiny_builtin_cards(monkeypatch):
    """The built-in cards, but saying 32-d so that the tiny stand-in files pass the dim check."""
    from dataclasses import replace

    from imgbeddings.models import registry

    real = registry.builtin_cards()
    tiny = {name: replace(card, output=replace(card.output, dim=32)) for name, card in real.items()}
    monkeypatch.setattr(registry, "builtin_cards", lambda: tiny)
    return real


def test_default_models_download_from_the_hub(hub_stub, tiny_builtin_cards, image_paths, monkeypatch):
    """imgbeddings() and patch_size=16/14 fetch minimaxir/imgbeddings' files through the real
    huggingface_hub code (served locally here), then reuse the cache with no network call."""
    assert tiny_builtin_cards["patch32_v1"].file.repo_id == "minimaxir/imgbeddings"
    tiny32 = (MODELS / "tiny_b32_legacy_int8.onnx").read_bytes()
    tiny16 = (MODELS / "tiny_b16_legacy_int8.onnx").read_bytes()
    hub_stub.add_file("minimaxir/imgbeddings", "patch32_v1.onnx", tiny32)
    hub_stub.add_file("minimaxir/imgbeddings", "patch16_v1.onnx", tiny16)
    hub_stub.add_file("minimaxir/imgbeddings", "patch14_v1.onnx", tiny16)
    ref = load_reference("original")
    paths = [str(p) for p in image_paths]
    ibed = imgbeddings()
    assert cosine(ibed.to_embeddings(paths), ref["tiny_b32_legacy_int8"]).min() >= 0.99999
    assert hub_stub.requests_for("patch32_v1.onnx")
    ibed16 = imgbeddings(patch_size=16)
    assert cosine(ibed16.to_embeddings(paths), ref["tiny_b16_legacy_int8"]).min() >= 0.99999
    ibed14 = imgbeddings(patch_size=14)  # broken in the original (asked for a processor that doesn't exist)
    assert ibed14.model_path.endswith("patch14_v1.onnx")
    before = len(hub_stub.requests)
    hub_stub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = imgbeddings()
    assert len(hub_stub.requests) == before and again.model_path == ibed.model_path


def test_default_model_offline_without_cache_is_a_clear_error():
    with pytest.raises(ModelUnavailable) as err:
        imgbeddings()
    msg = str(err.value)
    assert "minimaxir/imgbeddings" in msg and "patch32_v1.onnx" in msg and "model_path" in msg


# --- PCA --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))).astype(np.float32)


def test_pca_fit_save_reload(tmp_path, vectors, image_paths, caplog):
    ibed = imgbeddings(model_path=str(MODELS / "tiny_b32_legacy.onnx"))
    path = tmp_path / "pca.npz"
    with caplog.at_level(logging.INFO, logger="imgbeddings"):
        fitted = ibed.pca_fit(vectors, out_dim=8, save_path=str(path))
    assert "explains" in caplog.text and 0 < fitted.total_explained_variance <= 1
    sk = PCA(n_components=8).fit(vectors)
    assert np.allclose(np.abs(ibed.pca_transform(vectors)), np.abs(sk.transform(vectors)), atol=1e-3)
    reloaded = imgbeddings(model_path=str(MODELS / "tiny_b32_legacy.onnx"), pca=str(path))
    assert np.allclose(reloaded.pca_transform(vectors), ibed.pca_transform(vectors), atol=1e-5)
    emb = reloaded.to_embeddings([str(p) for p in image_paths[:3]])
    raw = reloaded.to_embeddings([str(p) for p in image_paths[:3]], pca_transform=False)
    assert emb.shape == (3, 8) and raw.shape == (3, 32)
    assert np.allclose(emb, fitted.transform(raw), atol=1e-4)


def test_pca_file_saved_by_the_original_loads(tmp_path, vectors):
    sk = PCA(n_components=5).fit(vectors)
    path = tmp_path / "old.npz"
    np.savez_compressed(path, mean=sk.mean_, components=sk.components_)  # what 0.1.0 wrote
    pca = PCAModel.load(path)
    assert np.allclose(pca.transform(vectors), sk.transform(vectors), atol=1e-3)
    assert pca.total_explained_variance is None


def test_pca_transform_without_pca():
    ibed = imgbeddings(model_path=str(MODELS / "tiny_b32_legacy.onnx"))
    with pytest.raises(ValueError, match="pca_fit"):
        ibed.pca_transform(np.zeros((1, 32)))


def test_augment_images(image_paths):
    ibed = imgbeddings(model_path=str(MODELS / "tiny_b32_legacy.onnx"))
    out = ibed.augment_images([str(image_paths[0]), str(image_paths[1])], multiples=3, seed=1)
    assert len(out) == 6 and all(img.size[0] == img.size[1] for img in out)
