"""The optional libraries of the ``[analysis]`` extra, imported on first use.

Each getter returns the module, or raises :class:`~imgbeddings.errors.MissingExtra` naming
what needed it and the line that installs it (the CLI prints that one line).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingExtra

INSTALL = "pip install 'imgbeddings[analysis]'"


def _require(module: str, package: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: {INSTALL}") from exc


def faiss(purpose: str = "a nearest-neighbour index") -> Any:
    """The ``faiss`` module (faiss-cpu)."""
    return _require("faiss", "faiss-cpu", purpose)


def umap(purpose: str = "a map") -> Any:
    """The ``umap`` module (umap-learn)."""
    return _require("umap", "umap-learn", purpose)


def matplotlib(purpose: str = "a map") -> Any:
    """The ``matplotlib`` package (its submodules are imported by the caller afterwards)."""
    return _require("matplotlib", "matplotlib", purpose)
