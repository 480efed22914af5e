"""Strings -> token ids, exactly as the checkpoint's transformers tokenizer makes them, without torch
or transformers at run time.

:class:`TextTokenizer` reads the tokenizer file a text card names and follows the card's
:class:`~imgbeddings.text.card.TokenizerSpec`: every string becomes one row of ``context_length``
int64 ids, truncated the way transformers truncates (the end token kept) and padded on the right
with ``pad_id``. ``spec.library`` says which library reads the file:

``tokenizers`` (CLIP, ``clean`` ``none``)
    ``tokenizer.json`` is the checkpoint's own fast tokenizer (normaliser, pre-tokeniser, BPE,
    post-processor), run by the ``tokenizers`` library with its special tokens and truncation.

``sentencepiece`` (SigLIP, ``clean`` ``siglip``)
    ``spiece.model`` is the checkpoint's own SentencePiece model, run by the ``sentencepiece``
    library (as transformers' ``SiglipTokenizer`` runs it), with the Python that ``SiglipTokenizer``
    (transformers 5) runs around it, here in short. Per string: ``"▁"`` characters become spaces
    and a ``"▁"`` is put in front; the string is split around the special tokens (the model's end
    and unknown pieces and the piece of ``pad_id``: ``</s>``, ``<unk>``), stripping the whitespace
    beside them; every other part is canonicalised (:func:`canonicalize_siglip`), encoded behind
    the unknown token's text, whose own pieces are then dropped; a leading lone ``"▁"`` before a
    special token is dropped; the ids are truncated to leave room for the end token, which is
    added unless they already end with it. ``sentencepiece`` is imported only on this path.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..errors import CardError, MissingExtra, ModelCorrupted, OptionError
from .card import TokenizerSpec

SPIECE_UNDERLINE = "▁"
#: The ``clean`` each ``library`` goes with.
_CLEAN = {"tokenizers": "none", "sentencepiece": "siglip"}
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def canonicalize_siglip(text: str, *, lowercase: bool = True) -> str:
    """transformers' ``SiglipTokenizer.canonicalize_text`` (from big_vision): lowercase (whole
    string, ``str.lower``), drop ASCII punctuation, whitespace runs -> one space, strip."""
    if lowercase:
        text = text.lower()
    text = text.translate(_PUNCTUATION)
    text = _WHITESPACE.sub(" ", text)
    return text.strip()


class _Siglip:
    """``SiglipTokenizer``'s Python around a ``SentencePieceProcessor`` (module docstring)."""

    def __init__(self, sp: Any, spec: TokenizerSpec, where: str) -> None:
        size = sp.get_piece_size()
        if not 0 <= sp.eos_id() < size or not 0 <= spec.pad_id < size:
            raise CardError(f"{where}: the SentencePiece model has no end piece, or no piece {spec.pad_id}")
        self.sp, self.lowercase, self.eos_id = sp, spec.lowercase, sp.eos_id()
        self.unk = sp.id_to_piece(sp.unk_id())
        self.specials = {sp.id_to_piece(i): i for i in (self.eos_id, sp.unk_id(), spec.pad_id)}
        alternatives = sorted(self.specials, key=len, reverse=True)
        self.split_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self.unk_length = len(sp.encode(self.unk))

    def _pieces(self, part: str) -> list[str]:
        tokens = self.sp.encode(self.unk + canonicalize_siglip(part, lowercase=self.lowercase), out_type=str)
        return tokens[self.unk_length :] if len(tokens) >= self.unk_length else tokens

    def encode(self, text: str, length: int) -> list[int]:
        parts = self.split_re.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        pieces: list[str] = []
        for i, part in enumerate(parts):  # odd i: a special token; strip whitespace beside them
            if i % 2 == 0:
                part = part.lstrip() if i > 0 else part
                part = part.rstrip() if i < len(parts) - 1 else part
            if part:
                pieces += [part] if i % 2 else self._pieces(part)
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.specials:
            pieces = pieces[1:]
        ids = [self.specials[p] if p in self.specials else self.sp.piece_to_id(p) for p in pieces]
        ids = ids[: length - 1] if len(ids) + 1 > length else ids  # room for the end token
        return ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id]


