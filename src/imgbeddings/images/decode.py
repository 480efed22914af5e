"""Any supported input -> an RGB Pillow image, with every failure named.

Accepted inputs: ``str`` / ``os.PathLike`` paths, URIs (``s3://...``, read whole through
fsspec: :mod:`imgbeddings.uris`), ``bytes``-like data, binary file objects
(anything with ``read``), Pillow images, and NumPy ``uint8`` arrays (H x W grey, H x W x 3
RGB, H x W x 4 RGBA).

What real files contain is handled explicitly:
- EXIF orientation is applied (the original imgbeddings ignored it);
- transparency (RGBA, LA, palette or grey with a transparent colour) is composited onto a
  background colour, so pixels hidden under alpha 0 never leak into the embedding;
- palette, CMYK, YCbCr, LAB, 1-bit images are converted to RGB;
- 16-bit and 32-bit greyscale are scaled to 8 bits (not clipped to white);
- animated images give their first frame;
- images over ``max_pixels`` are refused before decoding (decompression-bomb guard). Pillow's
  own ``DecompressionBombWarning`` (raised from ~89 MP, half our default limit) is silenced
  for images this limit governs, inside this module only: the program's warning filters are
  left as they were.

Files are identified from their header: a path is opened and Pillow reads the first few KB,
so a 3 GB video named ``.jpg`` is refused without being read; the image is decoded while the
file is open and the file is closed before :func:`load_image` returns. Between the header and
the decoding, ``load_image`` tells its caller how many pixels it is about to decode
(``reserve``: the pipeline's decode budget), and no full-size copy is made that the result does
not need (an upright image is not copied by the EXIF step, an RGBA one not converted to RGBA).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .. import uris
from ..errors import ImageDecodeError, ImageNotFound, ImageTooLarge, InputError, describe

#: Default pixel limit: Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``), ~179 MP.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}

# ``warnings.catch_warnings`` swaps the process-wide filter list, so two decode threads
# entering and leaving it out of order could leave our filter installed for good. The lock
# keeps those swaps nested; it is held only while a header is read (cheap), or while an image
# larger than Pillow's own warning threshold is decoded (rare, and huge: better one at a time).
_BOMB_WARNING_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_bomb_warning(active: bool = True) -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning inside the block (when ``active``): the
    caller applies its own ``max_pixels`` limit instead. Other warnings pass as usual."""
    if not active:
        yield
        return
    with _BOMB_WARNING_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _over_pillow_threshold(img: Image.Image) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and img.size[0] * img.size[1] > limit


@contextlib.contextmanager
def _opened(item: Any, source: str, quiet: bool = False) -> Iterator[Image.Image]:
    """Open (lazily: only the header is read) whatever ``item`` is; raises InputError subclasses.
    ``quiet``: no DecompressionBombWarning (the caller checks the size itself).

    A path is opened here and Pillow identifies the image from the first bytes of the stream, so
    a huge file that is not an image is refused after reading a few KB, never read whole. The
    file stays open while the caller decodes inside the ``with`` block and is closed when it
    leaves: no file handle outlives the call.
    """
    if isinstance(item, str) and uris.is_uri(item):  # s3://, gs://, https://...: read through fsspec
        item = uris.read(item)
    elif isinstance(item, str):
        item = uris.local_path(item)
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.exists(path):
            reason = "broken symbolic link" if os.path.islink(path) else "no such file"
            raise ImageNotFound(source, reason)
        if os.path.isdir(path):
            raise ImageNotFound(source, "is a directory, not an image file")
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise ImageDecodeError(source, "not a regular file (a pipe, socket or device)")
        try:
            fh = open(path, "rb")  # closed by the `with fh` below, after decoding
        except PermissionError as exc:
            raise ImageDecodeError(source, "permission denied") from exc
        except OSError as exc:
            raise ImageDecodeError(source, f"cannot read file: {exc.strerror or exc}") from exc
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageDecodeError(source, "empty file (0 bytes)")
            with _no_bomb_warning(quiet):
                img = Image.open(fh)
            yield img
        return
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageDecodeError(source, "empty data (0 bytes)")
        with _no_bomb_warning(quiet):
            img = Image.open(io.BytesIO(bytes(item)))
        yield img
        return
    if hasattr(item, "read"):
        with _no_bomb_warning(quiet):
            img = Image.open(item)
        yield img
        return
    raise InputError(
        source,
        f"unsupported input type {type(item).__name__}; expected a path, bytes, a binary file, "
        "a PIL image or a uint8 NumPy array",
    )


@contextlib.contextmanager
def _in_memory(img: Image.Image) -> Iterator[Image.Image]:
    yield img


