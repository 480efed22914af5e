"""Does an image's vector depend on the rest of its batch? (README, "Exporting models")

Measured, not assumed: the same images embedded one at a time, and in batches of several sizes
with different batch-mates at different positions. Exact equality (``np.array_equal``) is the
test of invariance; the INT8 recipe ``int8`` (static activation scales) must pass it, the
dynamic recipes (per-batch activation scales) are known not to and must stay close."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MODELS, cosine
from imgbeddings.export.samples import varied_images
from imgbeddings.images.preprocess import Preprocessor
from imgbeddings.models.cards import ModelCard
from imgbeddings.runtime import OnnxModel


def pixels_for(card: ModelCard, n: int, seed: int) -> np.ndarray:
    return Preprocessor(card.preprocess, "exact").batch(varied_images(n, seed=seed))


def batch_dependence(path, card: ModelCard, threads: tuple[int, ...] = (1,)) -> tuple[float, float]:
    """(max |Δ|, min cosine) between each of 6 images alone and the same image in batches of
    2, 5 and 16 with other images at different positions (and with other thread counts)."""
    images, mates = pixels_for(card, 6, seed=11), pixels_for(card, 16, seed=12)
    models = {t: OnnxModel(path, threads=t, int8_fastpath=False) for t in threads}
    alone = np.concatenate([models[threads[0]].run(images[i : i + 1]) for i in range(len(images))])
    rng = np.random.default_rng(0)
    worst, lowest = 0.0, 1.0
    for trial, size in enumerate((2, 5, 16, 5, 16)):
        batch = mates[rng.permutation(len(mates))[:size]].copy()
        rows = rng.permutation(size)[: min(size, len(images))]
        for i, row in enumerate(rows):
            batch[row] = images[i]
        out = models[threads[trial % len(threads)]].run(batch)
        worst = max(worst, float(np.abs(out[rows] - alone[: len(rows)]).max()))
        lowest = min(lowest, float(cosine(out[rows], alone[: len(rows)]).min()))
    return worst, lowest


def tiny(name: str) -> tuple:
    return MODELS / f"{name}.onnx", ModelCard.load(MODELS / f"{name}.card.json")


def test_fp32_projection_model_is_batch_invariant():
    """ONNX Runtime's float32 kernels compute each image's rows the same way whatever the batch
    (GEMMs split rows and columns, never the sum over K), so without a reduction across
    tokens the vectors are bit-identical."""
    assert batch_dependence(*tiny("tiny_b32_proj"), threads=(1, 2))[0] == 0.0


def test_dynamic_int8_depends_on_the_batch():
    """Known property of the dynamic recipes (``int8-original``, as the built-in patch*_v1
    files, and ``int8-dynamic``): activation scales come from the whole batch, so a vector
    moves slightly with its batch-mates."""
    worst, lowest = batch_dependence(*tiny("tiny_b32_legacy_int8"))
    assert worst > 0.0
    assert lowest > 0.999


def test_ordered_token_sums_make_the_legacy_fp32_graph_batch_invariant(tmp_path):
    """The legacy pooling's ReduceSum over tokens is summed in one order for a single image and
    in another for a batch (a few ULPs); the int8 recipe's rewrite fixes the order."""
    onnx = pytest.importorskip("onnx")
    from imgbeddings.export.quantize import _ordered_sums

    path, card = tiny("tiny_b32_legacy")
    worst, lowest = batch_dependence(path, card)
    assert worst <= 1e-6 * 200 and lowest > 0.9999999  # outputs reach ~190: a few ULPs at most
    model = onnx.load(str(path))
    sums = sum(n.op_type == "ReduceSum" for n in model.graph.node)
    _ordered_sums(model)
    assert sum(n.op_type == "ReduceSum" for n in model.graph.node) == sums - 2  # over tokens: 1 of 3 remains
    onnx.save(model, str(tmp_path / "ordered.onnx"))
    assert batch_dependence(tmp_path / "ordered.onnx", card, threads=(1, 2))[0] == 0.0
    pixels = pixels_for(card, 4, 3)
    same = cosine(OnnxModel(tmp_path / "ordered.onnx").run(pixels), OnnxModel(path).run(pixels))
    assert same.min() > 0.9999999


# --- the exporter's recipes on a tiny random checkpoint (needs torch) ---------------------------


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    pytest.importorskip("torch", reason="the export tests need the [export] extra (torch)")
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(4321)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, image_size=224, patch_size=32, projection_dim=24,
                              initializer_factor=4.0)  # fmt: skip
    path = tmp_path_factory.mktemp("clip-proj")
    CLIPVisionModelWithProjection(config).eval().save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    return path


@pytest.mark.export
@pytest.mark.parametrize("kind", ["legacy", "projection"])
def test_default_int8_is_batch_invariant(clip_checkpoint, tmp_path, kind):
    import onnx

    from imgbeddings.export import export_model

    result = export_model(clip_checkpoint, tmp_path / kind, kind=kind, verify_images=8)
    assert result.card.file.precision == "int8"
    assert result.report["int8_batch_dependence"]["max_abs_diff"] == 0.0
    assert result.report["calibration"] == {"images": 64, "seed": 101}
    assert result.report["int8_vs_fp32"]["min_cosine"] >= 0.99  # tiny random towers: 0.997-0.9996
    assert batch_dependence(result.model_path, result.card, threads=(1, 2))[0] == 0.0
    ops = {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
    assert "DynamicQuantizeLinear" not in ops and {"QuantizeLinear", "MatMulIntegerToFloat"} <= ops


@pytest.mark.export
def test_dynamic_recipe_stays_available_and_depends_on_the_batch(clip_checkpoint, tmp_path):
    from imgbeddings.export import export_model

    result = export_model(clip_checkpoint, tmp_path / "d", kind="legacy", quantize_recipe="int8-dynamic",
                          verify_images=8)  # fmt: skip
    assert result.card.file.precision == "int8-dynamic" and "calibration" not in result.report
    assert result.report["int8_batch_dependence"]["max_abs_diff"] > 0.0
    worst, lowest = batch_dependence(result.model_path, result.card)
    assert worst > 0.0 and lowest > 0.999


@pytest.mark.export
def test_static_recipe_needs_calibration_pixels_or_a_card(clip_checkpoint, tmp_path):
    from imgbeddings.errors import ExportError
    from imgbeddings.export import export_model
    from imgbeddings.export.quantize import calibration_pixels, quantize

    result = export_model(clip_checkpoint, tmp_path / "f", kind="pooled", quantize_recipe="none",
                          verify_images=4)  # fmt: skip
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(result.model_path.read_bytes())  # no card beside it
    with pytest.raises(ExportError, match="calibration"):
        quantize(bare, tmp_path / "q.onnx")
    pixels = calibration_pixels(result.card.preprocess, n=8)
    quantize(bare, tmp_path / "q.onnx", calibration=pixels)
    quantize(result.model_path, tmp_path / "from-card.onnx")  # the card beside it: 64 images
    card = result.card
    assert batch_dependence(tmp_path / "q.onnx", card)[0] == 0.0
    assert cosine(OnnxModel(tmp_path / "q.onnx").run(pixels), OnnxModel(bare).run(pixels)).min() > 0.99
