"""An Embedder that makes vectors comparable with an output's: for query images.

An output records what made its vectors (``Embedder.identity()``: model card, mode,
normalisation, PCA) and where the model and PCA came from (``sources`` in its manifest).
:func:`embedder_for` rebuilds that embedder and refuses one whose vectors would differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..embedder import Embedder
from ..errors import ModelMismatch, OptionError
from ..shards import identity_of
from ..store import describe_mismatch, read_manifest


def embedder_for(
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    pca: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Embedder:
    """The :class:`Embedder` whose vectors are comparable with the output ``out``'s.

    ``model`` / ``pca`` default to those the output records (the model file used, else the name
    it was given); pass them when the output was made elsewhere. ``options`` go to the Embedder
    (threads, batch_size, ...); mode and normalisation always come from the output.

    Raises:
        ModelMismatch: the embedder's identity differs from the output's (named part by part).
        OptionError: the output used a PCA that is not where it was, and none was given.
    """
    manifest = read_manifest(out)
    identity = identity_of(manifest)
    sources = manifest.get("sources") or {}
    if model is None:
        recorded = sources.get("model_path")
        model = recorded if recorded and Path(recorded).is_file() else sources.get("model")
    if model is None:
        model = manifest.get("model")  # a built-in name, for outputs made before sources were kept
    if pca is None and identity.get("pca"):
        pca = sources.get("pca")
        if not pca or not Path(pca).is_file():
            raise OptionError(
                f"{out} was made with a PCA ({identity['pca']}) that is not at {pca!r} any more: "
                "pass the PCA file (pca=, --pca)"
            )
    embedder = Embedder(
        model,
        mode=identity.get("mode", "fast"),
        normalize=bool(identity.get("normalize")),
        pca=pca,
        **options,
    )
    if embedder.identity() != identity:
        raise ModelMismatch(
            describe_mismatch(Path(out), identity, embedder.identity())
            + " Pass the model (and PCA) the output was made with."
        )
    return embedder
