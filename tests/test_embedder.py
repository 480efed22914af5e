"""The modern API against the reference: PyTorch outputs of the same tiny models on the same
images (transformers' preprocessing), plus input handling, failure modes and runtime options."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS, cosine, load_reference
from imgbeddings import Embedder, ImageNotFound, InputError
from imgbeddings.errors import CardError, ModelCorrupted, ModelNotFound, ProviderError
from imgbeddings.models.cards import ModelCard, card_path_for


@pytest.fixture(scope="module")
def legacy_fp32() -> Embedder:
    return Embedder(MODELS / "tiny_b32_legacy.onnx", mode="exact")


@pytest.mark.parametrize(
    ("model", "min_cos"),
    [("tiny_b32_legacy", 0.99999), ("tiny_b32_proj", 0.99999)],
)
def test_matches_pytorch_reference(model, min_cos, image_paths):
    """fp32 ONNX through our whole pipeline vs transformers' PyTorch model + image processor."""
    ref = load_reference("vectors")[model]
    emb = Embedder(MODELS / f"{model}.onnx", mode="exact")
    out = emb.embed(image_paths)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert cosine(out, ref).min() >= min_cos
    assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()


def test_reference_vectors_are_discriminative():
    """Guard against a degenerate test model: different images must give clearly different vectors."""
    for name, vecs in load_reference("vectors").items():
        if name == "names":
            continue
        c = cosine(
            vecs[:, None, :].repeat(len(vecs), 1).reshape(-1, vecs.shape[1]), np.tile(vecs, (len(vecs), 1))
        )
        off_diag = c.reshape(len(vecs), len(vecs))[~np.eye(len(vecs), dtype=bool)]
        assert off_diag.max() < 0.99, name


def test_card_drives_output_kind(legacy_fp32):
    proj = Embedder(MODELS / "tiny_b32_proj.onnx")
    assert proj.card.output.kind == "projection" and proj.onnx.output_name == "image_embeds"
    assert proj.card.preprocess.resize_mode == "crop"
    assert legacy_fp32.card.output.kind == "legacy" and legacy_fp32.dim == 32


def test_fast_mode_embeddings_close_to_exact(image_paths, legacy_fp32):
    fast = Embedder(MODELS / "tiny_b32_legacy.onnx", mode="fast")
    c = cosine(fast.embed(image_paths), legacy_fp32.embed(image_paths))
    assert c.min() >= 0.998 and c.mean() >= 0.9995


def test_single_item_and_lists(image_paths, legacy_fp32):
    one = legacy_fp32.embed(image_paths[0])
    assert one.shape == (1, 32)
    many = legacy_fp32.embed(image_paths)
    assert np.allclose(many[0], one[0], atol=1e-5)
    as_tuple = legacy_fp32.embed(tuple(image_paths[:3]))
    as_gen = legacy_fp32.embed(p for p in image_paths[:3])
    assert np.allclose(as_tuple, many[:3], atol=1e-5) and np.allclose(as_gen, many[:3], atol=1e-5)
    assert legacy_fp32.embed([]).shape == (0, 32)


def test_mixed_input_types(image_paths, legacy_fp32):
    p = image_paths[1]
    items = [
        str(p),
        p,
        p.read_bytes(),
        open(p, "rb"),
        Image.open(p),
        np.asarray(Image.open(p).convert("RGB")),
    ]
    out = legacy_fp32.embed(items)
    assert out.shape == (6, 32)
    assert np.allclose(out, out[0], atol=1e-5)
    stacked = np.stack([np.asarray(Image.open(image_paths[5]).convert("RGB"))] * 2)  # (2, H, W, 3) = 2 images
    assert legacy_fp32.embed(stacked).shape == (2, 32)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_fp32_vectors(batch_size, image_paths, legacy_fp32):
    ref = legacy_fp32.embed(image_paths)
    assert np.allclose(legacy_fp32.embed(image_paths, batch_size=batch_size), ref, atol=1e-5)


def test_normalize_and_progress(image_paths):
    emb = Embedder(MODELS / "tiny_b32_legacy.onnx", normalize=True, batch_size=3)
    out = emb.embed(image_paths, progress=True)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_strict_mode_names_the_bad_item(image_paths, legacy_fp32, tmp_path):
    bad = tmp_path / "missing.jpg"
    with pytest.raises(ImageNotFound) as err:
        legacy_fp32.embed([image_paths[0], image_paths[1], bad, image_paths[2]], batch_size=2)
    assert err.value.index == 2 and str(bad) in str(err.value)


def test_failures_are_marked_and_good_work_kept(image_paths, legacy_fp32, tmp_path):
    text = tmp_path / "fake.jpg"
    text.write_text("hello")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    items = [image_paths[0], text, image_paths[1], tmp_path / "gone.png", image_paths[2], folder, b"", 7]
    res = legacy_fp32.embed_with_failures(items, batch_size=3)
    assert res.vectors.shape == (8, 32)
    assert res.ok.tolist() == [True, False, True, False, True, False, False, False]
    assert [f.index for f in res.failures] == [1, 3, 5, 6, 7]
    assert [f.error for f in res.failures] == [
        "ImageDecodeError",
        "ImageNotFound",
        "ImageNotFound",
        "ImageDecodeError",
        "InputError",
    ]
    assert all(f.message for f in res.failures) and str(text) == res.failures[0].source
    assert np.isnan(res.vectors[~res.ok]).all()
    expected = legacy_fp32.embed([image_paths[0], image_paths[1], image_paths[2]])
    assert np.allclose(res.good, expected, atol=1e-5)


