"""The exporter, end to end on tiny random checkpoints of each supported family (built here from
transformers configs with a fixed seed, saved to a temporary folder; no hub): export -> load
through the core runtime -> compare with the reference PyTorch model and image processor."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from conftest import cosine

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch", reason="the export tests need the [export] extra (torch)")
transformers = pytest.importorskip("transformers")

from imgbeddings import Embedder  # noqa: E402
from imgbeddings.errors import AccuracyGateFailed, ExportError, UnsupportedArchitecture  # noqa: E402
from imgbeddings.export import export_model  # noqa: E402
from imgbeddings.export.samples import varied_images  # noqa: E402
from imgbeddings.hub import sha256_file  # noqa: E402
from imgbeddings.models.cards import ModelCard  # noqa: E402

SEED = 1234
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   image_size=224, patch_size=32)  # fmt: skip
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99
)


def quiet(**kw):
    return {"verify_images": 8, **kw}


@pytest.fixture(scope="module")
def clip_full(tmp_path_factory):
    """A full CLIPModel checkpoint (vision + text towers + projections), as on the Hub."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    cfg = CLIPConfig(vision_config=dict(TINY_VISION, initializer_factor=4.0), text_config=TINY_TEXT,
                     projection_dim=24)  # fmt: skip
    path = tmp_path_factory.mktemp("clip-full")
    CLIPModel(cfg).eval().save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    """A bare CLIPVisionModel checkpoint (patch 32, 4 layers)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED + 1)
    path = tmp_path_factory.mktemp("clip-vision")
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION, initializer_factor=4.0)).eval().save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def siglip_full(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(SEED + 2)
    vision = dict(TINY_VISION, patch_size=16)
    cfg = SiglipConfig(vision_config=vision, text_config=dict(TINY_TEXT, max_position_embeddings=16))
    path = tmp_path_factory.mktemp("siglip")
    SiglipModel(cfg).eval().save_pretrained(path)
    SiglipImageProcessorPil().save_pretrained(path)
    return path


def reference_inputs(processor_cls, **kwargs):
    images = varied_images(6, seed=7)
    processor = processor_cls(**kwargs)
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    return images, torch.from_numpy(pixels)


def test_clip_projection_matches_pytorch(clip_full, tmp_path):
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    result = export_model(clip_full, tmp_path / "out", kind="projection", **quiet())
    assert result.report["fp32_vs_torch"]["min_cosine"] >= 0.99999
    images, pixels = reference_inputs(CLIPImageProcessorPil)
    with torch.no_grad():
        model = CLIPModel.from_pretrained(clip_full).eval()
        ref = model.get_image_features(pixel_values=pixels)
        ref = (ref.pooler_output if hasattr(ref, "pooler_output") else ref).numpy()
    fp32 = Embedder(tmp_path / "out" / "model_fp32.onnx")
    assert fp32.card.preprocess.resize_mode == "crop" and fp32.card.output.kind == "projection"
    assert cosine(fp32.embed(images), ref).min() >= 0.99999
    int8 = Embedder(tmp_path / "out")  # the folder: picks model.onnx, the INT8 model
    assert int8.card.file.precision == "int8" and int8.model_path.name == "model.onnx"
    c = cosine(int8.embed(images), ref)
    assert c.min() >= 0.99 and c.mean() >= result.report["int8_vs_fp32"]["mean_cosine"] - 0.01


def test_clip_pooled_and_card_contents(clip_vision, tmp_path, caplog, capsys):
    from transformers import CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    with caplog.at_level(logging.INFO, logger="imgbeddings.export"):
        result = export_model(clip_vision, tmp_path / "o", kind="pooled", quantize_recipe="none", **quiet())
    progress = [r.getMessage() for r in caplog.records if r.name == "imgbeddings.export"]
    assert progress[0].startswith(f"loading {clip_vision}") and progress[-1].startswith("done in")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "imgbeddings.export")
    assert capsys.readouterr().out == ""  # the library logs; only the CLI prints
    card = ModelCard.load(tmp_path / "o" / "model.card.json")
    assert card.file.sha256 == sha256_file(tmp_path / "o" / "model.onnx")
    assert card.output.name == "pooler_output" and card.output.dim == 32 and card.file.precision == "fp32"
    assert card.source.checkpoint == str(clip_vision) and card.architecture == "ViT-w32/32"
    report = json.loads((tmp_path / "o" / "export_report.json").read_text())
    assert report["kind"] == "pooled" and "torch" in report["versions"]
    images, pixels = reference_inputs(CLIPImageProcessorPil)
    with torch.no_grad():
        ref = CLIPVisionModel.from_pretrained(clip_vision).eval()(pixels).pooler_output.numpy()
    assert cosine(Embedder(result.model_path).embed(images), ref).min() >= 0.99999


@pytest.mark.parametrize("layers", [1, 3])
def test_legacy_matches_the_original_pooling(clip_vision, tmp_path, layers):
    """--kind legacy = the original package's get_embeddings_from_output on PyTorch outputs,
    with its pad-to-square preprocessing."""
    from transformers import CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from reference_original import get_embeddings_from_output, square_pad

    export_model(clip_vision, tmp_path / "leg", kind="legacy", legacy_layers=layers,
                 quantize_recipe="int8-original", **quiet())  # fmt: skip
    images = varied_images(6, seed=3)
    processor = CLIPImageProcessorPil(do_center_crop=False)
    pixels = processor(images=[square_pad(i.convert("RGB")) for i in images], return_tensors="pt")[
        "pixel_values"
    ]
    model = CLIPVisionModel.from_pretrained(clip_vision, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(pixels, output_attentions=True, output_hidden_states=True)
        ref = get_embeddings_from_output(out, layers).numpy()
    fp32 = Embedder(tmp_path / "leg" / "model_fp32.onnx")
    assert fp32.card.output.kind == "legacy" and fp32.card.output.legacy_layers == layers
    assert fp32.card.preprocess.resize_mode == "pad"
    assert cosine(fp32.embed(images), ref).min() >= 0.99999
    int8 = Embedder(tmp_path / "leg")
    assert int8.card.file.precision == "int8-original"
    assert cosine(int8.embed(images), ref).min() >= 0.99


def test_legacy_default_layers_follow_the_original_release(clip_vision, tmp_path):
    result = export_model(clip_vision, tmp_path / "d", kind="legacy", quantize_recipe="none", **quiet())
    # the release used 6 layers for patch-32 models; capped at this tiny model's 4 layers
    assert result.card.output.legacy_layers == min(6, TINY_VISION["num_hidden_layers"])


def test_siglip_projection_matches_pytorch(siglip_full, tmp_path):
    from transformers import SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    result = export_model(siglip_full, tmp_path / "s", kind="projection", **quiet())
    card = result.card
    assert card.family == "siglip" and card.preprocess.resize_mode == "squash"
    assert card.preprocess.mean == pytest.approx((0.5, 0.5, 0.5))
    images, pixels = reference_inputs(SiglipImageProcessorPil)
    with torch.no_grad():
        ref = SiglipModel.from_pretrained(siglip_full).eval().get_image_features(pixel_values=pixels)
        ref = (ref.pooler_output if hasattr(ref, "pooler_output") else ref).numpy()
    assert cosine(Embedder(tmp_path / "s" / "model_fp32.onnx").embed(images), ref).min() >= 0.99999
    assert cosine(Embedder(tmp_path / "s").embed(images), ref).min() >= 0.99


def test_siglip_has_no_legacy_kind(siglip_full, tmp_path):
    with pytest.raises(UnsupportedArchitecture, match="CLS"):
        export_model(siglip_full, tmp_path / "x", kind="legacy", **quiet())


def test_unsupported_architecture(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(UnsupportedArchitecture, match="model_type 'vit' is not supported"):
        export_model(tmp_path / "vit", tmp_path / "out", **quiet())


def test_projection_needs_a_projection(clip_vision, tmp_path):
    with pytest.raises(ExportError, match="no visual projection"):
        export_model(clip_vision, tmp_path / "p", kind="projection", **quiet())


def test_bad_options(clip_vision, tmp_path):
    with pytest.raises(ExportError, match="kind"):
        export_model(clip_vision, tmp_path / "a", kind="magic", **quiet())
    with pytest.raises(ExportError, match="quantize"):
        export_model(clip_vision, tmp_path / "b", quantize_recipe="int4", **quiet())
    with pytest.raises(ExportError, match="legacy-layers"):
        export_model(clip_vision, tmp_path / "c", kind="legacy", legacy_layers=9, **quiet())
    with pytest.raises(ExportError, match="no such"):
        export_model(tmp_path / "missing-folder", tmp_path / "d", **quiet())


def test_accuracy_gate_fails_loudly(clip_vision, tmp_path):
    with pytest.raises(AccuracyGateFailed, match="INT8 model disagrees"):
        export_model(clip_vision, tmp_path / "g", kind="pooled", min_int8_cosine=1.01, **quiet())
    report = json.loads((tmp_path / "g" / "export_report.json").read_text())
    assert report["int8_vs_fp32"]["min_cosine"] < 1.01


def test_cli_export(clip_vision, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "imgbeddings", "export", str(clip_vision), "-o", str(out), "--kind", "legacy",
         "--legacy-layers", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "model.onnx")
    assert "INT8 vs fp32" in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(set(lines)) == 6, proc.stderr  # each step once, nothing else
    assert "INFO:" not in proc.stderr and "Loading weights" not in proc.stderr
    assert Embedder(out).card.output.legacy_layers == 2
    bad = subprocess.run(
        [sys.executable, "-m", "imgbeddings", "export", str(clip_vision), "-o", str(tmp_path / "x"),
         "--kind", "pooled", "--min-int8-cosine", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 4 and "accuracy gate failed" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_export_dynamic_recipe(clip_vision, tmp_path):
    """``--quantize int8-dynamic`` keeps the per-batch recipe that was the default before static
    activation scales; the report says how far a vector moves with its batch-mates."""
    out = tmp_path / "dyn"
    proc = subprocess.run(
        [sys.executable, "-m", "imgbeddings", "export", str(clip_vision), "-o", str(out), "--kind", "pooled",
         "--quantize", "int8-dynamic"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "alone vs in a batch: max abs diff" in proc.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["quantize"] == "int8-dynamic" and "calibration" not in report
    assert report["int8_batch_dependence"]["max_abs_diff"] > 0.0
    assert Embedder(out).card.file.precision == "int8-dynamic"


def test_default_recipe_reports_its_calibration(clip_vision, tmp_path):
    result = export_model(clip_vision, tmp_path / "s", kind="pooled", **quiet())
    assert result.report["quantize"] == "int8" and result.card.file.precision == "int8"
    assert result.report["calibration"] == {"images": 64, "seed": 101}
    assert result.report["int8_batch_dependence"] == {"max_abs_diff": 0.0}
    with pytest.raises(ExportError, match="int8-dynamic"):  # the error lists the recipes
        export_model(clip_vision, tmp_path / "b", quantize_recipe="int8-static", **quiet())
