"""The public embedding class: input -> image -> tensor -> ONNX session -> vectors.

>>> from imgbeddings import Embedder
>>> emb = Embedder()                       # built-in patch32_v1, downloaded once and cached
>>> vecs = emb.embed(["a.jpg", "b.png"])   # float32 (2, 768)
>>> res = emb.embed_with_failures(["a.jpg", "missing.jpg"])
>>> res.vectors[res.ok], res.failures      # good rows kept, bad ones listed

Every method runs the one streaming engine (:func:`imgbeddings.pipeline.stream`) with decode
threads; ``embed_stream`` / ``embed_files`` run it with decode worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import settings
from .errors import CardError, OptionError
from .images.decode import DEFAULT_MAX_PIXELS
from .images.preprocess import DEFAULT_MODE, Mode, Preprocessor
from .models.cards import ModelCard
from .models.registry import DEFAULT_MODEL, resolve_model
from .pca import PCAModel, as_pca
from .pipeline import Batch, stream
from .runtime import OnnxModel

_SINGLE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)


def is_single_input(inputs: Any) -> bool:
    """True when ``inputs`` is one image rather than a collection of them."""
    if isinstance(inputs, _SINGLE_TYPES):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.ndim in (2, 3)
    return hasattr(inputs, "read")  # a binary file object


def as_items(inputs: Any) -> Iterable[Any]:
    """One image -> a 1-item list; a collection (list, tuple, generator, 4-d array) as it is."""
    if is_single_input(inputs):
        return [inputs]
    if isinstance(inputs, Iterable):
        return inputs
    raise TypeError(f"expected an image or an iterable of images, got {type(inputs).__name__}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


class Embedder:
    """Embeds images with one ONNX model.

    Args:
        model: built-in name (see ``imgbeddings.list_models()``), Hugging Face repo
            (``org/name`` or ``org/name/file.onnx``), or local ``.onnx`` file / exported folder.
        mode: ``"fast"`` (default: JPEGs decoded at reduced scale, large images box-reduced, long
            side kept >= 2 x the input size) or ``"exact"`` (the reference pixels); README,
            "Preprocessing", gives the measured deviation.
        normalize: L2-normalise the output vectors (after PCA, if any).
        batch_size: images per ONNX Runtime call.
        threads: ONNX Runtime intra-op threads (default: CPUs this process may use).
        spin: let idle ONNX Runtime threads busy-wait (fastest alone; the streaming pipeline
            turns it off so decode workers get the CPUs).
        decode_workers: threads decoding images (default: CPUs this process may use).
        gpu, provider: execution provider choice (``gpu=True`` = CUDA, CPU fallback with a warning).
        pca: a :class:`PCAModel`, a saved ``.npz`` path or a fitted sklearn PCA, applied to outputs.
        revision, cache_dir, offline, force_download: hub options for downloaded models.
        max_pixels: refuse larger images (decompression-bomb guard).
        card: a :class:`ModelCard` (or card JSON path) overriding the one found beside the model.
        preprocess: card preprocessing overrides, e.g. ``{"pad_color": (255, 255, 255)}``.
        int8_fastpath: run original-format INT8 files (the built-in models) on ONNX Runtime's
            faster kernels, with identical outputs (:mod:`imgbeddings.int8`; also
            ``IMGBEDDINGS_INT8_FASTPATH=0``). ``emb.onnx.int8_rewrite`` says what was done.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        mode: Mode = DEFAULT_MODE,
        normalize: bool = False,
        batch_size: int = 32,
        threads: int | None = None,
        spin: bool = True,
        decode_workers: int | None = None,
        gpu: bool = False,
        provider: str | list[str] | None = None,
        pca: PCAModel | str | os.PathLike[str] | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
        force_download: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        card: ModelCard | str | Path | None = None,
        preprocess: dict[str, Any] | None = None,
        int8_fastpath: bool = True,
    ) -> None:
        if batch_size < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size}")
        resolved = resolve_model(
            model,
            card=card,
            preprocess=preprocess,
            revision=revision,
            cache_dir=cache_dir,
            offline=offline,
            force_download=force_download,
        )
        self.model_path = resolved.path
        self.card: ModelCard = resolved.card
        self.onnx = OnnxModel(
            resolved.path,
            output_name=self.card.output.name,
            threads=threads,
            gpu=gpu,
            provider=provider,
            spin=spin,
            # only a file that may hold the original uint8 recipe can gain (card precision)
            int8_fastpath=int8_fastpath and self.card.file.precision in (None, "int8-original"),
        )
        self._check_card()
        self.mode: Mode = mode
        self.normalize = normalize
        self.batch_size = batch_size
        try:
            self.pca: PCAModel | None = as_pca(pca)
        except (OSError, ValueError) as exc:
            raise OptionError(f"cannot use PCA {pca}: {exc}") from exc
        if self.pca is not None and self.pca.in_dim != self.card.output.dim:
            raise OptionError(
                f"the PCA takes {self.pca.in_dim}-d vectors, model {self.card.name} gives "
                f"{self.card.output.dim}-d: it was fitted on another model's vectors"
            )
        self.preprocessor = Preprocessor(self.card.preprocess, mode, max_pixels)
        self.decode_workers = decode_workers or settings.available_cpus()

    def _check_card(self) -> None:
        _, outputs = self.onnx.signature()
        shape = dict(outputs).get(self.card.output.name)
        if shape and isinstance(shape[-1], int) and shape[-1] != self.card.output.dim:
            raise CardError(
                f"card of {self.model_path} says output {self.card.output.name!r} is "
                f"{self.card.output.dim}-d, the model's graph says {shape[-1]}"
            )

    # --- identity ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Width of the vectors ``embed`` returns (after PCA, if any)."""
        return self.pca.out_dim if self.pca is not None else self.card.output.dim

    @property
    def unit_length(self) -> bool:
        """Whether returned vectors have unit length: ``normalize=True``, or a model whose card says
        it returns unit vectors (``output.normalized``) with no PCA after it."""
        return bool(self.normalize or (self.card.output.normalized and self.pca is None))

    def identity(self) -> dict[str, Any]:
        """Everything that changes the vectors this embedder returns: the model card (its
        fingerprint covers the weights' checksum, preprocessing and output), the preprocessing
        mode, L2 normalisation and PCA. Outputs record it and refuse vectors made otherwise."""
        return {
            "model": self.card.name,
            "card": self.card.fingerprint(),
            "mode": self.mode,
            "normalize": self.unit_length,
            "pca": self.pca.fingerprint() if self.pca is not None else None,
            "dim": self.dim,
        }

    def fingerprint(self) -> str:
        """A short hash of :meth:`identity`: equal fingerprints mean comparable vectors."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        extra = (", normalize=True" if self.normalize else "") + (
            f", pca={self.pca.in_dim}->{self.pca.out_dim}" if self.pca is not None else ""
        )
        return (
            f"Embedder({self.card.name!r}, kind={self.card.output.kind}, dim={self.dim}, mode={self.mode!r}"
            f"{extra}, providers={self.onnx.providers})"
        )

    # --- core -------------------------------------------------------------------------------
    def preprocess(self, inputs: Any) -> np.ndarray:
        """Inputs -> the float32 (N, 3, S, S) tensor the model takes (raises on a bad item)."""
        return self.preprocessor.batch(list(as_items(inputs)))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Model outputs for a preprocessed batch, then PCA and normalisation as configured."""
        return self.postprocess(self.onnx.run(pixels))

    def postprocess(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the configured PCA and L2 normalisation to raw model outputs."""
        if self.pca is not None:
            vectors = self.pca.transform(vectors)
        if self.normalize and not (self.card.output.normalized and self.pca is None):
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def iter_batches(
        self, inputs: Any, *, batch_size: int | None = None, progress: bool = False
    ) -> Iterator[Batch]:
        """Embed lazily: :class:`~imgbeddings.pipeline.Batch` objects in input order, decoding
        in threads ahead of inference. Bad inputs are failures in their batch, never raised."""
        total = len(inputs) if hasattr(inputs, "__len__") and not is_single_input(inputs) else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="img", smoothing=0)
        try:
            for batch in stream(self, as_items(inputs), backend="threads", batch_size=batch_size):
                yield batch
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()

    def embed(self, inputs: Any, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embed one image or an iterable of images; returns float32 (N, D).

        Inputs: paths (``str``/``Path``), ``bytes``, binary file objects, PIL images, uint8
        arrays (H x W x 3), or any list/tuple/iterable of them. The first bad input raises an
        :class:`~imgbeddings.errors.InputError` naming its index, source and reason; use
        :meth:`embed_with_failures` to keep going past bad inputs.
        """
        parts = []
        for batch in self.iter_batches(inputs, batch_size=batch_size, progress=progress):
            if batch.failures:
                raise batch.failures[0].to_error()
            parts.append(batch.vectors)
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def embed_with_failures(
        self, inputs: Any, *, batch_size: int | None = None, progress: bool = False
    ) -> Batch:
        """Like :meth:`embed`, but bad inputs are marked instead of raised: their rows are NaN,
        ``ok`` is False for them, and ``failures`` (:class:`~imgbeddings.errors.Failure`) says
        which and why. Nothing computed for the good inputs is lost."""
        batches = list(self.iter_batches(inputs, batch_size=batch_size, progress=progress))
        return Batch.concat(batches, self.dim)
