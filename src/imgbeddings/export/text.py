"""The text tower of a full CLIP/SigLIP checkpoint -> a verified ONNX text model, its tokenizer
file and its text card (``imgbeddings export SRC -o DIR --kind projection --text``).

Files written beside the image model::

    DIR/text_model.onnx            INT8 (dynamic, MatMul weights) when its gate passes, else float32
    DIR/text_model.card.json       its card (:class:`~imgbeddings.text.card.TextCard`)
    DIR/text_model_fp32.onnx       the float32 export, when text_model.onnx is the INT8 one
    DIR/text_model_fp32.card.json
    DIR/tokenizer.json             CLIP: the ``tokenizers`` file both cards name
    DIR/spiece.model               SigLIP: its SentencePiece model, instead

The ONNX model is ``model.get_text_features(input_ids)``: input ``input_ids`` int64 (N, L) with
a dynamic batch axis and L the checkpoint's context length (``max_position_embeddings``), output
``text_embeds`` (N, D), raw (not normalised). The card pads every string to L: CLIP pools at the
first end-of-text token (it pads with that token; its attention is causal, so padding changes
nothing before it) and SigLIP pools the last position, so it must see its training length.

Checks, each on a varied corpus of strings (:func:`~imgbeddings.export.tokenizer.load_corpus`):
the runtime tokenizer against the checkpoint's transformers tokenizer (any difference fails the
export), the float32 ONNX model against PyTorch on the runtime tokenizer's ids (``min_fp32_cosine``)
and the INT8 model against float32 (``min_int8_cosine``: below it the INT8 file is dropped with
a warning, not the export).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AccuracyGateFailed, ExportError
from ..models.cards import ModelCard, SourceSpec
from ..text.card import (
    TEXT_CARD,
    PairSpec,
    SimilaritySpec,
    TextCard,
    TextFileSpec,
    TextInputSpec,
    TextOutputSpec,
    TokenizerSpec,
)
from . import checkpoint as tm

logger = logging.getLogger("imgbeddings.export")

INPUT_NAME = "input_ids"
OUTPUT_NAME = "text_embeds"
FP32_FILE = "text_model_fp32.onnx"
MODEL_FILE = "text_model.onnx"
FP32_CARD = "text_model_fp32.card.json"
#: The INT8 recipe of the text tower (see :mod:`imgbeddings.export.quantize`): QInt8 weights per
#: output channel, MatMul only, activations quantised per call (so a vector moves very slightly
#: with its batch-mates; the report measures how much).
INT8_RECIPE = "int8-dynamic"
MIN_FP32_COSINE = 0.99999
MIN_INT8_COSINE = 0.99
#: Tokenizer files fetched beside a Hub checkpoint's weights (the vision export does not need them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
)
TEXT_MODEL_TYPES = ("clip", "siglip")  # full checkpoints; *_vision_model ones have no text tower
_BATCH = 16
_FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP"}
_BATCH_CHECK = 16  # strings embedded one at a time to measure the INT8 model's batch dependence


def check_text_source(source: tm.Source) -> None:
    """Raise :class:`ExportError` unless ``source`` is a full CLIP/SigLIP checkpoint (one with a
    text tower); called before anything is exported, so a bad ``--text`` fails fast."""
    model_type = source.config.get("model_type")
    if model_type not in TEXT_MODEL_TYPES or "text_config" not in source.config:
        raise ExportError(
            f"{source.name} has no text tower (model_type {model_type!r}): --text needs a full CLIP "
            "or SigLIP checkpoint (CLIPModel / SiglipModel, model_type 'clip' or 'siglip'), not a "
            "vision-only one"
        )


def load_text_model(source: tm.Source) -> Any:
    """The eval-mode full CLIPModel / SiglipModel (eager attention, float32)."""
    check_text_source(source)
    torch = tm.require_torch()
    from transformers import CLIPModel, SiglipModel

    cls = CLIPModel if source.family == "clip" else SiglipModel
    with tm._transformers_quiet():
        return tm._load(cls, source, torch)


def wrap_text(model: Any) -> Any:
    """A torch module ``input_ids -> get_text_features(input_ids)`` (N, D), not normalised."""
    torch = tm.require_torch()

    class TextFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any) -> Any:
            out = self.model.get_text_features(input_ids=input_ids)
            # transformers 5 returns BaseModelOutputWithPooling (projected pooler_output); 4.x a tensor
            return out.pooler_output if hasattr(out, "pooler_output") else out

    return TextFeatures().eval()


def export_text_onnx(module: Any, path: Path, *, context_length: int, vocab_size: int, opset: int) -> None:
    """TorchScript-based ONNX export of :func:`wrap_text`'s module, dynamic batch axis."""
    torch = tm.require_torch()
    # ids below every special token, so the trace does not depend on where one falls
    dummy = torch.arange(2 * context_length, dtype=torch.int64).reshape(2, context_length)
    dummy = dummy % min(vocab_size, 256)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # CLIP's pooling indexes the end-of-text position: indices are never negative here
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def run_text_onnx(path: Path, ids: np.ndarray, batch_size: int = _BATCH) -> np.ndarray:
    """The ONNX text model's outputs on int64 ids (N, L), in batches."""
    import onnxruntime as ort

    from ..runtime import CPU, session_options

    session = ort.InferenceSession(str(path), session_options(), providers=[CPU])
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: ids[i : i + batch_size]})[0]
        for i in range(0, len(ids), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def run_text_torch(module: Any, ids: np.ndarray, batch_size: int = _BATCH) -> np.ndarray:
    """The PyTorch reference on the same ids."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(ids[i : i + batch_size]))).numpy())
    return np.concatenate(outs).astype(np.float32)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    from .verify import cosines

    c = cosines(a, b)
    return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean()), "strings": len(c)}


def similarity_spec(model: Any, family: str) -> SimilaritySpec:
    """How the checkpoint turns cosines into probabilities: CLIP softmax of ``exp(logit_scale) *
    cosine``; SigLIP sigmoid of ``exp(logit_scale) * cosine + logit_bias``."""
    scale = float(model.logit_scale.detach().double().exp().item())
    if family == "siglip":
        return SimilaritySpec("sigmoid", scale, float(model.logit_bias.detach().double().item()))
    return SimilaritySpec("softmax", scale, None)


def tokenizer_folder(source: tm.Source) -> Path:
    """The checkpoint folder with its tokenizer files: for a Hub checkpoint (whose download took
    configs and weights only) they are fetched now, at the same commit."""
    local = Path(str(source.name)).expanduser()
    if local.is_dir() or source.revision is None or source.revision != source.path.name:
        return source.path
    from .. import hub

    logger.info("getting the tokenizer of %s from the Hugging Face Hub", source.name)
    return hub.download_checkpoint(
        str(source.name), revision=source.path.name, allow_patterns=list(TOKENIZER_FILES)
    )


def export_text(
    source: str | Path | tm.Source,
    out_dir: str | Path,
    *,
    image_cards: list[ModelCard],
    quantize: bool = True,
    opset: int = 20,
    min_fp32_cosine: float = MIN_FP32_COSINE,
    min_int8_cosine: float = MIN_INT8_COSINE,
    name: str | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, verify and describe the text tower of a full CLIP/SigLIP checkpoint (module doc).

    Args:
        source: a :class:`~imgbeddings.export.checkpoint.Source`, or what
            :func:`~imgbeddings.export.checkpoint.locate` takes (a folder or Hub id).
        out_dir: the export folder (created; the image model is usually already there).
        image_cards: the image cards written from the same checkpoint's projection; their
            fingerprints go into the text card's ``pairs_with``.
        quantize: also write an INT8 model (kept only when its gate passes).
        min_fp32_cosine: ONNX float32 vs PyTorch gate; below it :class:`AccuracyGateFailed`.
        min_int8_cosine: INT8 vs float32 gate; below it the INT8 file is dropped (a warning).
        name: the card's name (default: the checkpoint's name + ``-text``).
        report: a dict to fill as the export goes (so a caller has the figures even when a gate
            raises); the same dict is returned.

    Returns:
        The report: ``model`` (the file the card names), ``family``, ``context_length``, ``dim``,
        ``token_parity`` ({strings, mismatches}), ``fp32_vs_torch`` and, when quantised,
        ``int8_vs_fp32`` and ``int8_batch_dependence``; ``int8_dropped`` (why there is no INT8
        model) when there is none; ``similarity``, ``pairs_with``, ``card_fingerprint``, ``seconds``.

    Raises:
        ExportError: not a full CLIP/SigLIP checkpoint. AccuracyGateFailed: the tokenizer or the
            float32 model disagrees with transformers.
    """
    from ..hub import sha256_file
    from ..text.tokenize import TextTokenizer
    from .tokenizer import check_token_parity, load_corpus, save_tokenizer

    started = time.perf_counter()
    report = {} if report is None else report
    if not isinstance(source, tm.Source):
        source = tm.locate(source)
    check_text_source(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    logger.info("loading the text tower of %s (%s)", source.name, source.family)
    model = load_text_model(source)
    text_config = model.config.text_config
    context_length = int(text_config.max_position_embeddings)
    module = wrap_text(model)
    similarity = similarity_spec(model, source.family)
    report.update(
        family=source.family, context_length=context_length, quantize=INT8_RECIPE if quantize else "none"
    )
    report["similarity"] = {
        "activation": similarity.activation,
        "logit_scale": similarity.logit_scale,
        "logit_bias": similarity.logit_bias,
    }

    fp32_path = out / (FP32_FILE if quantize else MODEL_FILE)
    logger.info("exporting the text tower to float32 ONNX (opset %d) -> %s", opset, fp32_path)
    export_text_onnx(
        module, fp32_path, context_length=context_length, vocab_size=int(text_config.vocab_size), opset=opset
    )

    checkpoint_dir = tokenizer_folder(source)
    spec = save_tokenizer(checkpoint_dir, out, source.family, context_length)
    corpus = load_corpus()
    parity = check_token_parity(checkpoint_dir, out, spec, corpus)
    mismatches = list(parity.get("mismatches", []))
    report["token_parity"] = {
        "strings": int(parity.get("strings", len(corpus))),
        "mismatches": len(mismatches),
    }
    if mismatches:
        report["token_parity"]["examples"] = [_short(m) for m in mismatches[:5]]
        raise AccuracyGateFailed(
            f"the exported tokenizer ({spec.filename}) disagrees with {source.name}'s transformers "
            f"tokenizer on {len(mismatches)} of {report['token_parity']['strings']} strings, e.g. "
            + "; ".join(_short(m) for m in mismatches[:3])
        )
    logger.info("tokenizer: %s, same ids as transformers on %d strings", spec.filename, len(corpus))

    ids = TextTokenizer.from_spec(spec, out).encode(corpus)
    reference = run_text_torch(module, ids)
    fp32_out = run_text_onnx(fp32_path, ids)
    dim = int(fp32_out.shape[1])
    report["dim"] = dim
    report["fp32_vs_torch"] = _agreement(fp32_out, reference)
    logger.info(
        "text fp32 ONNX vs PyTorch: min cosine %.7f, mean %.7f",
        report["fp32_vs_torch"]["min_cosine"],
        report["fp32_vs_torch"]["mean_cosine"],
    )
    if report["fp32_vs_torch"]["min_cosine"] < min_fp32_cosine:
        raise AccuracyGateFailed(
            f"text fp32 ONNX disagrees with PyTorch: min cosine {report['fp32_vs_torch']['min_cosine']:.7f} "
            f"< {min_fp32_cosine} over {len(corpus)} strings"
        )

    int8_path: Path | None = None
    if quantize:
        int8_path = out / MODEL_FILE
        int8_path = _quantize_text(fp32_path, int8_path, ids, fp32_out, min_int8_cosine, report)
        if int8_path is None:  # dropped: the float32 model becomes text_model.onnx
            fp32_path = fp32_path.replace(out / MODEL_FILE)
    else:
        report["int8_dropped"] = "not quantised (--quantize none)"

    base_name = name or f"{Path(str(source.name).rstrip('/')).name}-text"
    pairs = PairSpec(
        dim=dim,
        cards=tuple(c.fingerprint() for c in image_cards),
        checkpoint=str(source.name),
        revision=source.revision,
    )
    common = dict(
        family=source.family,
        tokenizer=spec if spec.sha256 else _with_sha(spec, out),
        input=TextInputSpec(INPUT_NAME, "int64"),
        output=TextOutputSpec(dim=dim, name=OUTPUT_NAME),
        similarity=similarity,
        pairs_with=pairs,
        source=SourceSpec(checkpoint=str(source.name), revision=source.revision),
    )
    what = f"{_FAMILY_NAMES.get(source.family, source.family)} text tower: {dim}-d vectors"
    fp32_card = TextCard(
        name=base_name if int8_path is None else f"{base_name}-fp32",
        file=TextFileSpec(filename=fp32_path.name, sha256=sha256_file(fp32_path), precision="fp32"),
        description=f"{what} in the image-text space of {source.name}; float32.",
        **common,
    )
    if int8_path is None:
        card = fp32_card
        card.save(out / TEXT_CARD)
        (out / FP32_CARD).unlink(missing_ok=True)  # a stale card from an earlier export into DIR
    else:
        fp32_card.save(out / FP32_CARD)
        card = TextCard(
            name=base_name,
            file=TextFileSpec(filename=int8_path.name, sha256=sha256_file(int8_path), precision=INT8_RECIPE),
            description=f"{what} in the image-text space of {source.name}; {INT8_RECIPE}.",
            **common,
        )
        card.save(out / TEXT_CARD)
        report["fp32_card_fingerprint"] = fp32_card.fingerprint()
    report["model"] = card.file.filename
    report["pairs_with"] = list(pairs.cards)
    report["card_fingerprint"] = card.fingerprint()
    report["seconds"] = round(time.perf_counter() - started, 1)
    logger.info("text tower done in %s s: %s (%d-d)", report["seconds"], out / card.file.filename, dim)
    return report


def _quantize_text(
    fp32_path: Path,
    int8_path: Path,
    ids: np.ndarray,
    fp32_out: np.ndarray,
    min_int8_cosine: float,
    report: dict[str, Any],
) -> Path | None:
    """Write and check the INT8 text model; ``None`` (file removed, reason in the report) when it
    fails its gate or cannot be written."""
    from .quantize import quantize

    logger.info("quantising the text tower (%s) -> %s", INT8_RECIPE, int8_path)
    try:
        quantize(fp32_path, int8_path, INT8_RECIPE)
        int8_out = run_text_onnx(int8_path, ids)
    except Exception as exc:  # an ONNX Runtime quantiser quirk must not cost the float32 export
        int8_path.unlink(missing_ok=True)
        report["int8_dropped"] = f"quantisation failed: {type(exc).__name__}: {exc}"
        logger.warning("text tower INT8 dropped (%s); text_model.onnx is the float32 model", exc)
        return None
    report["int8_vs_fp32"] = _agreement(int8_out, fp32_out)
    n = min(_BATCH_CHECK, len(ids))
    alone = run_text_onnx(int8_path, ids[:n], batch_size=1)
    # activations are quantised with the range of the whole batch: the same string alone moves a little
    report["int8_batch_dependence"] = {
        "max_abs_diff": float(np.abs(alone - int8_out[:n]).max()),
        "min_cosine": _agreement(alone, int8_out[:n])["min_cosine"],
        "strings": n,
    }
    low = report["int8_vs_fp32"]["min_cosine"]
    logger.info("text INT8 vs fp32: min cosine %.5f, mean %.5f", low, report["int8_vs_fp32"]["mean_cosine"])
    if low < min_int8_cosine:
        int8_path.unlink(missing_ok=True)
        report["int8_dropped"] = (
            f"INT8 vs fp32 min cosine {low:.5f} < {min_int8_cosine} over {len(ids)} strings"
        )
        logger.warning(
            "text tower INT8 dropped: min cosine vs fp32 %.5f < %s; text_model.onnx is the float32 model",
            low,
            min_int8_cosine,
        )
        return None
    return int8_path


def _with_sha(spec: TokenizerSpec, out: Path) -> TokenizerSpec:
    from dataclasses import replace

    from ..hub import sha256_file

    return replace(spec, sha256=sha256_file(out / spec.filename))


def _short(item: Any, limit: int = 120) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."
