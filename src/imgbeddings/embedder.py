"""The public embedding class: input -> image -> tensor -> ONNX session -> vectors.

>>> from imgbeddings import Embedder
>>> emb = Embedder()                       # built-in patch32_v1, downloaded once and cached
>>> vecs = emb.embed(["a.jpg", "b.png"])   # float32 (2, 768)
>>> res = emb.embed_with_failures(["a.jpg", "missing.jpg"])
>>> res.vectors[res.ok], res.failures      # good rows kept, bad ones listed
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from . import settings
from .errors import CardError, InputError
from .images.decode import DEFAULT_MAX_PIXELS
from .images.preprocess import Mode, Preprocessor
from .models.cards import ModelCard, infer_card
from .models.registry import DEFAULT_MODEL, ResolvedModel, resolve
from .pca import PCAModel, as_pca
from .runtime import OnnxModel

_SINGLE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)


@dataclass(frozen=True)
class Failure:
    """One input that could not be embedded."""

    index: int
    source: str
    error: str
    message: str

    @classmethod
    def from_error(cls, err: InputError) -> Failure:
        return cls(
            index=err.index if err.index is not None else -1,
            source=err.source,
            error=type(err).__name__,
            message=err.reason,
        )


@dataclass
class EmbedResult:
    """Vectors for every input, with failed rows marked.

    ``vectors``: float32 (N, D), NaN rows where an input failed; ``ok``: bool (N,);
    ``failures``: one :class:`Failure` per bad input, in input order.
    """

    vectors: np.ndarray
    ok: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    @property
    def good(self) -> np.ndarray:
        """Only the rows of inputs that worked, (N_ok, D)."""
        return self.vectors[self.ok]


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
        mode: ``"exact"`` (reference preprocessing, default) or ``"fast"`` (reduced-scale
            JPEG decoding, resize before padding; see README for its measured deviation).
        normalize: L2-normalise the output vectors.
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
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        mode: Mode = "exact",
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        resolved: ResolvedModel = resolve(
            model, revision=revision, cache_dir=cache_dir, offline=offline, force_download=force_download
        )
        if card is not None:
            resolved = ResolvedModel(
                resolved.path, card if isinstance(card, ModelCard) else ModelCard.load(card)
            )
        given = resolved.card
        self.model_path = resolved.path
        self.onnx = OnnxModel(
            resolved.path,
            output_name=given.output.name if given else None,
            threads=threads,
            gpu=gpu,
            provider=provider,
            spin=spin,
        )
        inputs, outputs = self.onnx.signature()
        final = given or infer_card(resolved.path, inputs, outputs)
        if given is None:
            self.onnx.output_name = final.output.name
        if preprocess:
            final = final.with_preprocess(**preprocess)
        self._check_card(final, outputs)
        self.card: ModelCard = final
        self.mode: Mode = mode
        self.normalize = normalize
        self.batch_size = batch_size
        self.pca: PCAModel | None = as_pca(pca)
        self.preprocessor = Preprocessor(final.preprocess, mode, max_pixels)
        self.decode_workers = decode_workers or settings.available_cpus()

    def _check_card(self, card: ModelCard, outputs: list[tuple[str, list]]) -> None:
        shape = dict(outputs).get(card.output.name)
        if shape and isinstance(shape[-1], int) and shape[-1] != card.output.dim:
            raise CardError(
                f"card of {self.model_path} says output {card.output.name!r} is {card.output.dim}-d, "
                f"the model's graph says {shape[-1]}"
            )

    # --- introspection -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Width of the vectors ``embed`` returns (after PCA, if any)."""
        return self.pca.out_dim if self.pca is not None else self.card.output.dim

    def __repr__(self) -> str:
        return (
            f"Embedder({self.card.name!r}, kind={self.card.output.kind}, dim={self.dim}, mode={self.mode!r}, "
            f"providers={self.onnx.providers})"
        )

    # --- core -------------------------------------------------------------------------------
    def preprocess(self, inputs: Any) -> np.ndarray:
        """Inputs -> the float32 (N, 3, S, S) tensor the model takes (raises on a bad item)."""
        return self.preprocessor.batch(list(as_items(inputs)))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Model outputs for a preprocessed batch, then PCA and normalisation as configured."""
        vectors = self.onnx.run(pixels)
        return self.postprocess(vectors)

    def postprocess(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the configured PCA and L2 normalisation to raw model outputs."""
        if self.pca is not None:
            vectors = self.pca.transform(vectors)
        if self.normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def _prepare(self, pool: ThreadPoolExecutor, start: int, chunk: list[Any]) -> list[Future]:
        return [pool.submit(self.preprocessor, item, start + i) for i, item in enumerate(chunk)]

    def _iter_batches(
        self, inputs: Any, batch_size: int | None, errors: Literal["raise", "mark"], progress: bool
    ) -> Iterator[tuple[int, np.ndarray, list[Any]]]:
        """Yield (start, rows, outcomes): ``rows`` are vectors of the good items of a chunk,
        ``outcomes`` holds, per item, True (good) or its InputError. Decoding of the next chunk
        runs in threads while the current one is in ONNX Runtime."""
        size = batch_size or self.batch_size
        iterator = iter(as_items(inputs))
        total = len(inputs) if hasattr(inputs, "__len__") and not is_single_input(inputs) else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="img", smoothing=0)
        with ThreadPoolExecutor(
            max_workers=self.decode_workers, thread_name_prefix="imgbeddings-decode"
        ) as pool:
            start = 0
            chunk = list(itertools.islice(iterator, size))
            pending = self._prepare(pool, start, chunk)
            try:
                while chunk:
                    next_chunk = list(itertools.islice(iterator, size))
                    next_pending = self._prepare(pool, start + len(chunk), next_chunk)
                    tensors, outcomes = [], []
                    for fut in pending:
                        try:
                            tensors.append(fut.result())
                            outcomes.append(True)
                        except InputError as exc:
                            if errors == "raise":
                                raise
                            outcomes.append(exc)
                    rows = (
                        self.run(np.stack(tensors)) if tensors else np.empty((0, self.dim), dtype=np.float32)
                    )
                    yield start, rows, outcomes
                    if bar is not None:
                        bar.update(len(chunk))
                    start += len(chunk)
                    chunk, pending = next_chunk, next_pending
            finally:
                for fut in pending:
                    fut.cancel()
                if bar is not None:
                    bar.close()

    def embed(self, inputs: Any, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embed one image or an iterable of images; returns float32 (N, D).

        Inputs: paths (``str``/``Path``), ``bytes``, binary file objects, PIL images, uint8
        arrays (H x W x 3), or any list/tuple/iterable of them. The first bad input raises an
        :class:`~imgbeddings.errors.InputError` naming its index, source and reason; use
        :meth:`embed_with_failures` to keep going past bad inputs.
        """
        parts = [rows for _, rows, _ in self._iter_batches(inputs, batch_size, "raise", progress)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def embed_with_failures(
        self, inputs: Any, *, batch_size: int | None = None, progress: bool = False
    ) -> EmbedResult:
        """Like :meth:`embed`, but bad inputs are marked instead of raised: their rows are NaN,
        ``ok`` is False for them, and ``failures`` says which and why. Nothing computed for the
        good inputs is lost."""
        parts, oks, failures = [], [], []
        for _, rows, outcomes in self._iter_batches(inputs, batch_size, "mark", progress):
            block = np.full((len(outcomes), self.dim), np.nan, dtype=np.float32)
            good = np.array([o is True for o in outcomes], dtype=bool)
            block[good] = rows
            parts.append(block)
            oks.append(good)
            failures.extend(Failure.from_error(o) for o in outcomes if o is not True)
        if not parts:
            return EmbedResult(np.empty((0, self.dim), dtype=np.float32), np.empty(0, dtype=bool), [])
        return EmbedResult(np.concatenate(parts), np.concatenate(oks), failures)
