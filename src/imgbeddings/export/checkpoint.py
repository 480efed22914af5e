"""PyTorch side of the exporter: load a Hugging Face checkpoint's vision tower and wrap it so
that its forward pass returns exactly the vector an output ``kind`` asks for.

Only this subpackage imports torch/transformers (the ``[export]`` extra).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError, UnsupportedArchitecture

logger = logging.getLogger("imgbeddings.export")

KINDS = ("projection", "legacy", "pooled")
OUTPUT_NAMES = {"projection": "image_embeds", "legacy": "embeddings", "pooled": "pooler_output"}
# What a Hub checkpoint download fetches (see ``download``): configs, then one kind of weights.
CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PICKLES = ("*.bin", "*.bin.index.json")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # 'name' or 'org/name'
# model_type in config.json -> family
FAMILIES = {
    "clip": "clip",
    "clip_vision_model": "clip",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
}


def require_torch() -> Any:
    """Import torch and transformers, or explain how to install the export extra."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            "exporting needs PyTorch and transformers: pip install 'imgbeddings[export]' "
            "(for the CPU-only PyTorch build first run: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)"
        ) from exc
    return torch


@dataclass
class Source:
    """A checkpoint: where it is, its config dict, family and revision (for Hub ids the commit
    the revision resolved to; for a local folder the revision the caller named, if any)."""

    name: str
    path: Path
    config: dict[str, Any]
    family: str
    revision: str | None