def test_all_inputs_bad(legacy_fp32, tmp_path):
    res = legacy_fp32.embed_with_failures([tmp_path / "a.jpg", tmp_path / "b.jpg"])
    assert res.vectors.shape == (2, 32) and not res.ok.any() and len(res.failures) == 2


# --- models, cards and runtime options -----------------------------------------------------------


def test_bare_legacy_onnx_gets_inferred_card(tmp_path, image_paths, legacy_fp32):
    bare = tmp_path / "mymodel.onnx"
    shutil.copy(MODELS / "tiny_b32_legacy.onnx", bare)
    emb = Embedder(bare, mode="exact")
    assert emb.card.output.kind == "legacy" and emb.card.output.dim == 32
    assert emb.card.preprocess == legacy_fp32.card.preprocess
    assert np.allclose(emb.embed(image_paths[:2]), legacy_fp32.embed(image_paths[:2]), atol=1e-6)


def test_bare_non_legacy_onnx_is_refused(tmp_path):
    bare = tmp_path / "proj.onnx"
    shutil.copy(MODELS / "tiny_b32_proj.onnx", bare)
    with pytest.raises(CardError, match="preprocessing cannot be known"):
        Embedder(bare)


def test_exported_folder_with_card(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(MODELS / "tiny_b32_proj.onnx", folder)
    shutil.copy(card_path_for(MODELS / "tiny_b32_proj.onnx"), folder)
    assert Embedder(folder).card.name == "tiny_b32_proj"


def test_corrupted_local_model_is_detected(tmp_path):
    src = MODELS / "tiny_b32_legacy.onnx"
    dst = tmp_path / src.name
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    dst.write_bytes(bytes(data))
    shutil.copy(card_path_for(src), card_path_for(dst))
    with pytest.raises(ModelCorrupted) as err:
        Embedder(dst)
    assert err.value.expected == ModelCard.load(card_path_for(src)).file.sha256


def test_card_dim_mismatch(tmp_path):
    dst = tmp_path / "m.onnx"
    shutil.copy(MODELS / "tiny_b32_legacy.onnx", dst)
    card = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy.onnx")).to_dict()
    card["output"]["dim"] = 99
    card["file"]["sha256"] = None
    ModelCard.from_dict(card).save(card_path_for(dst))
    with pytest.raises(CardError, match="99-d"):
        Embedder(dst).embed(np.zeros((10, 10, 3), np.uint8))


def test_unknown_model_name():
    with pytest.raises(ModelNotFound, match="patch32_v1"):
        Embedder("no such model!")


def test_gpu_falls_back_to_cpu_with_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = Embedder(MODELS / "tiny_b32_legacy.onnx", gpu=True)
    assert emb.onnx.providers == ["CPUExecutionProvider"]
    assert any("CUDAExecutionProvider is not available" in str(w.message) for w in caught)


def test_unknown_provider_is_an_error():
    with pytest.raises(ProviderError, match="NoSuchProvider"):
        Embedder(MODELS / "tiny_b32_legacy.onnx", provider="NoSuchProvider")


def test_threads_and_preprocess_overrides(image_paths):
    emb = Embedder(MODELS / "tiny_b32_legacy.onnx", threads=1, preprocess={"pad_color": (255, 255, 255)})
    assert emb.onnx.session.get_session_options().intra_op_num_threads == 1
    assert emb.card.preprocess.pad_color == (255, 255, 255)
    with pytest.raises(CardError, match="unknown preprocessing"):
        Embedder(MODELS / "tiny_b32_legacy.onnx", preprocess={"colour": 1})


def test_pca_and_normalize_pipeline(image_paths, legacy_fp32):
    from imgbeddings import fit_pca

    raw = legacy_fp32.embed(image_paths)
    pca = fit_pca(raw, 4)
    emb = Embedder(MODELS / "tiny_b32_legacy.onnx", mode="exact", pca=pca, normalize=True)
    out = emb.embed(image_paths)
    expected = pca.transform(raw)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert emb.dim == 4 and np.allclose(out, expected, atol=1e-4)


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


# --- models from a Hugging Face repo (local Hub stand-in) ----------------------------------------


def test_model_from_hub_repo_with_card(hub_stub, image_paths):
    onnx = MODELS / "tiny_b32_proj.onnx"
    hub_stub.add_file("me/tiny-clip", "tiny_b32_proj.onnx", onnx.read_bytes())
    hub_stub.add_file("me/tiny-clip", "model.card.json", card_path_for(onnx).read_bytes(), lfs=False)
    emb = Embedder("me/tiny-clip")
    assert emb.card.output.kind == "projection"
    local = Embedder(onnx)
    assert np.allclose(emb.embed(image_paths[:2]), local.embed(image_paths[:2]), atol=1e-6)


def test_bare_onnx_file_in_hub_repo(hub_stub):
    hub_stub.add_file("me/bare", "weights/tiny.onnx", (MODELS / "tiny_b32_legacy.onnx").read_bytes())
    emb = Embedder("hf-hub:me/bare/weights/tiny.onnx@main")
    assert emb.card.output.kind == "legacy" and emb.card.output.dim == 32


def test_hub_file_not_matching_its_card_checksum(hub_stub):
    onnx = MODELS / "tiny_b32_proj.onnx"
    hub_stub.add_file("me/tampered", "tiny_b32_proj.onnx", onnx.read_bytes()[:-10] + b"0123456789")
    hub_stub.add_file("me/tampered", "model.card.json", card_path_for(onnx).read_bytes(), lfs=False)
    with pytest.raises(ModelCorrupted, match=r"tiny_b32_proj\.onnx"):
        Embedder("me/tampered")
