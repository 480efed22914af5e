"""``export_model``: a Hugging Face CLIP/SigLIP checkpoint -> verified ONNX model(s) + cards.

Output folder::

    DIR/model.onnx            the model to use (INT8 unless --quantize none)
    DIR/model.card.json       its card (Embedder(DIR) picks this one)
    DIR/model_fp32.onnx       the float32 export (when quantised)
    DIR/model_fp32.card.json
    DIR/export_report.json    accuracy figures, versions, options

With ``text=True`` (``--text``) also the text tower (:mod:`imgbeddings.export.text`):
``text_model.onnx`` (+ ``text_model_fp32.onnx``), their text cards and the tokenizer
(``tokenizer.json``; SigLIP: ``spiece.model``).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AccuracyGateFailed, ExportError
from ..images.preprocess import Preprocessor
from ..models.cards import FileSpec, ModelCard, OutputSpec, SourceSpec, card_path_for
from . import checkpoint as tm
from .processor_config import preprocess_spec
from .quantize import CALIBRATED, CALIBRATION_IMAGES, CALIBRATION_SEED, RECIPES, calibration_pixels, quantize
from .samples import varied_images
from .verify import agreement, run_onnx, run_torch

DEFAULT_OPSET = 20  # the newest the TorchScript exporter writes; ONNX Runtime >= 1.17 reads it
MIN_FP32_COSINE = 0.99999
MIN_INT8_COSINE = 0.99
logger = logging.getLogger("imgbeddings.export")  # progress lines, at INFO


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    out_dir: Path
    model_path: Path
    card: ModelCard
    fp32_path: Path
    report: dict[str, Any] = field(default_factory=dict)


def _architecture(source: tm.Source) -> str:
    vc = tm.vision_config(source)
    width = vc.get("hidden_size", 768)
    size = {768: "B", 1024: "L", 1152: "So400m", 1280: "H", 512: "S", 384: "S"}.get(width, f"w{width}")
    return f"ViT-{size}/{vc.get('patch_size', '?')}"


def _write_card(onnx_path: Path, base: ModelCard, precision: str, description: str) -> ModelCard:
    from ..hub import sha256_file

    card = ModelCard(
        name=base.name if precision != "fp32" or base.name.endswith("fp32") else f"{base.name}-fp32",
        family=base.family,
        architecture=base.architecture,
        preprocess=base.preprocess,
        output=base.output,
        file=FileSpec(filename=onnx_path.name, sha256=sha256_file(onnx_path), precision=precision),
        source=base.source,
        description=description,
    )
    card.save(card_path_for(onnx_path))
    return card


def export_model(
    src: str | Path,
    out_dir: str | Path,
    *,
    kind: str = "projection",
    legacy_layers: int | None = None,
    quantize_recipe: str | None = "int8",
    resize_mode: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    min_fp32_cosine: float = MIN_FP32_COSINE,
    min_int8_cosine: float = MIN_INT8_COSINE,
    verify_images: int = 16,
    text: bool = False,
) -> ExportResult:
    """Export a checkpoint's vision tower to ONNX, quantise it, verify it and write cards.

    Args:
        src: a Hugging Face model id or a local checkpoint folder (config, weights,
            ``preprocessor_config.json``).
        out_dir: output folder (created).
        kind: ``projection`` (CLIP image-text space), ``legacy`` (the original imgbeddings
            pooling) or ``pooled`` (post-layernorm CLS / SigLIP pooling head).
        legacy_layers: hidden states pooled by ``legacy`` (default: 6 for patch-32 models, 1
            otherwise, the settings of the original release; capped at the layer count).
        quantize_recipe: ``int8`` (default: static activation scales, batch-invariant),
            ``int8-dynamic``, ``int8-original``, ``int8-plain``, or None/"none".
        resize_mode: override the card's geometry (``pad``, ``crop``, ``squash``).
        min_fp32_cosine, min_int8_cosine: accuracy gates; below them the export fails with
            :class:`AccuracyGateFailed` (files are left in place for inspection).
        verify_images: how many generated images the accuracy checks use.
        text: also export the text tower (``kind`` must be ``projection``, the checkpoint a
            full CLIP/SigLIP one): ``text_model.onnx``, the tokenizer and the text card, whose
            ``pairs_with`` lists the image cards written here. Its figures are the report's
            ``"text"`` (see :func:`~imgbeddings.export.text.export_text`); its INT8 model is kept
            only when it passes ``min_int8_cosine`` (else the float32 one, with a warning).

    Progress lines are logged at INFO on the ``imgbeddings.export`` logger (nothing is printed).

    Raises:
        UnsupportedArchitecture, ExportError, AccuracyGateFailed; ModelUnavailable when a Hub
            checkpoint cannot be downloaded.
    """
    if kind not in tm.KINDS:
        raise ExportError(f"kind must be one of {tm.KINDS}, got {kind!r}")
    if quantize_recipe in (None, "none"):
        quantize_recipe = None
    elif quantize_recipe not in RECIPES:
        raise ExportError(f"--quantize must be one of {(*RECIPES, 'none')}, got {quantize_recipe!r}")
    if text and kind != "projection":
        raise ExportError(
            f"--text needs --kind projection: text vectors share only the projection space "
            f"(the image-text space), not {kind!r} vectors"
        )
    tm.require_torch()
    started = time.perf_counter()
    out = Path(out_dir)
    source = tm.locate(src, revision)
    if text:
        from .text import check_text_source

        check_text_source(source)  # before the image export: a vision-only checkpoint fails fast
    if kind == "legacy" and legacy_layers is None:
        vc = tm.vision_config(source)
        legacy_layers = min(6 if vc.get("patch_size") == 32 else 1, int(vc.get("num_hidden_layers", 12)))
    logger.info("loading %s (%s, %s) as kind=%s", source.name, source.family, _architecture(source), kind)
    spec = preprocess_spec(source, kind, resize_mode)  # before loading: a bad config fails fast
    model = tm.load_vision_model(source, kind)
    module = tm.wrap(model, source, kind, legacy_layers)

    out.mkdir(parents=True, exist_ok=True)
    fp32_path = out / ("model_fp32.onnx" if quantize_recipe else "model.onnx")
    logger.info("exporting float32 ONNX (opset %d) -> %s", opset, fp32_path)
    tm.export_onnx(module, fp32_path, image_size=spec.size, output_name=tm.OUTPUT_NAMES[kind], opset=opset)

    # Accuracy: our own preprocessing of varied images, then PyTorch vs ONNX on the same tensors.
    pixels = Preprocessor(spec).batch(varied_images(verify_images))
    reference = run_torch(module, pixels)
    fp32_out = run_onnx(fp32_path, pixels)
    dim = int(fp32_out.shape[1])
    fp32_vs_torch = agreement(fp32_out, reference)
    logger.info("fp32 ONNX vs PyTorch: min cosine %.7f, mean %.7f", fp32_vs_torch.min, fp32_vs_torch.mean)

    base = ModelCard(
        name=name or f"{Path(str(source.name).rstrip('/')).name}-{kind}",
        family=source.family,
        architecture=_architecture(source),
        preprocess=spec,
        output=OutputSpec(dim=dim, kind=kind, name=tm.OUTPUT_NAMES[kind], legacy_layers=legacy_layers),
        file=FileSpec(filename=fp32_path.name),
        source=SourceSpec(checkpoint=str(source.name), revision=source.revision),
    )
    what = {
        "projection": "image embeddings in the model's image-text space",
        "legacy": f"original imgbeddings pooling of the last {legacy_layers} hidden state(s)",
        "pooled": "pooled image features",
    }[kind]
    fp32_card = _write_card(fp32_path, base, "fp32", f"{base.architecture} {what}; float32.")
    report: dict[str, Any] = {
        "source": str(source.name),
        "revision": source.revision,
        "kind": kind,
        "legacy_layers": legacy_layers,
        "opset": opset,
        "quantize": quantize_recipe or "none",
        "fp32_vs_torch": fp32_vs_torch.to_dict(),
        "versions": _versions(),
    }
    result = ExportResult(out, fp32_path, fp32_card, fp32_path, report)
    if fp32_vs_torch.min < min_fp32_cosine:
        _save_report(out, report)
        raise AccuracyGateFailed(
            f"fp32 ONNX disagrees with PyTorch: min cosine {fp32_vs_torch.min:.7f} < {min_fp32_cosine}"
        )
    if quantize_recipe:
        int8_path = out / "model.onnx"
        logger.info("quantising (%s) -> %s", quantize_recipe, int8_path)
        calibration = None
        if quantize_recipe in CALIBRATED:
            calibration = calibration_pixels(spec)
            report["calibration"] = {"images": CALIBRATION_IMAGES, "seed": CALIBRATION_SEED}
        quantize(fp32_path, int8_path, quantize_recipe, calibration=calibration)
        int8_out = run_onnx(int8_path, pixels)
        int8_vs_fp32 = agreement(int8_out, fp32_out)
        report["int8_vs_fp32"] = int8_vs_fp32.to_dict()
        # the same images one at a time: 0.0 when vectors do not depend on their batch-mates
        alone = run_onnx(int8_path, pixels, batch_size=1)
        report["int8_batch_dependence"] = {"max_abs_diff": float(np.abs(alone - int8_out).max())}
        if quantize_recipe in CALIBRATED and report["int8_batch_dependence"]["max_abs_diff"] != 0.0:
            logger.warning("%s should give the same vector alone and in a batch; it did not here", int8_path)
        logger.info(
            "INT8 vs fp32: min cosine %.5f, mean %.5f; alone vs in a batch: max abs diff %.3g",
            int8_vs_fp32.min,
            int8_vs_fp32.mean,
            report["int8_batch_dependence"]["max_abs_diff"],
        )
        result.card = _write_card(
            int8_path, base, quantize_recipe, f"{base.architecture} {what}; {quantize_recipe}."
        )
        result.model_path = int8_path
        if int8_vs_fp32.min < min_int8_cosine:
            _save_report(out, report)
            raise AccuracyGateFailed(
                f"INT8 model disagrees with fp32: min cosine {int8_vs_fp32.min:.5f} < {min_int8_cosine} "
                f"over {int8_vs_fp32.n} images. Try --quantize none, or another recipe."
            )
    if text:
        from .text import export_text

        image_cards = [fp32_card] if result.card is fp32_card else [fp32_card, result.card]
        report["text"] = {}
        try:
            export_text(
                source,
                out,
                image_cards=image_cards,
                quantize=quantize_recipe is not None,
                opset=opset,
                min_fp32_cosine=min_fp32_cosine,
                min_int8_cosine=min_int8_cosine,
                name=f"{name}-text" if name else None,
                report=report["text"],
            )
        except Exception:
            _save_report(out, report)  # the figures so far, for inspection
            raise
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["card_fingerprint"] = result.card.fingerprint()
    _save_report(out, report)
    logger.info("done in %s s: %s (%d-d)", report["seconds"], result.model_path, dim)
    return result


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from .. import __version__

    return {
        "imgbeddings": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _save_report(out: Path, report: dict[str, Any]) -> None:
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
