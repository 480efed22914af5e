"""Every exception imgbeddings raises, in one place.

All share the root :class:`ImgbeddingsError`. Where a caller would naturally catch a
standard-library class, the error inherits it too (``ImageNotFound`` is a
``FileNotFoundError``, ``ModelUnavailable`` a ``ConnectionError``), so existing
``except`` clauses keep working. Errors keep their constructor arguments in ``args`` so
they pickle across process boundaries (worker pools), and every message says what
failed, on which item, and how to fix it.
"""

from __future__ import annotations

from typing import Any


class ImgbeddingsError(Exception):
    """Root of every imgbeddings error."""


# --- bad input -------------------------------------------------------------------------


class InputError(ImgbeddingsError, ValueError):
    """An input item could not be turned into an image.

    Attributes:
        index: position of the item in the caller's input (``None`` for a single item).
        source: a short description of the item (its path, or its type).
        reason: why it failed, in words.
    """

    def __init__(self, source: str, reason: str, index: int | None = None) -> None:
        super().__init__(source, reason, index)
        self.source = source
        self.reason = reason
        self.index = index

    def __str__(self) -> str:
        where = f"input #{self.index} " if self.index is not None else "input "
        return f"{where}({self.source}): {self.reason}"

    def with_index(self, index: int) -> InputError:
        """The same error, now naming the item's position in a batch."""
        err = type(self)(self.source, self.reason, index)
        err.__cause__ = self.__cause__
        return err


class ImageNotFound(InputError, FileNotFoundError):
    """The path does not exist, or is not a regular file."""


class ImageDecodeError(InputError):
    """The data is not an image Pillow can read, or it is truncated/corrupt."""


class ImageTooLarge(InputError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


# --- models ----------------------------------------------------------------------------


class ModelError(ImgbeddingsError):
    """Something is wrong with a model: not found, unavailable, corrupted, bad card."""


class ModelNotFound(ModelError, LookupError):
    """A model name is neither built in, nor a local path, nor a Hugging Face repo."""


class ModelUnavailable(ModelError, ConnectionError):
    """A model file could not be downloaded (offline mode, unreachable hub, missing file).

    Attributes: ``repo_id``, ``filename``, ``revision``.
    """

    def __init__(self, message: str, repo_id: str = "", filename: str = "", revision: str = "") -> None:
        super().__init__(message, repo_id, filename, revision)
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision

    def __str__(self) -> str:
        return str(self.args[0])


class ModelCorrupted(ModelError):
    """A model file's checksum does not match what it should be (truncated or altered).

    Attributes: ``path``, ``expected`` and ``actual`` (hex digests), ``algorithm``.
    """

    def __init__(self, path: str, expected: str, actual: str, algorithm: str = "sha256") -> None:
        super().__init__(path, expected, actual, algorithm)
        self.path = path
        self.expected = expected
        self.actual = actual
        self.algorithm = algorithm

    def __str__(self) -> str:
        return (
            f"model file {self.path} is corrupted or truncated: {self.algorithm} is "
            f"{self.actual}, expected {self.expected}. Delete it (or run with "
            f"force_download=True) to fetch it again."
        )


class CardError(ModelError, ValueError):
    """A model card is missing, malformed, or cannot be inferred unambiguously."""


# --- runtime ---------------------------------------------------------------------------


class ProviderError(ImgbeddingsError, ValueError):
    """An ONNX Runtime execution provider was asked for that this install does not have."""


# --- output ----------------------------------------------------------------------------


class OutputError(ImgbeddingsError):
    """An output folder cannot be written or read as asked."""


class ModelMismatch(OutputError):
    """The output folder holds vectors of another model or preprocessing mode."""


# --- export ----------------------------------------------------------------------------


class ExportError(ImgbeddingsError):
    """A model could not be exported (missing extra, bad checkpoint, bad option)."""


class UnsupportedArchitecture(ExportError, ValueError):
    """The checkpoint's architecture is not one the exporter handles."""


class AccuracyGateFailed(ExportError):
    """An exported model's outputs are too far from the reference to be trusted."""


def describe(obj: Any) -> str:
    """A short, safe description of an input item for error messages."""
    import os

    if isinstance(obj, (str, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{type(obj).__name__} of {len(obj)} bytes>"
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return f"<{type(obj).__name__} {name}>"
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"<{type(obj).__name__} shape={tuple(shape)} dtype={getattr(obj, 'dtype', '?')}>"
    return f"<{type(obj).__name__}>"
