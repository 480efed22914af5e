"""Decoding and preprocessing: exactness against transformers' image processors, odd image
modes, every accepted input type, and bad inputs."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import load_reference
from imgbeddings.errors import ImageDecodeError, ImageNotFound, ImageTooLarge, InputError
from imgbeddings.images import ops
from imgbeddings.images.decode import DEFAULT_MAX_PIXELS, load_image, to_rgb
from imgbeddings.images.preprocess import Preprocessor
from imgbeddings.models.cards import PreprocessSpec, original_format_preprocess

PAD = original_format_preprocess()
CROP = original_format_preprocess(resize_mode="crop")


def siglip_spec() -> PreprocessSpec:
    ref = load_reference("pixels")
    return original_format_preprocess(
        resize_mode="squash", mean=tuple(ref["siglip_mean"]), std=tuple(ref["siglip_std"])
    )


# --- exactness against the reference ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_exact_mode_matches_transformers(mode, image_paths):
    """Pixel tensors equal transformers' CLIPImageProcessor / SiglipImageProcessor (PIL backend)
    outputs within 1e-5 on every test image, wide and tall ones included."""
    ref = load_reference("pixels")[mode]
    spec = {"pad": PAD, "crop": CROP, "squash": siglip_spec()}[mode]
    ours = Preprocessor(spec, "exact").batch(image_paths)
    assert ours.shape == ref.shape == (len(image_paths), 3, 224, 224)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize(
    "size", [(1000, 180), (150, 900), (601, 600), (600, 601), (3, 700), (700, 2), (224, 224)]
)
@pytest.mark.parametrize("fill", [(0, 0, 0), (255, 255, 255), (12, 200, 77)])
def test_pad_resize_exact_is_bit_identical_to_padding_first(size, fill):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = ops.pad_to_square(img, fill).resize((224, 224), Image.Resampling.BICUBIC)
    got = ops.pad_resize_exact(img, 224, fill, Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_pad_resize_exact_tall_image_over_several_strips():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (1300, 90, 3), dtype=np.uint8))  # > 256-row strips
    expected = ops.pad_to_square(img).resize((224, 224), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(ops.pad_resize_exact(img, 224)), np.asarray(expected))


def test_fast_mode_deviation_is_small(image_paths):
    """Fast mode (draft JPEG decoding / box reduction) stays close to exact: the figures in
    README come from this comparison."""
    exact = Preprocessor(PAD, "exact").batch(image_paths)
    fast = Preprocessor(PAD, "fast").batch(image_paths)
    per_image = np.abs(exact - fast).reshape(len(image_paths), -1).mean(1)
    assert per_image.max() < 0.02
    assert per_image.mean() < 0.005
    # small images are not touched at all
    small = [i for i, p in enumerate(image_paths) if max(Image.open(p).size) < 448]
    assert small and all(per_image[i] == 0 for i in small)


def test_fast_mode_decodes_big_jpeg_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(path, quality=90)
    img = Preprocessor(PAD, "fast").load(path)
    assert 448 <= max(img.size) < 1000
    assert Preprocessor(PAD, "exact").load(path).size == (4000, 3000)


# --- what real files contain -----------------------------------------------------------------


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    base.save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (40, 80)
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(expected))
    assert load_image(path, exif_transpose=False).size == (80, 40)


def test_alpha_is_composited_and_hidden_rgb_never_leaks():
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[..., 0] = 255  # pure red hidden under alpha 0
    arr[:5, :, 3] = 255  # top half opaque red
    img = load_image(_png_bytes(Image.fromarray(arr, "RGBA")))
    out = np.asarray(img)
    assert (out[:5] == [255, 0, 0]).all()
    assert (out[5:] == [255, 255, 255]).all()  # default background: white, not the hidden red
    black = np.asarray(load_image(Image.fromarray(arr, "RGBA"), alpha_background=(0, 0, 0)))
    assert (black[5:] == 0).all()


def test_half_transparent_pixels_blend_with_background():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 2] = 200
    arr[..., 3] = 128
    out = np.asarray(load_image(Image.fromarray(arr, "RGBA"), alpha_background=(0, 0, 0)))
    assert abs(int(out[0, 0, 2]) - 100) <= 1 and out[0, 0, 0] == 0


def test_palette_with_transparency_and_la_modes():
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 3, 6))
    pal.info["transparency"] = 0  # index 0 (red) is transparent
    out = np.asarray(load_image(_png_bytes(pal, transparency=0)))
    assert (out[:, :3] == [0, 255, 0]).all() and (out[:, 3:] == 255).all()
    la = Image.new("LA", (3, 3), (10, 0))
    assert (np.asarray(load_image(la)) == 255).all()


@pytest.mark.parametrize("mode", ["CMYK", "L", "1", "P", "YCbCr", "LAB", "HSV", "RGBa", "La", "PA"])
def test_every_mode_becomes_rgb(mode):
    img = (
        Image.new("RGB", (7, 5), (30, 140, 220)).convert(mode)
        if mode not in ("LAB", "HSV")
        else Image.new(mode, (7, 5))
    )
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (7, 5)


def test_16bit_greyscale_is_scaled_not_clipped():
    arr16 = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    img = Image.fromarray(arr16)  # mode "I;16"
    assert img.mode.startswith("I")
    out = np.asarray(load_image(_png_bytes(img)))
    assert out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1
    out32 = np.asarray(to_rgb(Image.fromarray(arr16.astype(np.int32), "I")))
    assert abs(int(out32[0, 0, 0]) - 128) <= 1


def test_float_image_scaled():
    out = np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")))
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_animated_image_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(load_image(buf.getvalue()))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 50


@pytest.mark.parametrize("size", [(5000, 3), (3, 5000)])
def test_extreme_aspect_ratios(size):
    img = Image.new("RGB", size, (200, 100, 50))
    t = Preprocessor(PAD).tensor(load_image(img))
    assert t.shape == (3, 224, 224) and np.isfinite(t).all()


# --- every accepted input type ----------------------------------------------------------------


def test_all_input_types_give_the_same_tensor(image_paths):
    path = image_paths[0]
    data = path.read_bytes()
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    pre = Preprocessor(PAD)
    ref = pre(path)
    for item in (
        str(path),
        path,
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        open(path, "rb"),
        pil,
        arr,
    ):
        assert np.array_equal(pre(item), ref), type(item)


def test_numpy_grey_and_rgba_arrays():
    assert load_image(np.full((5, 6), 7, np.uint8)).size == (6, 5)
    assert load_image(np.zeros((5, 6, 4), np.uint8)).mode == "RGB"
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((5, 6, 2), np.uint8))


def test_unsupported_type():
    with pytest.raises(InputError, match="unsupported input type int"):
        load_image(42)


# --- bad inputs: clear errors naming the item and the reason ----------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageNotFound, match="no such file") as err:
        load_image(tmp_path / "nope.jpg", index=3)
    assert err.value.index == 3 and "nope.jpg" in str(err.value) and "#3" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    folder = tmp_path / "dir.jpg"
    folder.mkdir()
    with pytest.raises(ImageNotFound, match="directory"):
        load_image(folder)


def test_broken_symlink(tmp_path):
    link = tmp_path / "link.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    with pytest.raises(ImageNotFound, match="broken symbolic link"):
        load_image(link)


def test_empty_and_non_image_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("definitely not a PNG")
    with pytest.raises(ImageDecodeError, match="not an image") as err:
        load_image(text)
    assert "notes.png" in str(err.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt, image_paths):
    src = Image.open(image_paths[0]).convert("RGB")
    buf = io.BytesIO()
    src.save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="cannot decode") as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_corrupt_data_in_the_middle(tmp_path, image_paths):
    data = bytearray(image_paths[2].read_bytes())  # a PNG
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    with pytest.raises(ImageDecodeError):
        load_image(bytes(data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    data = bytearray(_png_bytes(Image.new("L", (8, 8))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # none escapes
@pytest.mark.parametrize("side", [12_000, 40_000])  # under and over Pillow's own hard limit
def test_decompression_bomb_refused_before_decoding(side):
    data = _png_claiming(side, side)
    assert len(data) < 200
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        load_image(data, max_pixels=100_000_000)


def _png_one_colour(width: int, height: int) -> bytes:
    """A real, fully decodable greyscale PNG of one colour: ~90 KB for 95 MP."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * ((width + 1) * height), 6)  # filter byte 0 + black pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_no_pillow_bomb_warning_for_images_under_our_limit():
    """10000 x 9500 = 95 MP: over Pillow's warning threshold (~89 MP), under our default limit
    (~179 MP). Pillow's raw warning must not reach the caller, and its filters stay as they were."""
    import warnings

    data = _png_one_colour(10_000, 9_500)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 9_500 <= DEFAULT_MAX_PIXELS
    with pytest.warns(Image.DecompressionBombWarning):  # what Pillow alone does
        Image.open(io.BytesIO(data))
    filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(data)
    assert img.size == (10_000, 9_500) and img.mode == "RGB" and img.getpixel((5_000, 4_000)) == (0, 0, 0)
    del img
    assert warnings.filters == filters
    with warnings.catch_warnings():  # over our own limit: our error, still no Pillow warning
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match="over the limit"):
            load_image(data, max_pixels=90_000_000)
    # max_pixels=None: no limit of ours, so Pillow's own warning is left to reach the caller
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageDecodeError):
        load_image(_png_claiming(10_000, 9_500), max_pixels=None)


