"""Model cards: the small JSON file beside each ONNX model that says how to use it.

The runtime takes every model fact from the card (input size, resize mode, mean/std, output
name and meaning); nothing about a particular model is a code constant. A card is written by
the exporter, shipped built in for the original release's models, or inferred from a bare
ONNX file where that is unambiguous (see ``infer_card``).

Schema (``schema_version`` 1), e.g. ``patch32_v1.card.json``::

    {"schema_version": 1, "name": "patch32_v1", "family": "clip", "architecture": "ViT-B/32",
     "input":  {"name": "pixel_values", "dtype": "float32", "layout": "NCHW"},
     "preprocess": {"size": 224, "resize_mode": "pad", "interpolation": "bicubic",
                    "pad_color": [0, 0, 0], "alpha_background": [255, 255, 255],
                    "rescale": 0.00392156862745098, "mean": [...], "std": [...],
                    "exif_transpose": true},
     "output": {"name": "embeddings", "dim": 768, "kind": "legacy", "normalized": false,
                "legacy_layers": 6},
     "source": {"checkpoint": "openai/clip-vit-base-patch32", "revision": null},
     "file":   {"filename": "patch32_v1.onnx", "sha256": null,
                "repo_id": "minimaxir/imgbeddings", "revision": "main"},
     "description": "..."}

Validation (every failure is a :class:`CardError` naming the field and value): unknown keys and
wrong types are refused; every number must be finite and inside the bounds below
(``SIZE_RANGE`` ...), and the JSON text itself may not hold ``NaN``/``Infinity`` or overflowing
literals; ``file.filename`` must be a plain relative path inside the card's folder or hub repo
(:func:`check_filename`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CardError

SCHEMA_VERSION = 1
CARD_SUFFIX = ".card.json"

#: The card every file in the original imgbeddings layout gets (``original_format_card``): the
#: only place that holds the original release's preprocessing values.
ORIGINAL_FORMAT_TEMPLATE = "original_format.template.json"

RESIZE_MODES = ("pad", "crop", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
OUTPUT_KINDS = ("legacy", "projection", "pooled")

#: Bounds on a card's numbers. Every number must be finite (JSON's ``NaN``/``Infinity`` and
#: overflowing literals such as ``1e999`` are refused when a card is read). Sizes and widths are
#: integers (not booleans). The bounds are far outside any real model's values (CLIP: size 224,
#: rescale 1/255, mean ~0.45, std ~0.27; ImageNet-style cards with 0-255 means: mean 123.7,
#: std 58.4) and keep every preprocessed pixel a meaningful float32 (a std of 1e-300 or a
#: rescale of 1e30 would turn pixels into inf or noise).
SIZE_RANGE = (8, 8192)  #: preprocess.size, pixels per side
SCALE_RANGE = (1e-6, 1e6)  #: preprocess.rescale and each preprocess.std
MEAN_LIMIT = 1e6  #: |preprocess.mean| per channel
DIM_RANGE = (1, 65536)  #: output.dim
LEGACY_LAYERS_RANGE = (1, 1024)  #: output.legacy_layers (None, or hidden states pooled)

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_in(value: Any, what: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise CardError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _number_in(value: Any, what: str, low: float, high: float) -> float:
    if not _is_real(value) or not math.isfinite(value) or not low <= value <= high:
        raise CardError(f"{what} must be a finite number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CardError(f"{what} must be true or false, got {value!r}")
    return value


def _rgb(value: Any, what: str) -> tuple[int, int, int]:
    try:
        rgb = tuple(value)
    except TypeError as exc:
        raise CardError(f"{what} must be three integers 0-255, got {value!r}") from exc
    if len(rgb) != 3 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb
    ):
        raise CardError(f"{what} must be three integers 0-255, got {value!r}")
    return tuple(int(v) for v in rgb)  # type: ignore[return-value]


def _triple(value: Any, what: str, low: float, high: float) -> tuple[float, float, float]:
    try:
        items = tuple(value)
    except TypeError as exc:
        raise CardError(f"{what} must be three numbers, got {value!r}") from exc
    if isinstance(value, (str, bytes)) or len(items) != 3 or not all(_is_real(v) for v in items):
        raise CardError(f"{what} must be three numbers, got {value!r}")
    return tuple(_number_in(v, f"{what}[{i}]", low, high) for i, v in enumerate(items))  # type: ignore[return-value]


def check_filename(filename: Any, what: str = "file.filename") -> str:
    """``filename`` if it is a plain relative path inside the card's folder (or hub repo), else
    :class:`CardError`.

    Accepted: ``/``-separated components, none of them empty, ``.`` or ``..``; not absolute, no
    drive (``C:``), no backslash, no NUL. So ``model.onnx`` and ``onnx/model.onnx`` are fine;
    ``../x.onnx``, ``/etc/passwd``, ``sub/../../x`` and ``C:\\x`` are refused.
    """
    if not isinstance(filename, str) or not filename:
        raise CardError(f"{what} must be a non-empty file name, got {filename!r}")
    parts = filename.split("/")
    if (
        "\\" in filename
        or "\0" in filename
        or _DRIVE_RE.match(filename)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise CardError(
            f"{what} must be a plain relative path inside the model's folder (like 'model.onnx' or "
            f"'onnx/model.onnx': no '..', '.', empty parts, leading '/', drive or backslash), "
            f"got {filename!r}"
        )
    return filename


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: tensor name, dtype and layout."""

    name: str = "pixel_values"
    dtype: str = "float32"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.dtype != "float32" or self.layout != "NCHW":
            raise CardError(f"only float32 NCHW inputs are supported, card says {self.dtype} {self.layout}")


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the input tensor, in this order:

    decode -> EXIF orientation (``exif_transpose``) -> RGB (alpha composited onto
    ``alpha_background``) -> geometry by ``resize_mode`` -> ``* rescale`` -> ``(x - mean) / std``.

    ``resize_mode``: ``pad`` pads to a centred square of ``pad_color`` then resizes to
    ``size`` (the original imgbeddings, nothing cropped); ``crop`` resizes the shortest edge to
    ``size`` then centre-crops (CLIP's own processor); ``squash`` resizes to ``size`` x ``size``
    ignoring the aspect ratio (SigLIP).
    """

    size: int
    resize_mode: str
    interpolation: str
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_color: tuple[int, int, int] = (0, 0, 0)
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _int_in(self.size, "preprocess.size", SIZE_RANGE))
        if self.resize_mode not in RESIZE_MODES:
            raise CardError(f"preprocess.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise CardError(
                f"preprocess.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "pad_color", _rgb(self.pad_color, "preprocess.pad_color"))
        object.__setattr__(
            self, "alpha_background", _rgb(self.alpha_background, "preprocess.alpha_background")
        )
        object.__setattr__(self, "rescale", _number_in(self.rescale, "preprocess.rescale", *SCALE_RANGE))
        object.__setattr__(self, "mean", _triple(self.mean, "preprocess.mean", -MEAN_LIMIT, MEAN_LIMIT))
        object.__setattr__(self, "std", _triple(self.std, "preprocess.std", *SCALE_RANGE))
        object.__setattr__(self, "exif_transpose", _bool(self.exif_transpose, "preprocess.exif_transpose"))


@dataclass(frozen=True)
class OutputSpec:
    """The output tensor: its name, width, and what the vector means.

    ``kind``: ``legacy`` (the original imgbeddings' attention-weighted pooling of the last
    ``legacy_layers`` hidden states; not in CLIP's text-image space), ``projection`` (CLIP's
    joint image-text space), ``pooled`` (post-layernorm CLS / pooler output).
    ``normalized``: whether the model already returns unit-length vectors.
    """

    dim: int
    kind: str
    name: str = "embeddings"
    normalized: bool = False
    legacy_layers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", _int_in(self.dim, "output.dim", DIM_RANGE))
        if self.kind not in OUTPUT_KINDS:
            raise CardError(f"output.kind must be one of {OUTPUT_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "normalized", _bool(self.normalized, "output.normalized"))
        if self.legacy_layers is not None:
            layers = _int_in(self.legacy_layers, "output.legacy_layers", LEGACY_LAYERS_RANGE)
            object.__setattr__(self, "legacy_layers", layers)


@dataclass(frozen=True)
class SourceSpec:
    """Where the weights came from (the Hugging Face checkpoint and its revision)."""

    checkpoint: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class FileSpec:
    """The ONNX file: its name, SHA-256, numeric precision (``fp32``, or the INT8 recipe), and
    (for downloadable models) its hub location."""

    filename: str
    sha256: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        check_filename(self.filename)
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise CardError(f"file.sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)


_SECTIONS = {
    "input": InputSpec,
    "preprocess": PreprocessSpec,
    "output": OutputSpec,
    "source": SourceSpec,
    "file": FileSpec,
}


def parse_sections(cls: Any, data: dict[str, Any], sections: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from a card's JSON object: each key of ``sections`` built
    as its dataclass, other keys as they are. Unknown keys, a section that is not an object, and
    a section missing a required field or failing its checks raise :class:`CardError` naming
    ``where`` (e.g. ``"model card x.card.json"``) and the key."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise CardError(f"{where} has unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        section = sections.get(key)
        if section is None:
            kwargs[key] = value
            continue
        if not isinstance(value, dict):
            raise CardError(f"{where}: {key!r} must be an object")
        bad = set(value) - {f.name for f in fields(section)}
        if bad:
            raise CardError(f"{where}: unknown keys in {key!r}: {sorted(bad)}")
        try:
            kwargs[key] = section(**value)
        except TypeError as exc:  # a required field is missing
            raise CardError(f"{where}: {key!r} is incomplete: {exc}") from exc
        except CardError as exc:
            raise CardError(f"{where}: {exc}") from exc
    return kwargs


@dataclass(frozen=True)
class ModelCard:
    """Everything the runtime needs to know about one ONNX embedding model."""

    name: str
    family: str
    architecture: str
    preprocess: PreprocessSpec
    output: OutputSpec
    file: FileSpec
    input: InputSpec = field(default_factory=InputSpec)
    source: SourceSpec = field(default_factory=SourceSpec)
    description: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for key in ("name", "family", "architecture", "description"):
            if not isinstance(getattr(self, key), str):
                raise CardError(f"{key} must be a string, got {getattr(self, key)!r}")
        if not self.name.strip():
            raise CardError("name must not be empty")

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "<dict>") -> ModelCard:
        """Build and validate a card; unknown keys and wrong types raise :class:`CardError`."""
        if not isinstance(data, dict):
            raise CardError(f"model card {origin} must be a JSON object")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise CardError(
                f"model card {origin} has schema_version {version!r}; this imgbeddings reads "
                f"version {SCHEMA_VERSION}. Upgrade imgbeddings or re-export the model."
            )
        kwargs = parse_sections(cls, data, _SECTIONS, f"model card {origin}")
        missing = {"name", "family", "architecture", "preprocess", "output", "file"} - set(kwargs)
        if missing:
            raise CardError(f"model card {origin} is missing {sorted(missing)}")
        try:
            return cls(**kwargs)
        except CardError as exc:
            raise CardError(f"model card {origin}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes, *, origin: str = "<json>") -> ModelCard:
        """Parse and validate a card's JSON text. Strict JSON: ``NaN``, ``Infinity`` and numbers
        that overflow a float (``1e999``) are refused, like any other malformed card."""
        return cls.from_dict(_parse_json(text, origin), origin=origin)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card from a JSON file (strict JSON, see :meth:`from_json`)."""
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CardError(f"cannot read model card {path}: {exc.strerror or exc}") from exc
        return cls.from_json(text, origin=str(path))

    def save(self, path: str | Path) -> Path:
        """Write the card as pretty JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    # --- identity --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of everything that changes the vectors (input, preprocessing, output,
        file checksum). Two cards with the same fingerprint produce comparable vectors."""
        payload = {
            "input": asdict(self.input),
            "preprocess": asdict(self.preprocess),
            "output": asdict(self.output),
            "sha256": self.file.sha256,
            "source": asdict(self.source),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_preprocess(self, **overrides: Any) -> ModelCard:
        """A copy with some preprocessing fields replaced (user overrides win over the card)."""
        allowed = {f.name for f in fields(PreprocessSpec)}
        bad = set(overrides) - allowed
        if bad:
            raise CardError(f"unknown preprocessing option(s) {sorted(bad)}; known: {sorted(allowed)}")
        return replace(self, preprocess=replace(self.preprocess, **overrides))


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"{text} overflows a float")
    return value


def _parse_json(text: str | bytes, origin: str) -> Any:
    """Strict JSON: Python's ``json`` would accept ``NaN``/``Infinity`` and turn ``1e999`` into inf."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise CardError(f"model card {origin} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except _NonFinite as exc:
        raise CardError(
            f"model card {origin} is not valid JSON: {exc}; every number in a card must be finite"
        ) from None
    except json.JSONDecodeError as exc:
        raise CardError(f"model card {origin} is not valid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; absurd nesting
        raise CardError(f"model card {origin} is not a usable JSON card: {exc}") from exc


def card_path_for(onnx_path: str | Path) -> Path:
    """Where the card of ``model.onnx`` lives: ``model.card.json`` beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + CARD_SUFFIX)