def locate(src: str | Path, revision: str | None = None) -> Source:
    """Find the checkpoint folder (local, or downloaded from the Hub) and read its config.

    Raises:
        ExportError: a path that is no folder, or a folder without ``config.json``.
        UnsupportedArchitecture: a ``model_type`` the exporter does not handle.
        ModelUnavailable: a Hub checkpoint that cannot be downloaded (see :mod:`imgbeddings.hub`).
    """
    path = Path(src).expanduser()
    resolved_revision = None
    text = str(src)
    if not path.is_dir() and (path.is_absolute() or not _REPO_ID.fullmatch(text)):
        raise ExportError(f"{src}: no such checkpoint folder (nor a Hugging Face repo id, org/name)")
    if not path.is_dir():
        path = download(text, revision)
        resolved_revision = path.name  # snapshot folders are named by commit hash
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type", "?")
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedArchitecture(
            f"{src}: model_type {model_type!r} is not supported; supported: CLIP "
            "(clip, clip_vision_model) and SigLIP / fixed-resolution SigLIP 2 (siglip, "
            "siglip_vision_model). SigLIP 2 NaFlex (siglip2) takes variable-size patch inputs "
            "and is not supported; use its fixed-resolution checkpoints."
        )
    return Source(str(src), path, config, family, resolved_revision or revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of Hub checkpoint ``repo_id`` with what the exporter reads: the configs and
    the weights, ``*.safetensors`` when the repo has them, else the PyTorch ``*.bin`` files (never
    both, nor the TensorFlow/Flax weights or the tokenizer)."""
    from .. import hub

    logger.info("getting %s from the Hugging Face Hub", repo_id)
    folder = hub.download_checkpoint(repo_id, revision=revision, allow_patterns=[*CONFIG_FILES, *SAFETENSORS])
    if not any(folder.glob("*.safetensors")):  # an older repo: PyTorch pickles only
        commit = folder.name  # the same commit, even if the branch moves meanwhile
        folder = hub.download_checkpoint(repo_id, revision=commit, allow_patterns=[*CONFIG_FILES, *PICKLES])
    return folder


def vision_config(source: Source) -> dict[str, Any]:
    """The vision tower's config dict (nested in full CLIP/SigLIP checkpoints)."""
    return source.config.get("vision_config", source.config)


def load_vision_model(source: Source, kind: str) -> Any:
    """The eval-mode vision model (with projection where the kind needs it), eager attention."""
    torch = require_torch()
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection, SiglipVisionModel

    if source.family == "siglip" and kind == "legacy":
        raise UnsupportedArchitecture(
            "kind 'legacy' pools around a CLS token that SigLIP does not have; use 'projection' "
            "(SigLIP's attention-pooled image features, its image-text space) or 'pooled'"
        )
    if source.family == "clip":
        cls = CLIPVisionModelWithProjection if kind == "projection" else CLIPVisionModel
    else:
        cls = SiglipVisionModel
    with _transformers_quiet():
        return _load(cls, source, torch)


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """Hide transformers' own loading chatter (progress bars, the table of the text tower's
    weights a vision-only load leaves unused, token-id notes): what matters of it, missing or
    mis-shaped vision weights, is checked and raised by :func:`load_vision_model`."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(cls: Any, source: Source, torch: Any) -> Any:
    config = cls.config_class.from_pretrained(str(source.path))
    if "vision_config" in source.config and "projection_dim" in source.config:
        # A full CLIP checkpoint keeps projection_dim at the top level; the vision sub-config's
        # own default (512) would silently re-initialise a wrongly shaped projection.
        config.projection_dim = source.config["projection_dim"]
    try:
        model, info = cls.from_pretrained(
            str(source.path), config=config, attn_implementation="eager", dtype=torch.float32,
            output_loading_info=True,
        )  # fmt: skip
    except Exception as exc:
        raise ExportError(f"cannot load {source.name} as {cls.__name__}: {exc}") from exc
    bad = list(info.get("missing_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]
    if any("visual_projection" in k for k in bad):
        raise ExportError(
            f"{source.name} has no visual projection (a bare vision tower): --kind projection needs "
            "a full CLIP or CLIPVisionModelWithProjection checkpoint; use --kind pooled or legacy"
        )
    if bad:
        raise ExportError(
            f"{source.name}: weights missing or of the wrong shape for {cls.__name__}: {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}; the export would use random values for them"
        )
    return model.eval()


def legacy_pooling(hidden_states: Any, attentions: Any, num_layers: int) -> Any:
    """The original imgbeddings pooling (its ``get_embeddings_from_output``): the sum of the last
    ``num_layers`` hidden states (before the post-layernorm), each token weighted by the mean
    attention it receives over those layers' maps (mean over layers, heads and queries), the CLS
    token's weight set to 0 and the weights renormalised to sum 1."""
    import torch

    hidden = torch.stack(hidden_states[-num_layers:]).sum(0)
    att = torch.stack(attentions[-num_layers:])  # (layers, batch, heads, queries, keys)
    weights = att.mean(dim=(0, 2, 3))  # (batch, keys)
    weights = torch.cat([torch.zeros_like(weights[:, :1]), weights[:, 1:]], dim=1)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (hidden * weights.unsqueeze(2)).sum(1)


def wrap(model: Any, source: Source, kind: str, legacy_layers: int | None) -> Any:
    """A torch module ``pixel_values -> (N, D)`` for the output kind."""
    torch = require_torch()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            if kind == "legacy":
                out = self.model(pixel_values, output_attentions=True, output_hidden_states=True)
                return legacy_pooling(out.hidden_states, out.attentions, legacy_layers)
            out = self.model(pixel_values)
            if kind == "projection" and source.family == "clip":
                return out.image_embeds
            return out.pooler_output

    if kind == "legacy":
        layers = vision_config(source).get("num_hidden_layers", 12)
        if legacy_layers is None or not 1 <= legacy_layers <= layers:
            raise ExportError(f"--legacy-layers must be between 1 and {layers}, got {legacy_layers}")
    return Wrapped().eval()


def export_onnx(module: Any, path: Path, *, image_size: int, output_name: str, opset: int) -> None:
    """TorchScript-based ONNX export with a dynamic batch axis."""
    import warnings

    torch = require_torch()
    dummy = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # transformers' shape checks are constants for a fixed input size: expected, not a problem
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=["pixel_values"],
            output_names=[output_name],
            dynamic_axes={"pixel_values": {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
