"""A model card's preprocessing as one callable: input item -> float32 (3, S, S) tensor.

Two modes:

- ``exact``: the reference recipe. For ``pad`` cards this is the original imgbeddings /
  ``transformers.CLIPImageProcessor(do_center_crop=False)`` on a square-padded image; pixel
  tensors match the reference within 1e-5 (tested). Full-resolution decoding.
- ``fast``: JPEGs are decoded at reduced scale by libjpeg, and other large images are first
  shrunk by an integer box filter (``Image.reduce``), in both cases keeping the long side
  >= 2 x size; then the exact recipe runs on the smaller image. Deviation from ``exact`` is
  measured in the README and tested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..models.cards import PreprocessSpec
from . import ops
from .decode import DEFAULT_MAX_PIXELS, load_image

Mode = Literal["exact", "fast"]
MODES = ("exact", "fast")
#: The one default for the library, ``embed_files`` and the CLI (the original API pins
#: ``exact``, since it promises 0.1.0's vectors). Why fast: README, "Preprocessing".
DEFAULT_MODE: Mode = "fast"
#: Long side / short side above which an image's vector is less reliable: CLIP-family models
#: saw square images, so a wider or taller one is padded to a square (or cropped) and the
#: subject shrinks to a strip (the original imgbeddings' Design notes name 3:1).
EXTREME_ASPECT = 3.0


class Preprocessor:
    """Turns inputs into model-ready tensors according to a :class:`PreprocessSpec`.

    Thread-safe: one instance can be shared by decoding threads.
    """

    def __init__(
        self, spec: PreprocessSpec, mode: Mode = DEFAULT_MODE, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.spec = spec
        self.mode = mode
        self.max_pixels = max_pixels
        self._resample = ops.RESAMPLE[spec.interpolation]
        self._lut = ops.standardize_lut(spec.rescale, spec.mean, spec.std)

    @property
    def size(self) -> int:
        """Side of the square input tensor."""
        return self.spec.size

    def load(
        self, item: Any, index: int | None = None, reserve: Callable[[int], None] | None = None
    ) -> Image.Image:
        """Decode one item to RGB (draft-decoding JPEGs in fast mode). Raises InputError.
        ``reserve``: see :func:`~imgbeddings.images.decode.load_image`."""
        return load_image(
            item,
            max_pixels=self.max_pixels,
            alpha_background=self.spec.alpha_background,
            exif_transpose=self.spec.exif_transpose,
            draft_long_side=2 * self.spec.size if self.mode == "fast" else None,
            index=index,
            reserve=reserve,
        )

    def geometry(self, img: Image.Image) -> Image.Image:
        """Resize/pad/crop an RGB image to ``size`` x ``size`` as the card says."""
        spec, size, rs = self.spec, self.spec.size, self._resample
        if self.mode == "fast":
            img = ops.reduce_to(img, 2 * size)
        if spec.resize_mode == "pad":
            return ops.pad_resize_exact(img, size, spec.pad_color, rs)
        if spec.resize_mode == "crop":
            return ops.resize_shortest_crop(img, size, rs)
        return ops.squash(img, size, rs)

    def tensor(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """An RGB image (any size) -> normalised float32 (3, size, size)."""
        return ops.to_chw_float(self.geometry(img), self._lut, out)

    def __call__(self, item: Any, index: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Decode and preprocess one item. Raises InputError subclasses naming the item."""
        return self.tensor(self.load(item, index), out)

    def batch(self, items: Sequence[Any]) -> np.ndarray:
        """Preprocess a sequence into a float32 (N, 3, size, size) batch (raises on a bad item)."""
        out = np.empty((len(items), 3, self.size, self.size), dtype=np.float32)
        for i, item in enumerate(items):
            self(item, i, out[i])
        return out
