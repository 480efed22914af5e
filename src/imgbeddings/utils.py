"""The original 0.1.0 module ``imgbeddings.utils``, kept as thin aliases so that its example
notebooks and code written against it keep working:

>>> from imgbeddings.utils import square_pad
>>> square_pad(image, background_color=None)   # pad with the image's "dominant" colour

The image helpers are those of :mod:`imgbeddings.legacy`; sessions come from
:mod:`imgbeddings.runtime`. New code should use :class:`imgbeddings.Embedder`.
"""

from __future__ import annotations

import os
from typing import Any

from .legacy import get_dominant_color, square_pad, symmetric_img_aug


def create_session_for_provider(
    model_path: str | os.PathLike[str], provider: str | None = None, gpu: bool = False
) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``model_path``, as the original built one.

    ``provider`` (an execution provider name) wins; else ``gpu=True`` asks for CUDA and
    ``False`` for the CPU. Unlike the original, which disabled the fallback, a provider this
    install lacks falls back to the CPU with a ``RuntimeWarning`` (see
    :func:`imgbeddings.runtime.select_providers`); an unknown name raises ``ProviderError``
    and an unloadable file ``ModelError``.
    """
    from .runtime import OnnxModel

    return OnnxModel(model_path, provider=provider or None, gpu=gpu).session


__all__ = ["create_session_for_provider", "get_dominant_color", "square_pad", "symmetric_img_aug"]
