"""The original 0.1.0 module path ``imgbeddings.imgbeddings``, kept for code written against it:

>>> from imgbeddings.imgbeddings import imgbeddings

Names resolve on first use (from :mod:`imgbeddings.legacy` and :mod:`imgbeddings.utils`), so
this module costs nothing to import: the package imports it eagerly, which keeps
``from imgbeddings import imgbeddings`` giving the class rather than this module (see the
end of ``imgbeddings/__init__.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it; the names the original module exposed
_NAMES = {
    "imgbeddings": "legacy",
    "square_pad": "legacy",
    "symmetric_img_aug": "legacy",
    "create_session_for_provider": "utils",
}

__all__ = ["imgbeddings"]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'imgbeddings.imgbeddings' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_NAMES)


if TYPE_CHECKING:
    from .legacy import imgbeddings, square_pad, symmetric_img_aug  # noqa: F401
    from .utils import create_session_for_provider  # noqa: F401
