"""Text cards: the JSON beside a text tower (``text_model.card.json``) that says how to use it.

A text model turns strings into vectors in the same space as the image vectors of the
checkpoint it was exported with. Everything the runtime needs is in the card: the tokenizer
file and its rules (context length, padding, the text cleaning the checkpoint's tokenizer
applies before ``tokenizers`` sees the text), the ONNX input/output names and width, how
similarities become probabilities (CLIP: softmax of ``logit_scale * cosine``; SigLIP: sigmoid of
``logit_scale * cosine + logit_bias``), and which image models it pairs with.

Schema (``schema_version`` 1)::

    {"schema_version": 1, "kind": "text", "name": "clip-vit-base-patch32-text", "family": "clip",
     "file": {"filename": "text_model.onnx", "sha256": "...", "precision": "int8-dynamic"},
     "tokenizer": {"filename": "tokenizer.json", "sha256": "...", "context_length": 77,
                   "pad_id": 49407, "clean": "none", "lowercase": true, "library": "tokenizers"},
     "input": {"name": "input_ids", "dtype": "int64"},
     "output": {"name": "text_embeds", "dim": 512},
     "similarity": {"activation": "softmax", "logit_scale": 100.0, "logit_bias": null},
     "pairs_with": {"cards": ["<image card fingerprint>", ...], "checkpoint": "openai/...",
                    "revision": null, "dim": 512},
     "source": {"checkpoint": "openai/clip-vit-base-patch32", "revision": null},
     "description": "..."}

Padding is always to ``context_length`` with ``pad_id`` (CLIP pads with its end-of-text token;
SigLIP, which pools the last position, must see its fixed training length). ``library`` is what
reads the tokenizer file: ``tokenizers`` (a ``tokenizer.json``: CLIP's fast tokenizer) or
``sentencepiece`` (the checkpoint's own SentencePiece model: SigLIP, which has no fast
tokenizer). ``clean`` names the text handling around it (``none``; ``siglip``: what
transformers' ``SiglipTokenizer`` does before and after SentencePiece, canonicalising and
lowercasing when ``lowercase``). For ``tokenizers`` files ``lowercase`` is informational (the
file's normaliser does it).
Validation follows :mod:`imgbeddings.models.cards`: unknown keys, wrong types, non-finite or
out-of-range numbers and unsafe file names are :class:`~imgbeddings.errors.CardError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CardError
from ..models.cards import (
    CARD_SUFFIX,
    DIM_RANGE,
    SourceSpec,
    _int_in,
    _parse_json,
    check_filename,
    parse_sections,
)

SCHEMA_VERSION = 1
KIND = "text"
#: The card file name the exporter writes beside ``text_model.onnx``.
TEXT_CARD = "text_model" + CARD_SUFFIX
CLEANERS = ("none", "siglip")
LIBRARIES = ("tokenizers", "sentencepiece")
ACTIVATIONS = ("softmax", "sigmoid")
CONTEXT_RANGE = (1, 65536)
VOCAB_ID_RANGE = (0, 2**31 - 1)
LOGIT_SCALE_RANGE = (1e-6, 1e6)
LOGIT_BIAS_LIMIT = 1e6


def _sha(value: Any, what: str) -> str | None:
    if value is None:
        return None
    digest = str(value).lower()
    if not isinstance(value, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CardError(f"{what} must be 64 hex digits, got {value!r}")
    return digest


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise CardError(f"{what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class TextFileSpec:
    """The ONNX file: its name (relative to the card), checksum and precision."""

    filename: str
    sha256: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        check_filename(self.filename)
        object.__setattr__(self, "sha256", _sha(self.sha256, "file.sha256"))
        _text(self.precision, "file.precision", optional=True)


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer file (read by ``library``) and the rules around it."""

    filename: str
    context_length: int
    pad_id: int
    sha256: str | None = None
    clean: str = "none"
    lowercase: bool = False
    library: str = "tokenizers"

    def __post_init__(self) -> None:
        check_filename(self.filename, "tokenizer.filename")
        if self.library not in LIBRARIES:
            raise CardError(f"tokenizer.library must be one of {LIBRARIES}, got {self.library!r}")
        _int_in(self.context_length, "tokenizer.context_length", CONTEXT_RANGE)
        _int_in(self.pad_id, "tokenizer.pad_id", VOCAB_ID_RANGE)
        object.__setattr__(self, "sha256", _sha(self.sha256, "tokenizer.sha256"))
        if self.clean not in CLEANERS:
            raise CardError(f"tokenizer.clean must be one of {CLEANERS}, got {self.clean!r}")
        if not isinstance(self.lowercase, bool):
            raise CardError(f"tokenizer.lowercase must be true or false, got {self.lowercase!r}")


