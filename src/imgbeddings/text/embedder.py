"""``TextEmbedder``: strings -> vectors in the image space of the checkpoint a text tower was
exported with (``imgbeddings export SRC -o DIR --text``). ONNX Runtime and ``tokenizers`` (or
``sentencepiece`` for SigLIP) only: no torch, no transformers.

>>> text = TextEmbedder("clip-export/")           # DIR/text_model.card.json + files
>>> text.embed(["a dog on a beach"]).shape        # (1, D), unit length
>>> text.check_pair(load("out").manifest)         # raises ModelMismatch unless paired

Where a text model comes from (:func:`locate_text_model`): an export folder (its
``text_model.card.json``), a text card file, the ``text_model.onnx`` beside its card, or a Hub
repo holding such a folder's files (downloaded into the cache like image models).

**Pairing.** Text vectors are comparable only with image vectors of the same checkpoint's
projection. An output pairs with a text model when its image card's fingerprint is one the text
card lists (the image files exported with it), or, for an image file exported separately from
the same checkpoint, when checkpoint, revision, width and kind (``projection``) all agree. An
output made with a PCA is never paired (its vectors left the model's space).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CardError, ModelCorrupted, ModelMismatch, ModelNotFound, OptionError
from .card import TEXT_CARD, TextCard

#: Strings per ONNX Runtime call.
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class LocatedTextModel:
    card: TextCard
    folder: Path
    onnx_path: Path
    tokenizer_path: Path


def _no_text(where: str) -> ModelNotFound:
    return ModelNotFound(
        f"{where} has no text tower ({TEXT_CARD}): text queries need a CLIP/SigLIP model exported with "
        "its text tower, e.g. `imgbeddings export openai/clip-vit-base-patch32 -o clip-b32 --kind "
        "projection --text`, then embed the images with that folder's model.onnx"
    )


def _local(folder: Path, card_file: Path) -> LocatedTextModel:
    from ..hub import sha256_file
    from ..models.registry import join_inside

    card = TextCard.load(card_file)
    onnx_path = join_inside(folder, card.file.filename, str(card_file))
    tok_path = join_inside(folder, card.tokenizer.filename, str(card_file))
    for path in (onnx_path, tok_path):
        if not path.is_file():
            raise ModelNotFound(f"text card {card_file} names {path.name!r}, which is not in {folder}")
    if card.file.sha256:
        actual = sha256_file(onnx_path)
        if actual != card.file.sha256:
            raise ModelCorrupted(str(onnx_path), card.file.sha256, actual)
    return LocatedTextModel(card, folder, onnx_path, tok_path)


def _is_text_card(card_file: Path) -> bool:
    """Whether ``card_file`` may be a text card: missing or an image model's card, no; a card that
    cannot be parsed, yes (loading it then says what is wrong with it)."""
    from ..models.cards import _parse_json

    try:
        data = _parse_json(card_file.read_bytes(), str(card_file))
    except OSError:
        return False
    except CardError:
        return True
    return isinstance(data, dict) and data.get("kind") == "text"


def locate_text_model(model: str | os.PathLike[str], *, revision: str = "main") -> LocatedTextModel:
    """Find a text model (module docstring); downloads from the Hub for a repo id.

    Raises:
        ModelNotFound: no text tower there (an image-only model or folder), or a file missing.
        CardError: the card is not a valid text card. ModelUnavailable / ModelCorrupted: as for
            image models.
    """
    path = Path(model)
    if path.is_dir():
        card_file = path / TEXT_CARD
        if not card_file.is_file():
            raise _no_text(str(path))
        return _local(path, card_file)
    if path.is_file():
        if path.name.endswith(".card.json"):
            return _local(path.parent, path)
        if path.suffix == ".onnx":
            card_file = path.with_name(path.stem + ".card.json")
            if not _is_text_card(card_file):  # none, or an image model's card
                raise _no_text(str(path))
            return _local(path.parent, card_file)
        raise _no_text(str(path))
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        from ..hub import download_model_file

        card_file = download_model_file(text, TEXT_CARD, revision=revision)
        card = TextCard.load(card_file)
        onnx_path = download_model_file(text, card.file.filename, revision=revision, sha256=card.file.sha256)
        tok_path = download_model_file(
            text, card.tokenizer.filename, revision=revision, sha256=card.tokenizer.sha256
        )
        return LocatedTextModel(card, onnx_path.parent, onnx_path, tok_path)
    raise _no_text(repr(text))


class TextEmbedder:
    """Strings -> float32 (N, D) unit vectors in the paired image model's projection space.

    Args:
        model: an export folder, text card, ``text_model.onnx`` or Hub repo (see the module doc).
        threads: ONNX Runtime threads (default: the CPUs this process may use).
        batch_size: strings per ONNX Runtime call.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        provider: str | Sequence[str] | None = None,
    ) -> None:
        from ..runtime import OnnxModel
        from .tokenize import TextTokenizer

        if batch_size < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size}")
        located = locate_text_model(model)
        self.card = located.card
        self.model_path = located.onnx_path
        self.batch_size = batch_size
        self.tokenizer = TextTokenizer.from_spec(self.card.tokenizer, located.tokenizer_path.parent)
        self.onnx = OnnxModel(
            located.onnx_path, output_name=self.card.output.name, threads=threads, provider=provider
        )

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return self.card.output.dim

    def __repr__(self) -> str:
        return f"TextEmbedder({self.card.name!r}, family={self.card.family}, dim={self.dim})"

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit-length float32 (N, D) vectors of ``texts`` (one string or a list of them)."""
        items = [texts] if isinstance(texts, str) else list(texts)
        bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
        if bad is not None:
            raise OptionError(f"texts must be strings; text #{bad} is a {type(items[bad]).__name__}")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            ids = self.tokenizer.encode(items[start : start + self.batch_size])
            ids = ids.astype(np.int32 if self.card.input.dtype == "int32" else np.int64, copy=False)
            out[start : start + len(ids)] = self.onnx.run(ids)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    # --- pairing --------------------------------------------------------------------------
    def pair_problem(self, manifest: dict[str, Any]) -> str | None:
        """Why an output (its manifest) cannot be searched with this text model, or None."""
        from ..shards import identity_of

        identity = identity_of(manifest)
        card = manifest.get("card") or {}
        source = card.get("source") or {}
        output = card.get("output") or {}
        if identity.get("pca"):
            return "its vectors were projected by a PCA (--pca), which takes them out of the model's space"
        pair = self.card.pairs_with
        if identity.get("card") in pair.cards:
            return None
        same = (
            source.get("checkpoint") == pair.checkpoint
            and source.get("revision") == pair.revision
            and output.get("kind") == "projection"
            and output.get("dim") == pair.dim
        )
        if same and pair.checkpoint is not None:
            return None
        return (
            f"its image model {identity.get('model')!r} ({output.get('kind')}, {output.get('dim')}-d, from "
            f"{source.get('checkpoint')!r}) is not the image side of text model {self.card.name!r} (from "
            f"{pair.checkpoint!r}, {pair.dim}-d projection)"
        )

    def check_pair(self, manifest: dict[str, Any], where: str = "the output") -> None:
        """Raise :class:`ModelMismatch` unless this text model pairs with the output's vectors."""
        problem = self.pair_problem(manifest)
        if problem is not None:
            raise ModelMismatch(
                f"cannot compare text with {where}: {problem}. Embed the images with the model.onnx "
                f"exported together with this text model (imgbeddings export ... --text), or give the "
                "text model exported with the output's model"
            )


def text_model_for(
    out: str | os.PathLike[str], text_model: str | os.PathLike[str] | None = None
) -> TextEmbedder:
    """The text model for an output: ``text_model`` if given, else the text tower exported beside
    the output's image model (the folder its recorded model file is in); checked to pair."""
    from ..store import read_manifest

    manifest = read_manifest(out)
    if text_model is None:
        recorded = (manifest.get("sources") or {}).get("model_path")
        if not recorded or not (Path(recorded).parent / TEXT_CARD).is_file():
            raise _no_text(f"the folder of {out}'s image model ({recorded or manifest.get('model')!r})")
        text_model = Path(recorded).parent
    embedder = TextEmbedder(text_model)
    embedder.check_pair(manifest, str(out))
    return embedder