def original_format_card(
    dim: int,
    filename: str,
    *,
    name: str | None = None,
    layers: int | None = None,
    checkpoint: str | None = None,
    sha256: str | None = None,
) -> ModelCard:
    """The card of a file in the original imgbeddings layout (``pixel_values`` -> ``embeddings``):
    the template card (``models/builtin/original_format.template.json``) with this file's facts."""
    from importlib import resources

    template = resources.files("imgbeddings.models") / "builtin" / ORIGINAL_FORMAT_TEMPLATE
    data = _parse_json(template.read_text(encoding="utf-8"), ORIGINAL_FORMAT_TEMPLATE)
    data["name"] = name or Path(filename).stem
    data["output"].update(dim=dim, legacy_layers=layers)
    data["file"] = {"filename": filename, "sha256": sha256}
    data["source"] = {"checkpoint": checkpoint, "revision": None}
    return ModelCard.from_dict(data, origin=ORIGINAL_FORMAT_TEMPLATE)


def original_format_preprocess(**overrides: Any) -> PreprocessSpec:
    """The original layout's preprocessing (from the template card), with ``overrides``."""
    return replace(original_format_card(1, "model.onnx").preprocess, **overrides)


def infer_card(
    onnx_path: str | Path, inputs: list[tuple[str, list[Any]]], outputs: list[tuple[str, list[Any]]]
) -> ModelCard:
    """Infer a card for a bare ONNX file from its graph's inputs and outputs.

    Only the original imgbeddings layout is unambiguous: one input ``pixel_values``
    ``[N, 3, 224, 224]`` and an output ``embeddings`` ``[N, D]``; it gets the template card of
    that layout (:func:`original_format_card`: pad to square, OpenAI CLIP mean/std). Anything
    else raises :class:`CardError` that says how to write a card, since guessing the
    preprocessing would silently give wrong vectors.
    """
    onnx_path = Path(onnx_path)
    names_in = [n for n, _ in inputs]
    names_out = [n for n, _ in outputs]
    how = (
        f"Write a card next to it ({card_path_for(onnx_path).name}, see the README section "
        f"'Model cards') or export the model with `imgbeddings export`, which writes one."
    )
    if names_in != ["pixel_values"] or "embeddings" not in names_out:
        raise CardError(
            f"{onnx_path} has no model card and is not in the original imgbeddings layout "
            f"(inputs {names_in}, outputs {names_out}; expected input 'pixel_values' and output "
            f"'embeddings'), so its preprocessing cannot be known. {how}"
        )
    in_shape = inputs[0][1]
    if len(in_shape) != 4 or list(in_shape[1:]) != [3, 224, 224]:
        raise CardError(
            f"{onnx_path}: input 'pixel_values' has shape {in_shape}, expected [N, 3, 224, 224]. {how}"
        )
    out_shape = dict(outputs)["embeddings"]
    dim = out_shape[-1] if out_shape else None
    if len(out_shape) != 2 or not isinstance(dim, int):
        raise CardError(f"{onnx_path}: output 'embeddings' has shape {out_shape}, expected [N, D]. {how}")
    return original_format_card(dim, onnx_path.name)
