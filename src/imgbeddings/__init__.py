"""imgbeddings: image embeddings from CLIP-family vision models on ONNX Runtime.

Public names: :class:`imgbeddings` (the original 0.1.0 API), :class:`Embedder` (the modern
API), :func:`embed_stream` and :func:`embed_files` (large collections), :class:`Batch` (what
they return), :func:`load` (read an output folder), :class:`ModelCard`, :func:`list_models`,
:class:`PCAModel`, :func:`fit_pca`, :class:`TextEmbedder` (text queries, opt-in),
:class:`Failure` and the error classes of
:mod:`imgbeddings.errors`.

Names are imported on first use, so ``import imgbeddings`` (and each decode worker process)
stays cheap: ONNX Runtime loads only when a model does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

_LAZY = {
    "imgbeddings": "legacy",
    "Embedder": "embedder",
    "embed_stream": "job",
    "Batch": "pipeline",
    "embed_files": "job",
    "load": "store",
    "iter_load": "store",
    "ModelCard": "models.cards",
    "list_models": "models.registry",
    "PCAModel": "pca",
    "fit_pca": "pca",
    "TextEmbedder": "text.embedder",
    "MissingExtra": "errors",
}
_ERRORS = (
    "AccuracyGateFailed CardError ExportError ImageDecodeError ImageNotFound ImageTooLarge "
    "Failure ImgbeddingsError InputError ModelCorrupted ModelError ModelMismatch ModelNotFound "
    "ModelUnavailable NonFiniteOutput OptionError OutputError OutputLocked ProviderError "
    "UnsupportedArchitecture WorkerCrashed"
).split()
_LAZY.update(dict.fromkeys(_ERRORS, "errors"))

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imgbeddings' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from .embedder import Embedder  # noqa: F401
    from .errors import *  # noqa: F403
    from .job import embed_files, embed_stream  # noqa: F401
    from .legacy import imgbeddings  # noqa: F401
    from .models.cards import ModelCard  # noqa: F401
    from .models.registry import list_models  # noqa: F401
    from .pca import PCAModel, fit_pca  # noqa: F401
    from .pipeline import Batch  # noqa: F401
    from .store import iter_load, load  # noqa: F401
    from .text.embedder import TextEmbedder  # noqa: F401


# The original's module path ``imgbeddings.imgbeddings`` is a submodule named like the class.
# Importing a submodule binds it as a package attribute, which would shadow the lazy class for
# every later ``from imgbeddings import imgbeddings``. So import it now (it is tiny and loads
# nothing), then drop that binding: later imports of it find it in sys.modules and do not
# bind it again, and the name goes back to ``__getattr__`` (the class, as in the original).
importlib.import_module(".imgbeddings", __name__)
globals().pop("imgbeddings", None)