def test_bomb_warning_filter_is_not_left_behind_by_decode_threads(image_paths):
    """Many threads decoding at once must leave the process's warning filters unchanged."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    filters = list(warnings.filters)
    data = [p.read_bytes() for p in image_paths] * 8
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda d: load_image(d).size, data))
    assert len(sizes) == len(data)
    assert warnings.filters == filters


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageTooLarge, match="over the limit of 5,000"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    assert load_image(Image.new("RGB", (100, 100)), max_pixels=None).size == (100, 100)


def test_unreadable_file_is_reported(tmp_path, monkeypatch, image_paths):
    """Permission errors (simulated: the tests run as root, who may read anything)."""
    import builtins

    target = tmp_path / "secret.jpg"
    target.write_bytes(image_paths[0].read_bytes())
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) == str(target):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(ImageDecodeError, match="permission denied") as err:
        load_image(target, index=4)
    assert err.value.index == 4 and str(target) in str(err.value)


# --- reading files: header first, bounded reads, no handle left open --------------------------


class _ReadSpy:
    """A binary file that records how much is read from it, and refuses whole-file reads."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > 16 << 20:
            raise AssertionError(f"read({size}) of a whole file")
        data = self._fh.read(size)
        self.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


@pytest.fixture
def read_spies(monkeypatch):
    """Every file the decoder opens, wrapped in a :class:`_ReadSpy`."""
    import builtins

    real_open = builtins.open
    spies: list[_ReadSpy] = []

    def spying_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if mode == "rb":
            fh = _ReadSpy(fh)
            spies.append(fh)
        return fh

    monkeypatch.setattr(builtins, "open", spying_open)
    return spies


