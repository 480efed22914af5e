"""The card's preprocessing, read from a checkpoint's image-processor config as transformers reads it.

transformers (``CLIPImageProcessor``, ``SiglipImageProcessor``) accepts several forms of the same
settings, and checkpoints on the Hub use all of them; this module accepts the same ones:

* where: ``processor_config.json``'s nested ``"image_processor"`` if present, else
  ``preprocessor_config.json`` (old ``feature_extractor_type: CLIPFeatureExtractor`` files too);
* ``size``: an int (the shortest edge, or height = width when ``default_to_square`` is true), a
  ``[height, width]`` list, ``{"shortest_edge": N}`` or ``{"height": H, "width": W}``;
* ``crop_size``: an int (height = width), a list, or ``{"height": H, "width": W}``;
* a missing key takes the default of transformers' own processor class (for CLIP: no
  ``crop_size`` is 224 x 224, no ``resample`` bicubic, no ``rescale_factor`` 1/255), read from
  the installed transformers rather than copied here;
* ``do_rescale: false`` means a rescale of 1 (pixels stay 0-255), ``do_normalize: false`` a mean
  of 0 and std of 1, as the processor does.

A card holds one square geometry (``crop``: shortest edge to S then centre crop S; ``squash``:
S x S; ``pad``), so settings that describe another one (a non-square size, a crop smaller than the
resize, no resize, a shortest-edge resize without a crop) are refused with an ExportError that says
so, unless the caller chose the geometry itself (``resize_mode``, or ``kind="legacy"``'s ``pad``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CardError, ExportError
from ..models.cards import PreprocessSpec
from .checkpoint import Source, vision_config

PROCESSOR_FILE = "processor_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

#: PIL resampling codes (``PILImageResampling``) -> card interpolation names.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

#: The settings a processor config may hold, read from transformers' own processor for the
#: ones a file leaves out (see :func:`processor_defaults`).
SETTINGS = (
    "do_resize",
    "size",
    "default_to_square",
    "do_center_crop",
    "crop_size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
# family -> transformers image processor classes, PIL backend first (no torchvision needed);
# the second name is the class in transformers < 5.
_PROCESSOR_CLASSES = {
    "clip": (
        ("transformers.models.clip.image_processing_pil_clip", "CLIPImageProcessorPil"),
        ("transformers", "CLIPImageProcessor"),
    ),
    "siglip": (
        ("transformers.models.siglip.image_processing_pil_siglip", "SiglipImageProcessorPil"),
        ("transformers", "SiglipImageProcessor"),
    ),
}
_OVERRIDE = "choose the geometry yourself with resize_mode (--resize-mode crop, squash or pad)"


def read_processor_config(folder: Path) -> tuple[dict[str, Any], Path]:
    """The image-processor settings of a checkpoint folder and the file they came from.

    Raises ExportError when there are none (the image size, mean and std cannot be known).
    """
    nested = folder / PROCESSOR_FILE
    if nested.is_file():
        image_processor = _load_json(nested).get("image_processor")
        if isinstance(image_processor, dict):
            return image_processor, nested
    flat = folder / PREPROCESSOR_FILE
    if flat.is_file():
        return _load_json(flat), flat
    raise ExportError(
        f"{folder} has no {PREPROCESSOR_FILE} (nor an image_processor in {PROCESSOR_FILE}): "
        "the image size, mean and std cannot be known"
    )


def preprocess_spec(source: Source, kind: str, resize_mode: str | None) -> PreprocessSpec:
    """The card's preprocessing for ``source``.

    Geometry: ``resize_mode`` if given, ``pad`` for ``kind="legacy"`` (the original imgbeddings),
    otherwise what the checkpoint's own processor does. The input size is always the model's
    ``image_size``; when the processor's geometry is followed it must say the same size.
    """
    image_size = int(vision_config(source).get("image_size", 224))
    raw, cfg_file = read_processor_config(source.path)
    cfg = {**processor_defaults(source.family), **{k: v for k, v in raw.items() if v is not None}}
    where = str(cfg_file)
    if resize_mode is None:
        resize_mode = "pad" if kind == "legacy" else None
    if resize_mode is None:
        resize_mode, size = checkpoint_geometry(cfg, where)
        if size != image_size:
            raise ExportError(f"{where} says images are {size} px, the model's config says {image_size}")
    resample = cfg["resample"]
    if isinstance(resample, bool) or not isinstance(resample, int) or resample not in RESAMPLE_NAMES:
        raise ExportError(f"{where}: unknown resample {resample!r}; known: {RESAMPLE_NAMES}")
    if cfg["do_normalize"]:
        mean = _triple(cfg["image_mean"], "image_mean", where)
        std = _triple(cfg["image_std"], "image_std", where)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        return PreprocessSpec(
            size=image_size,
            resize_mode=resize_mode,
            interpolation=RESAMPLE_NAMES[resample],
            rescale=float(cfg["rescale_factor"]) if cfg["do_rescale"] else 1.0,
            mean=mean,
            std=std,
        )
    except CardError as exc:  # a NaN or absurd value in the checkpoint's config
        raise ExportError(f"{where}: {exc}") from exc


def processor_defaults(family: str) -> dict[str, Any]:
    """The settings transformers' image processor for ``family`` uses when a config omits them
    (a default-constructed processor's attributes; sizes as plain dicts)."""
    import dataclasses
    import importlib

    for module_name, class_name in _PROCESSOR_CLASSES[family]:
        try:
            processor = getattr(importlib.import_module(module_name), class_name)()
            break
        except (ImportError, AttributeError):
            continue
    else:  # pragma: no cover - every supported transformers has one of them
        raise ExportError(f"this transformers has no image processor for {family}")
    defaults: dict[str, Any] = {}
    for key in SETTINGS:
        value = getattr(processor, key, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # transformers 5's SizeDict
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        defaults[key] = value
    return defaults


def checkpoint_geometry(cfg: dict[str, Any], where: str) -> tuple[str, int]:
    """``(resize_mode, size)`` for what the processor settings ``cfg`` do to an image.

    Raises ExportError for settings a square card cannot reproduce.
    """
    if not cfg["do_resize"]:
        raise ExportError(
            f"{where} has do_resize false: transformers would feed images at their own size, which a "
            f"fixed-size ONNX input cannot take; {_OVERRIDE}"
        )
    size = size_dict(cfg["size"], default_to_square=bool(cfg["default_to_square"]), what="size", where=where)
    crop = None
    if cfg["do_center_crop"]:
        if cfg["crop_size"] is None:
            raise ExportError(f"{where} has do_center_crop true but no crop_size")
        crop = _square(size_dict(cfg["crop_size"], default_to_square=True, what="crop_size", where=where),
                       "crop_size", where)  # fmt: skip
    if set(size) == {"shortest_edge"}:
        edge = int(size["shortest_edge"])
        if crop is None:
            raise ExportError(
                f"{where} resizes the shortest edge to {edge} px without a centre crop, so non-square "
                f"images would give non-square inputs; {_OVERRIDE}"
            )
        if crop != edge:
            raise ExportError(
                f"{where} resizes the shortest edge to {edge} px and then crops {crop} x {crop}; a card "
                f"crops at the resize size; {_OVERRIDE}"
            )
        return "crop", crop
    if set(size) == {"height", "width"}:
        side = _square(size, "size", where)
        if crop is not None and crop != side:
            raise ExportError(
                f"{where} resizes to {side} x {side} and then crops {crop} x {crop}; a card cannot do "
                f"both; {_OVERRIDE}"
            )
        return "squash", side
    raise ExportError(
        f"{where}: size {cfg['size']!r} is not a fixed square size (nor a shortest edge with a centre "
        f"crop); {_OVERRIDE}"
    )


def size_dict(value: Any, *, default_to_square: bool, what: str, where: str) -> dict[str, int]:
    """``value`` in transformers' dict form (its ``get_size_dict``): an int is the shortest edge,
    or height and width when ``default_to_square``; a list or tuple is ``(height, width)``; a dict
    is kept (without its null entries)."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": value[0], "width": value[1]}
    elif isinstance(value, dict):
        known = {k: v for k, v in value.items() if v is not None}
        if known and all(isinstance(v, int) and not isinstance(v, bool) for v in known.values()):
            return known
    raise ExportError(
        f"{where}: {what} {value!r} is not a size (an int, [height, width], {{'shortest_edge': N}} "
        "or {'height': H, 'width': W})"
    )


def _square(size: dict[str, int], what: str, where: str) -> int:
    if size["height"] != size["width"]:
        raise ExportError(
            f"{where}: {what} is {size['height']} x {size['width']} (height x width); imgbeddings "
            "models take square inputs only"
        )
    return int(size["height"])


def _triple(value: Any, what: str, where: str) -> tuple[float, float, float]:
    """A per-channel value: three numbers, or one for all channels (as transformers accepts)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        try:
            return tuple(float(v) for v in value)  # type: ignore[return-value]
        except (TypeError, ValueError):
            pass
    raise ExportError(f"{where}: {what} must be three numbers (one per RGB channel), got {value!r}")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a JSON object")
    return data