def _from_array(arr: np.ndarray, source: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise InputError(source, f"NumPy images must be uint8 (0-255), got dtype {arr.dtype}")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InputError(source, "empty array")
        return Image.fromarray(np.ascontiguousarray(arr))
    raise InputError(source, f"NumPy images must be H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")


def _check_pixels(img: Image.Image, max_pixels: int | None, source: str) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(source, f"image has no pixels ({w} x {h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(
            source,
            f"{w} x {h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)",
        )


def _apply_draft(img: Image.Image, min_long_side: int) -> None:
    """Let libjpeg decode at a reduced scale while keeping the long side >= ``min_long_side``."""
    if img.format != "JPEG":
        return
    w, h = img.size
    k = min_long_side / max(w, h)
    if k < 0.5:  # draft only pays off when it can at least halve the image
        img.draft(None, (math.ceil(w * k), math.ceil(h * k)))


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale ("I;16*", "I", "F") as 8-bit "L", scaled rather than clipped."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.float32) / 257.0).round()
    elif img.mode == "I":
        # 32-bit integer images almost always carry 16-bit samples (PNG/TIFF 16-bit grey).
        peak = float(arr.max()) if arr.size else 0.0
        out = arr.astype(np.float32) / (257.0 if peak > 255 else 1.0)
        out = out.round()
    else:  # "F": floats in [0, 1] are scaled, anything else is clipped to [0, 255]
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        out = np.nan_to_num(arr.astype(np.float32)) * (255.0 if peak <= 1.0 else 1.0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, alpha_background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited onto ``alpha_background``."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        if img.mode == "La":  # premultiplied grey+alpha: Pillow converts it only to LA
            img = img.convert("LA")
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, alpha_background)
        background.paste(rgba, mask=rgba)  # an RGBA mask means its alpha band, without a copy of it
        return background
    if img.mode.startswith("I") or img.mode == "F":
        img = _scale_to_8bit(img)
    return img.convert("RGB")


_ORIENTATION = 0x0112


def _exif_transpose(img: Image.Image, copy: bool) -> Image.Image:
    """``img`` turned upright as its EXIF orientation says. An upright image is returned as it
    is (Pillow's ``exif_transpose`` would copy it: one more full-size image in memory), except a
    caller's own image when ``copy``, so the caller's object is never handed back."""
    if img.getexif().get(_ORIENTATION, 1) in range(2, 9):
        return ImageOps.exif_transpose(img)
    return img.copy() if copy else img


def load_image(
    item: Any,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
    exif_transpose: bool = True,
    draft_long_side: int | None = None,
    index: int | None = None,
    reserve: Callable[[int], None] | None = None,
) -> Image.Image:
    """Decode ``item`` to a fully loaded RGB image.

    Args:
        item: a path, bytes, binary file object, PIL image or uint8 NumPy array.
        max_pixels: refuse images with more pixels than this (None: no limit beyond Pillow's,
            whose DecompressionBombWarning then reaches the caller as Pillow issues it).
        alpha_background: colour that transparent pixels are composited onto.
        exif_transpose: apply the EXIF orientation tag.
        draft_long_side: if set, JPEGs may be decoded at a reduced scale (libjpeg's DCT
            scaling) as long as the long side stays at least this many pixels.
        index: the item's position in a batch, put into error messages.
        reserve: called with the number of pixels about to be decoded (after any draft
            scaling), once the header has been read and before decoding starts; it may block
            until that much memory may be used (the pipeline's decode budget). The caller
            gives it back once it has dropped the returned image.

    Raises:
        ImageNotFound: missing path, directory, broken link.
        ImageDecodeError: not an image, truncated or corrupt data, unreadable file.
        ImageTooLarge: more than ``max_pixels`` pixels.
        InputError: unsupported input type or array layout.
    """
    source = describe(item)
    quiet = max_pixels is not None  # our own limit governs; Pillow's warning would be noise
    try:
        if isinstance(item, np.ndarray):
            opened = _in_memory(_from_array(item, source))
        elif isinstance(item, Image.Image):
            opened = _in_memory(item)
        else:
            opened = _opened(item, source, quiet)
        with opened as img:
            _check_pixels(img, max_pixels, source)
            if draft_long_side and not isinstance(item, Image.Image):
                _apply_draft(img, draft_long_side)  # changes img.size to what will be decoded
            if reserve is not None:
                reserve(img.size[0] * img.size[1])
            with _no_bomb_warning(quiet and _over_pillow_threshold(img)):
                img.load()
            if exif_transpose:
                img = _exif_transpose(img, copy=isinstance(item, Image.Image))
            return to_rgb(img, alpha_background)
    except InputError as exc:
        if index is None:
            raise
        raise exc.with_index(index) from exc.__cause__
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(source, f"{exc} (possible decompression bomb)", index) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(source, "not an image file Pillow can identify", index) from exc
    except MemoryError as exc:
        raise ImageTooLarge(source, "not enough memory to decode this image", index) from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk or the file system failed while decoding read the file
            raise ImageDecodeError(source, f"cannot read file: {exc.strerror or exc}", index) from exc
        raise ImageDecodeError(source, f"cannot decode image: {type(exc).__name__}: {exc}", index) from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageDecodeError(source, f"cannot decode image: {type(exc).__name__}: {exc}", index) from exc