def test_huge_non_image_file_is_refused_from_its_header(tmp_path, read_spies):
    """A 1 GB file named .jpg that is not an image (sparse: no disk used) is refused after a few
    KB, never read whole; the file is closed when the call returns."""
    path = tmp_path / "video.jpg"
    with path.open("wb") as fh:
        fh.truncate(1 << 30)
    with pytest.raises(ImageDecodeError, match="not an image") as err:
        load_image(path, index=2)
    assert err.value.index == 2 and str(path) in str(err.value)
    assert len(read_spies) == 1 and read_spies[0].bytes_read < 64 << 10
    assert read_spies[0].closed


def test_file_is_decoded_while_open_and_closed_after(tmp_path, read_spies, image_paths):
    for source in (image_paths[0], image_paths[2]):  # a JPEG and a PNG
        img = load_image(source)
        assert read_spies[-1].closed
        assert np.array_equal(np.asarray(img), np.asarray(load_image(source.read_bytes())))
    with pytest.raises(ImageDecodeError, match="cannot decode"):  # failing mid-decode: closed too
        data = image_paths[2].read_bytes()
        (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
        load_image(tmp_path / "cut.png")
    assert all(spy.closed for spy in read_spies)


def test_reserve_is_told_the_pixels_that_will_really_be_decoded(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    seen: list[int] = []
    img = load_image(path, draft_long_side=448, reserve=seen.append)  # fast mode: libjpeg at 1/8
    assert seen == [img.size[0] * img.size[1]] == [500 * 375]
    seen.clear()
    load_image(path, reserve=seen.append)
    assert seen == [4000 * 3000]
    seen.clear()
    with pytest.raises(ImageTooLarge):  # refused from its header: nothing reserved
        load_image(_png_claiming(40_000, 40_000), max_pixels=100_000_000, reserve=seen.append)
    with pytest.raises(ImageDecodeError):
        load_image(b"not an image at all", reserve=seen.append)
    assert seen == []


def test_an_upright_image_is_not_copied_after_decoding(tmp_path, monkeypatch):
    """Pillow's exif_transpose copies an image with nothing to turn: a second full-size image."""
    path = tmp_path / "upright.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(path)
    copies = []
    real_copy = Image.Image.copy
    monkeypatch.setattr(Image.Image, "copy", lambda self: copies.append(self.size) or real_copy(self))
    assert load_image(path).size == (300, 200)
    assert copies == []
