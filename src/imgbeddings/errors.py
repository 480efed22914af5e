"""Every exception imgbeddings raises, in one place.

All share the root :class:`ImgbeddingsError`. Where a caller would naturally catch a
standard-library class, the error inherits it too (``ImageNotFound`` is a
``FileNotFoundError``, ``ModelUnavailable`` a ``ConnectionError``), so existing
``except`` clauses keep working. Errors keep their constructor arguments in ``args`` so
they pickle across process boundaries (worker pools), and every message says what
failed, on which item, and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class WorkerCrashed(InputError):
    """The decode worker process died or hung on this input (the worker was replaced)."""


class NonFiniteOutput(InputError):
    """The model returned NaN or inf for this input, so its vector is not stored: the model is
    broken, or its card gives it values it cannot take (check the card's mean, std and rescale)."""


@dataclass(frozen=True)
class Failure:
    """One input that could not be embedded: the same record from the decode worker to the
    stored output row and back (``embed_with_failures``, ``embed_stream``, ``embed_files`` and
    ``load()`` all return these).

    Attributes:
        index: the input's position in the caller's input (``None`` for rows read from an output).
        source: the input (its path, or a short description of an in-memory item).
        error: the error class name, one of the :class:`InputError` subclasses.
        message: why it failed, in words.
    """

    index: int | None
    source: str
    error: str
    message: str

    @classmethod
    def from_error(cls, err: InputError, index: int | None = None) -> Failure:
        """The record of an :class:`InputError` (``index`` overrides the error's own)."""
        return cls(err.index if index is None else index, err.source, type(err).__name__, err.reason)

    def to_error(self) -> InputError:
        """The error as an exception, to raise (the class named by ``error``, else InputError)."""
        cls = globals().get(self.error)
        if not (isinstance(cls, type) and issubclass(cls, InputError)):
            cls = InputError
        return cls(self.source, self.message, self.index)

    def __str__(self) -> str:
        return f"{self.source}: {self.error}: {self.message}"


# --- options ---------------------------------------------------------------------------


class StoreUnavailable(ImgbeddingsError, ConnectionError):
    """A URI's store cannot be listed or asked about an object at all (no credentials, an
    unreachable endpoint, a prefix one may not list): the job stops before it starts. A
    single object that cannot be read is that input's failure instead.

    Attributes:
        uri: the URI being listed or stat'ed.
        reason: what the store's library said.
    """

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(uri, reason)
        self.uri = uri
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason} (check the store's credentials and endpoint: README, URIs)"


class OptionError(ImgbeddingsError, ValueError):
    """An option's value cannot work: out of range, or not fitting the model or the output
    (e.g. a PCA fitted on vectors of another width). The CLI reports it as a usage error."""


class MissingExtra(ImgbeddingsError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it
    (``pip install 'imgbeddings[analysis]'``)."""


# --- models ----------------------------------------------------------------------------


class ModelError(ImgbeddingsError):
    """Something is wrong with a model: not found, unavailable, corrupted, bad card."""


class ModelNotFound(ModelError, LookupError):
    """A model name is neither built in, nor a local path, nor a Hugging Face repo."""


class ModelUnavailable(ModelError, ConnectionError):
    """A model file (or a whole checkpoint) could not be had from the Hugging Face Hub: offline
    mode without a cached copy, hub unreachable, repo/revision/file not found, access denied.

    Attributes:
        reason: why it failed and the generic fix, in words, without a final full stop (e.g.
            "offline mode is on (...) and the file is not in the cache. Unset HF_HUB_OFFLINE and
            run once with network access to download it").
        repo_id: the Hub repository.
        filename: the file that was asked for; ``""`` when a whole checkpoint was (``export``).
        revision: the branch, tag or commit asked for.
        url: where to download it by hand: the file's download URL, or for a whole checkpoint
            the repository's file listing at that revision; ``""`` if unknown.

    ``str()`` is written for Python callers (it names ``Embedder``/``model_path``); a command
    line builds its own advice from the attributes.
    """

    def __init__(
        self, reason: str, repo_id: str = "", filename: str = "", revision: str = "", url: str = ""
    ) -> None:
        super().__init__(reason, repo_id, filename, revision, url)
        self.reason = reason
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision
        self.url = url

    def __str__(self) -> str:
        reason = self.reason.rstrip(". ")
        if not self.filename:
            fetch = f"download its files from {self.url}" if self.url else "download its files"
            return (
                f"cannot get checkpoint {self.repo_id!r} (revision {self.revision!r}) from the Hugging "
                f"Face Hub: {reason}. To use a local copy, {fetch} into a folder and pass the "
                "folder's path instead of the repo id."
            )
        local = "/path/to/" + self.filename.rsplit("/", 1)[-1]
        fetch = f"download {self.url} and pass its path" if self.url else "pass the path of a local copy"
        return (
            f"cannot get model file {self.filename!r} from Hugging Face repo {self.repo_id!r} "
            f"(revision {self.revision!r}): {reason}. To use a local copy, {fetch}: "
            f'Embedder("{local}") or imgbeddings(model_path="{local}").'
        )


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
    """The output folder holds vectors made another way (model, mode, normalisation or PCA):
    appending would mix vectors that are not comparable."""


class OutputLocked(OutputError):
    """Another run is writing the output folder (it holds the folder's lock): two writers at
    once would lose rows, so the second is refused, at once or after waiting ``waited`` seconds.

    Attributes: ``path`` (the output folder), ``pid``, ``host`` and ``started`` of the run that
    holds it (as it recorded them; ``pid`` None if not recorded yet), ``waited`` (seconds, or None).
    """

    def __init__(
        self,
        path: str,
        pid: int | None = None,
        host: str = "",
        started: str = "",
        waited: float | None = None,
    ) -> None:
        super().__init__(path, pid, host, started, waited)
        self.path = path
        self.pid = pid
        self.host = host
        self.started = started
        self.waited = waited

    def __str__(self) -> str:
        who = f"PID {self.pid}" if self.pid is not None else "a process that has not recorded its PID yet"
        who += f" on {self.host}" if self.host else ""
        who += f", started {self.started}" if self.started else ""
        still = f" still, after waiting {self.waited:g} s" if self.waited else ""
        return (
            f"{self.path} is being written by another imgbeddings run{still} ({who}); two runs writing "
            "one output at once would lose rows. Let that run finish, or wait for it "
            "(--wait, or wait= in Python)."
        )


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