@dataclass(frozen=True)
class TextInputSpec:
    name: str = "input_ids"
    dtype: str = "int64"

    def __post_init__(self) -> None:
        _text(self.name, "input.name")
        if self.dtype not in ("int64", "int32"):
            raise CardError(f"input.dtype must be int64 or int32, got {self.dtype!r}")


@dataclass(frozen=True)
class TextOutputSpec:
    dim: int
    name: str = "text_embeds"

    def __post_init__(self) -> None:
        _int_in(self.dim, "output.dim", DIM_RANGE)
        _text(self.name, "output.name")


@dataclass(frozen=True)
class SimilaritySpec:
    """How cosine similarities become probabilities (zero-shot labels)."""

    activation: str
    logit_scale: float
    logit_bias: float | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise CardError(f"similarity.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        scale = self.logit_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise CardError(f"similarity.logit_scale must be a finite number, got {scale!r}")
        if not LOGIT_SCALE_RANGE[0] <= scale <= LOGIT_SCALE_RANGE[1]:
            raise CardError(f"similarity.logit_scale must be from 1e-06 to 1e+06, got {scale!r}")
        object.__setattr__(self, "logit_scale", float(scale))
        bias = self.logit_bias
        if bias is not None:
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
                raise CardError(f"similarity.logit_bias must be a finite number or null, got {bias!r}")
            if abs(bias) > LOGIT_BIAS_LIMIT:
                raise CardError(f"similarity.logit_bias must be within +-1e+06, got {bias!r}")
            object.__setattr__(self, "logit_bias", float(bias))
        if self.activation == "sigmoid" and self.logit_bias is None:
            raise CardError("similarity.activation 'sigmoid' (SigLIP) needs similarity.logit_bias")


@dataclass(frozen=True)
class PairSpec:
    """The image models whose vectors share this model's space: the fingerprints of the image
    cards exported with it, and the checkpoint, revision and width they came from."""

    dim: int
    cards: tuple[str, ...] = ()
    checkpoint: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        _int_in(self.dim, "pairs_with.dim", DIM_RANGE)
        cards = self.cards
        if isinstance(cards, (str, bytes)) or not all(isinstance(c, str) and c for c in cards):
            raise CardError(f"pairs_with.cards must be a list of card fingerprints, got {cards!r}")
        object.__setattr__(self, "cards", tuple(cards))
        _text(self.checkpoint, "pairs_with.checkpoint", optional=True)
        _text(self.revision, "pairs_with.revision", optional=True)


_SECTIONS = {
    "file": TextFileSpec,
    "tokenizer": TokenizerSpec,
    "input": TextInputSpec,
    "output": TextOutputSpec,
    "similarity": SimilaritySpec,
    "pairs_with": PairSpec,
    "source": SourceSpec,
}


@dataclass(frozen=True)
class TextCard:
    """Everything the runtime needs to know about one ONNX text tower (module docstring)."""

    name: str
    family: str
    file: TextFileSpec
    tokenizer: TokenizerSpec
    output: TextOutputSpec
    similarity: SimilaritySpec
    pairs_with: PairSpec
    input: TextInputSpec = field(default_factory=TextInputSpec)
    source: SourceSpec = field(default_factory=SourceSpec)
    description: str = ""
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for key in ("name", "family"):
            _text(getattr(self, key), key)
        if not isinstance(self.description, str):
            raise CardError(f"description must be a string, got {self.description!r}")
        if self.kind != KIND:
            raise CardError(f'kind must be "{KIND}" in a text card, got {self.kind!r}')
        if self.pairs_with.dim != self.output.dim:
            raise CardError(
                f"pairs_with.dim ({self.pairs_with.dim}) must equal output.dim ({self.output.dim}): "
                "text and image vectors share one space"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "<dict>") -> TextCard:
        """Build and validate a card; unknown keys and wrong types raise :class:`CardError`."""
        if not isinstance(data, dict):
            raise CardError(f"text card {origin} must be a JSON object")
        if data.get("kind") != KIND:
            raise CardError(f'{origin} is not a text card (no "kind": "{KIND}"): an image model card?')
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise CardError(
                f"text card {origin} has schema_version {version!r}; this imgbeddings reads "
                f"version {SCHEMA_VERSION}. Upgrade imgbeddings or re-export the model."
            )
        kwargs = parse_sections(cls, data, _SECTIONS, f"text card {origin}")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise CardError(f"text card {origin} is incomplete: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> TextCard:
        """Read and validate a text card file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CardError(f"cannot read text card {path}: {exc}") from exc
        return cls.from_dict(_parse_json(raw, str(path)), origin=str(path))

    def save(self, path: str | Path) -> Path:
        """Write the card as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def fingerprint(self) -> str:
        """A short hash of the card (file checksums included): equal fingerprints, same vectors."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
