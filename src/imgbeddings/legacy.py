"""The original imgbeddings 0.1.0 API, kept working as its README documented it.

>>> from imgbeddings import imgbeddings
>>> ibed = imgbeddings()                      # patch32 model, 768-d
>>> ibed.to_embeddings("cat.jpg").shape       # (1, 768)

Same constructor arguments and methods as 0.1.0, built on :class:`~imgbeddings.Embedder`
(exact preprocessing mode, so vectors match the original's). Fixed on the way: no
``transformers`` or network call at construction; ``patch_size=14`` works; ``gpu=True`` /
``provider=`` fall back to CPU with a warning instead of failing; saved PCAs reload on any
scikit-learn; a tuple of images is a batch. Deliberate differences: EXIF orientation is
applied and transparent pixels are composited onto white (the original showed whatever RGB
hid under alpha 0); set ``preprocess={"exif_transpose": False}`` on :class:`Embedder` to
turn the former off.

The original's module paths work too: ``imgbeddings.imgbeddings.imgbeddings`` (the class) and
``imgbeddings.utils`` (``square_pad``, ``symmetric_img_aug``, ``get_dominant_color``,
``create_session_for_provider``). The image helpers live here; those modules alias them.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from .embedder import Embedder
from .images import ops
from .pca import PCAModel, as_pca, fit_pca

logger = logging.getLogger("imgbeddings")

PATCH_SIZES = (14, 16, 32)

#: A Pillow fill colour: an RGB(A) tuple, or one number for single-band modes ("L", "P", ...).
Color = int | float | tuple[int, ...]


@dataclass
class imgbeddings:
    """Image embeddings with the original imgbeddings API.

    Args:
        model_path: a local ``.onnx`` file (default: download ``patch{patch_size}_v{version}``).
        patch_size: 32 (default, ViT-B/32), 16 (ViT-B/16) or 14 (ViT-L/14, 1024-d).
        version: model version of the built-in files (1).
        pca: a saved PCA ``.npz`` (or PCAModel / fitted sklearn PCA) applied by ``to_embeddings``.
        gpu: use the CUDA execution provider when available.
        provider: an ONNX Runtime execution provider name (wins over ``gpu``).
    """

    model_path: str | None = None
    patch_size: int = 32
    version: int = 1
    pca: Any = None
    gpu: bool = False
    provider: str | None = None
    embedder: Embedder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {list(PATCH_SIZES)}, got {self.patch_size!r}")
        model = self.model_path or f"patch{self.patch_size}_v{self.version}"
        self.embedder = Embedder(model, mode="exact", gpu=self.gpu, provider=self.provider)
        self.model_path = str(self.embedder.model_path)
        if self.pca is not None:
            source = self.pca
            self.pca = as_pca(self.pca)
            logger.info("PCA loaded from %s and will transform imgbeddings to %dD.", source, self.pca.out_dim)

    def __repr__(self) -> str:
        return (
            f"imgbeddings(model_path={self.model_path!r}, patch_size={self.patch_size}, "
            f"dim={self.embedder.dim}, pca={self.pca!r})"
        )

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession``."""
        return self.embedder.onnx.session

    def to_embeddings(self, inputs: Any, batch_size: int = 64, pca_transform: bool = True) -> np.ndarray:
        """Embed one image or a list of images (file names, PIL images, ...); float32 (N, D).

        Batches as the original did (all at once below ``batch_size``, else chunks of it, with a
        progress bar), which matters for INT8 models whose activations are quantised per batch.
        """
        items = _as_list(inputs)
        vectors = self.embedder.embed(items, batch_size=batch_size, progress=len(items) >= batch_size)
        if self.pca is not None and pca_transform:
            vectors = self.pca_transform(vectors)
        return vectors

    def process_inputs(self, inputs: Any) -> dict[str, np.ndarray]:
        """Inputs -> ``{"pixel_values": float32 (N, 3, 224, 224)}``, as the original returned."""
        return {self.embedder.onnx.input_name: self.embedder.preprocess(_as_list(inputs))}

    def create_embeddings(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run the model on the output of :meth:`process_inputs`."""
        return self.embedder.onnx.run(inputs[self.embedder.onnx.input_name])

    def to_pil(self, input: Any) -> Image.Image:
        """Decode one input (path, bytes, PIL image, array) to an RGB PIL image."""
        return self.embedder.preprocessor.load(input)

    def augment_images(
        self, inputs: Any, multiples: int = 1, seed: int = -1, **kwargs: Any
    ) -> list[Image.Image]:
        """``multiples`` randomly colour-jittered and rotated, square-padded copies of each input,
        shuffled (the original's augmentation helper). ``kwargs`` go to :func:`symmetric_img_aug`."""
        items = _as_list(inputs)
        if seed:  # as in the original: the default seed=-1 seeds too; seed=0 or None does not
            random.seed(seed)
        augmented = [[symmetric_img_aug(self.to_pil(x), **kwargs) for x in items] for _ in range(multiples)]
        flat = list(itertools.chain(*augmented))
        random.shuffle(flat)
        return flat

    def pca_fit(
        self, embeddings: np.ndarray, out_dim: int = 128, save_path: str | None = "pca.npz"
    ) -> PCAModel:
        """Fit a PCA to ``embeddings`` (kept on this object), save it to ``save_path`` as a
        portable ``.npz`` unless None; logs and returns the fitted :class:`PCAModel`."""
        self.pca = fit_pca(embeddings, out_dim)
        if save_path:
            self.pca.save(save_path)
            logger.info('PCA saved at "%s"; provide this as `pca` to imgbeddings() to reload.', save_path)
        logger.info(
            "The fitted PCA explains %.1f%% of the variance.", 100 * self.pca.total_explained_variance
        )
        return self.pca

    def pca_transform(self, inputs: np.ndarray) -> np.ndarray:
        """Project embeddings with the fitted or loaded PCA."""
        if self.pca is None:
            raise ValueError("no PCA: call pca_fit() first or pass pca='pca.npz' to imgbeddings()")
        return self.pca.transform(inputs)


def _as_list(inputs: Any) -> list[Any]:
    """One image (path, bytes, file object, PIL image, 2-d/3-d array) -> ``[image]``; a list,
    tuple, other iterable or 4-d array of images -> a list of them."""
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return [inputs] if inputs.ndim in (2, 3) else list(inputs)
    if hasattr(inputs, "read"):
        return [inputs]
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise TypeError(f"expected an image or a list of images, got {type(inputs).__name__}")


def get_dominant_color(img_input: Image.Image) -> Color:
    """The colour the original used as "dominant": the pixel a 1 x 1 nearest-neighbour resize
    keeps, which is the centre pixel ``(width // 2, height // 2)``, in the image's own mode (an
    RGB tuple for RGB, a number for "L", a palette index for "P", ...).

    The original (``img.resize((1, 1), resample=0)`` on a copy) returned this value, not an
    average; reading the one pixel gives the same value without copying the image.
    """
    width, height = img_input.size
    return img_input.getpixel((width // 2, height // 2))


def square_pad(img: Image.Image, background_color: Color | None = (0, 0, 0)) -> Image.Image:
    """Pad ``img`` to a centred square of ``background_color`` (``None``: the image's
    :func:`get_dominant_color`), keeping its mode; a square image is returned as it is."""
    width, height = img.size
    if width == height:
        return img
    if background_color is None:
        background_color = get_dominant_color(img)
    return ops.pad_to_square(img, background_color)


def symmetric_img_aug(
    img: Image.Image,
    r_shift: float = 0.75,
    r_degrees: float = 15,
    background_color: Color | None = (0, 0, 0),
    expand: bool = True,
    pad_to_square: bool = True,
) -> Image.Image:
    """Random colour/contrast/brightness jitter (+-``r_shift``) and rotation (+-``r_degrees``),
    then optional square padding: the original package's augmentation, drawing from the
    ``random`` module in the same order (so a seed gives the original's images).

    ``background_color=None`` fills the rotation corners and the padding with the jittered
    image's :func:`get_dominant_color` (taken before rotating, as the original did).
    """
    if r_shift <= 0 and r_degrees <= 0:
        raise ValueError("no augmentation: r_shift and r_degrees are both 0")
    if r_shift > 0:
        funcs = [ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness]
        random.shuffle(funcs)
        for func in funcs:
            img = func(img).enhance(random.uniform(1.0 - r_shift, 1.0 + r_shift))
    if r_degrees > 0:
        if background_color is None:
            background_color = get_dominant_color(img)
        img = img.rotate(random.uniform(-r_degrees, r_degrees), expand=expand, fillcolor=background_color)
    return square_pad(img, background_color) if pad_to_square else img