class TextTokenizer:
    """Strings -> int64 ids (N, context_length), as the checkpoint's transformers tokenizer gives
    them with ``padding="max_length", truncation=True, max_length=context_length``."""

    def __init__(self, backend: Any, spec: TokenizerSpec, where: str = "") -> None:
        """``backend``: a ``tokenizers.Tokenizer`` (library ``tokenizers``) or a
        ``sentencepiece.SentencePieceProcessor`` (library ``sentencepiece``)."""
        self.spec = spec
        self.path = where
        where = where or spec.filename
        _check_library(spec, where)
        if spec.library == "sentencepiece":
            self._tokenizer = None
            self._siglip: _Siglip | None = _Siglip(backend, spec, where)
        else:
            self._tokenizer, self._siglip = backend, None
            backend.no_padding()
            backend.enable_truncation(max_length=spec.context_length)

    @classmethod
    def from_spec(cls, spec: TokenizerSpec, folder: str | Path) -> TextTokenizer:
        """Load ``folder / spec.filename`` with ``spec.library`` (checking its sha256 when the spec
        has one).

        Raises:
            CardError: the file is missing, unreadable or not a file of ``spec.library``, or
                ``spec.clean`` does not go with ``spec.library``.
            ModelCorrupted: its sha256 differs from ``spec.sha256``.
            MissingExtra: ``spec.library`` is ``sentencepiece`` and it is not installed.
        """
        path = Path(folder) / spec.filename
        if not path.is_file():
            raise CardError(
                f"tokenizer file {path} is missing: the text card names {spec.filename!r}, which "
                "must lie beside it. Copy it from the export folder, or export the model again."
            )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CardError(f"cannot read tokenizer file {path}: {exc}") from exc
        _check_library(spec, str(path))
        if spec.sha256 is not None:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != spec.sha256:
                raise ModelCorrupted(str(path), spec.sha256, actual)
        if spec.library == "sentencepiece":
            try:
                import sentencepiece
            except ImportError as exc:
                raise MissingExtra(
                    f"the SigLIP text tokenizer ({path}) needs sentencepiece, which is not installed: "
                    "pip install sentencepiece"
                ) from exc
            try:
                backend: Any = sentencepiece.SentencePieceProcessor(model_proto=raw)
            except Exception as exc:  # RuntimeError, or a bad-argument error of the protobuf parse
                raise CardError(f"tokenizer file {path} is not a SentencePiece model: {exc}") from exc
        else:
            try:
                backend = Tokenizer.from_str(raw.decode("utf-8"))
            except Exception as exc:  # UnicodeDecodeError, tokenizers' own
                raise CardError(f"tokenizer file {path} is not a tokenizers JSON file: {exc}") from exc
        return cls(backend, spec, str(path))

    @property
    def context_length(self) -> int:
        return self.spec.context_length

    @property
    def pad_id(self) -> int:
        return self.spec.pad_id

    def __repr__(self) -> str:
        return (
            f"TextTokenizer({self.path or self.spec.filename!r}, library={self.spec.library!r}, "
            f"clean={self.spec.clean!r}, context_length={self.context_length})"
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        """int64 ids (len(texts), context_length): special tokens added, truncated keeping the end
        token where transformers keeps it, right-padded with ``pad_id``.

        Raises:
            OptionError: ``texts`` is a bare string, or one of its items is not a string (the
                message names its index).
        """
        if isinstance(texts, (str, bytes)):
            raise OptionError("texts must be a list of strings, got a single string: wrap it in a list")
        items = list(texts)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise OptionError(f"text #{index} is a {type(item).__name__}, not a string: {item!r:.80}")
        length = self.context_length
        out = np.full((len(items), length), self.pad_id, dtype=np.int64)
        if not items:
            return out
        if self._siglip is not None:
            rows = [self._siglip.encode(text, length) for text in items]
        else:
            rows = [e.ids for e in self._tokenizer.encode_batch(items, add_special_tokens=True)]
        for r, ids in enumerate(rows):
            ids = ids[:length]
            out[r, : len(ids)] = ids
        return out


def _check_library(spec: TokenizerSpec, where: str) -> None:
    if _CLEAN[spec.library] != spec.clean:
        raise CardError(
            f"{where}: tokenizer.clean {spec.clean!r} does not go with library {spec.library!r} "
            f"(expected clean {_CLEAN[spec.library]!r}): export the model again"
        )
