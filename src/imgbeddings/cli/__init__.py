"""The ``imgbeddings`` command line (Typer): :mod:`.app` (the app, exit codes, ``main``),
:mod:`.embed` (export, embed, models, info) and :mod:`.analysis` (index, search, dedup,
cluster, map, classify, pca), :mod:`.serve` (the HTTP service). The only package that prints or
exits."""

from __future__ import annotations

from . import analysis, embed, serve
from .app import EXIT_CODES, EXIT_PARTIAL, EXIT_USAGE, app, main
from .embed import embed_cmd

__all__ = [
    "EXIT_CODES",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "analysis",
    "app",
    "embed",
    "embed_cmd",
    "main",
    "serve",
]
