"""imgbeddings: image embeddings from CLIP-family vision models on ONNX Runtime.

Public names: :class:`imgbeddings` (the original 0.1.0 API), :class:`Embedder` (the modern
API), :class:`EmbedResult`, :class:`ModelCard`, :func:`list_models`, :class:`PCAModel`,
:func:`fit_pca`, and the error classes in :mod:`imgbeddings.errors`.
"""

from .embedder import Embedder, EmbedResult, Failure
from .errors import (
    CardError,
    ImageDecodeError,
    ImageNotFound,
    ImageTooLarge,
    ImgbeddingsError,
    InputError,
    ModelCorrupted,
    ModelError,
    ModelNotFound,
    ModelUnavailable,
    ProviderError,
)
from .legacy import imgbeddings
from .models.cards import ModelCard
from .models.registry import list_models
from .pca import PCAModel, fit_pca

__version__ = "0.2.0.dev0"

__all__ = [
    "CardError",
    "EmbedResult",
    "Embedder",
    "Failure",
    "ImageDecodeError",
    "ImageNotFound",
    "ImageTooLarge",
    "ImgbeddingsError",
    "InputError",
    "ModelCard",
    "ModelCorrupted",
    "ModelError",
    "ModelNotFound",
    "ModelUnavailable",
    "PCAModel",
    "ProviderError",
    "__version__",
    "fit_pca",
    "imgbeddings",
    "list_models",
]
