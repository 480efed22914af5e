"""The original 0.1.0 module paths (``imgbeddings.imgbeddings``, ``imgbeddings.utils``) and its
three example notebooks (``examples/augmentation.ipynb``, ``cats_dogs.ipynb``, ``pokemon.ipynb``
in minimaxir/imgbeddings), replayed call for call with local images and a tiny local model in
place of downloads. Their faiss / UMAP parts are not ours and are left out; the index search is
done with NumPy on ``sklearn.preprocessing.normalize``d vectors, as faiss ``IndexFlatIP`` would.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import normalize

import imgbeddings as package
from conftest import IMAGES, MODELS, cosine
from imgbeddings import imgbeddings
from imgbeddings.errors import ProviderError
from imgbeddings.utils import create_session_for_provider, get_dominant_color, square_pad, symmetric_img_aug

MODEL = str(MODELS / "tiny_b32_legacy_int8.onnx")  # legacy format, 32-d
PHOTO = IMAGES / "photo_640x480.jpg"


def original_dominant_color(img: Image.Image):
    """How 0.1.0 computed it: a 1 x 1 nearest-neighbour resize of a copy (its convert() was a no-op)."""
    return img.copy().resize((1, 1), resample=0).getpixel((0, 0))


# --- module paths -----------------------------------------------------------------------------


def run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter importing this same source tree; returns stdout."""
    src = str(Path(package.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CHECK_CLASS = (
    "import sys; from imgbeddings.legacy import imgbeddings as cls; "
    "assert isinstance(A, type) and A is B is cls, (A, B); "
    "assert sys.modules['imgbeddings.imgbeddings'].imgbeddings is cls; print('ok')"
)


@pytest.mark.parametrize(
    "imports",
    [
        "from imgbeddings.imgbeddings import imgbeddings as A; from imgbeddings import imgbeddings as B",
        "from imgbeddings import imgbeddings as B; from imgbeddings.imgbeddings import imgbeddings as A",
        "import imgbeddings.imgbeddings; from imgbeddings import imgbeddings as B; "
        "from imgbeddings.imgbeddings import imgbeddings as A",
        "from imgbeddings.utils import square_pad; import imgbeddings.imgbeddings; "
        "from imgbeddings import imgbeddings as B; A = imgbeddings.imgbeddings",
        # as in 0.1.0, whose __init__ bound the class over the submodule: the package attribute is the class
        "import imgbeddings.imgbeddings as A; import imgbeddings; B = imgbeddings.imgbeddings",
    ],
    ids=["module-path-first", "package-first", "import-submodule-first", "utils-first", "import-as"],
)
def test_class_and_module_path_in_any_import_order(imports):
    assert run_fresh(f"{imports}; {CHECK_CLASS}") == "ok"


def test_importing_the_package_or_the_legacy_path_loads_no_onnxruntime():
    out = run_fresh(
        "import sys, imgbeddings; a = 'onnxruntime' in sys.modules; "
        "import imgbeddings.imgbeddings; b = 'onnxruntime' in sys.modules; "
        "print(a, b, 'imgbeddings.imgbeddings' in sys.modules)"
    )
    assert out == "False False True"


def test_the_original_names_are_aliases_of_the_new_code():
    from imgbeddings import legacy

    old = importlib.import_module("imgbeddings.imgbeddings")
    assert old is sys.modules["imgbeddings.imgbeddings"] and old is not imgbeddings
    assert old.imgbeddings is legacy.imgbeddings is imgbeddings
    assert old.square_pad is square_pad is legacy.square_pad
    assert old.symmetric_img_aug is symmetric_img_aug is legacy.symmetric_img_aug
    assert old.create_session_for_provider is create_session_for_provider
    assert package.imgbeddings is imgbeddings
    with pytest.raises(AttributeError):
        old.nothing_here  # noqa: B018


# --- imgbeddings.utils ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "CMYK", "I;16", "F", "1"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 4), (640, 480), (61, 97), (300, 500)])
def test_get_dominant_color_is_the_originals(mode, size):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    assert get_dominant_color(img) == original_dominant_color(img)


def test_square_pad_black_by_default_centred_and_mode_kept():
    image = Image.open(PHOTO)  # 640 x 480, as the notebook's COCO photo
    padded = square_pad(image)
    assert padded.size == (640, 640) and padded.mode == image.mode
    px, src = np.asarray(padded), np.asarray(image)
    assert (px[:80] == 0).all() and (px[560:] == 0).all()
    assert np.array_equal(px[80:560], src)
    assert square_pad(image).resize((128, 128)).size == (128, 128)

    tall = Image.open(IMAGES / "portrait_300x500.png")
    padded = np.asarray(square_pad(tall, background_color=(255, 0, 0)))
    assert padded.shape[:2] == (500, 500)
    assert (padded[:, :100] == (255, 0, 0)).all() and (padded[:, 400:] == (255, 0, 0)).all()
    assert np.array_equal(padded[:, 100:400], np.asarray(tall))

    square = Image.open(IMAGES / "square_224.png")
    assert square_pad(square) is square  # returned as it is, as in the original


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_square_pad_with_none_uses_the_dominant_color(mode):
    image = Image.open(PHOTO).convert(mode)
    dominant = get_dominant_color(image)
    assert dominant == original_dominant_color(image) == image.getpixel((320, 240))
    padded = square_pad(image, background_color=None)
    assert padded.size == (640, 640) and padded.mode == mode
    for corner in [(0, 0), (639, 0), (0, 639), (639, 639), (320, 79), (320, 560)]:
        assert padded.getpixel(corner) == dominant
    assert padded.getpixel((320, 80)) == image.getpixel((320, 0))
    assert square_pad(image, background_color=None).resize((128, 128)).size == (128, 128)


def test_symmetric_img_aug_fills_with_the_dominant_color_and_is_seeded():
    import random

    image = Image.open(PHOTO).convert("RGB")
    random.seed(3)
    out = symmetric_img_aug(image, r_shift=0, background_color=None)
    assert out.size[0] == out.size[1] > 640
    assert out.getpixel((0, 0)) == get_dominant_color(image)  # the rotation corner
    random.seed(3)
    again = symmetric_img_aug(image, r_shift=0, background_color=None)
    assert again.tobytes() == out.tobytes()
    plain = symmetric_img_aug(image, r_degrees=0, pad_to_square=False)
    assert plain.size == image.size
    with pytest.raises(ValueError, match="no augmentation"):
        symmetric_img_aug(image, r_shift=0, r_degrees=0)


def test_create_session_for_provider_goes_through_our_runtime(monkeypatch):
    import onnxruntime as ort

    from imgbeddings import runtime

    calls = []
    real = runtime.OnnxModel

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "OnnxModel", spy)
    session = create_session_for_provider(MODEL, None, False)  # the original's positional form
    assert isinstance(session, ort.InferenceSession)
    assert calls == [((MODEL,), {"provider": None, "gpu": False})]
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_inputs()[0].name == "pixel_values"

    ibed = imgbeddings(model_path=MODEL)
    px = ibed.process_inputs([str(PHOTO)])
    out = session.run(["embeddings"], px)[0]
    assert np.allclose(out, ibed.create_embeddings(px), atol=1e-6)

    cpu = create_session_for_provider(MODEL, "CPUExecutionProvider", False)
    assert cpu.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="NopeExecutionProvider"):
        create_session_for_provider(MODEL, "NopeExecutionProvider", False)


def test_create_session_for_provider_gpu_without_cuda_falls_back_with_a_warning():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = create_session_for_provider(MODEL, None, True)
        assert session.get_providers()[0] in ("CUDAExecutionProvider", "CPUExecutionProvider")
        return
    with pytest.warns(RuntimeWarning, match="onnxruntime-gpu"):
        session = create_session_for_provider(MODEL, None, True)
    assert session.get_providers() == ["CPUExecutionProvider"]


# --- examples/augmentation.ipynb --------------------------------------------------------------

MULTIPLES = 70  # the notebook makes 1000; 70 keeps the test short and still spans two batches of 64


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """pca_fit() saves ``pca.npz`` in the current directory by default, as the original did."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_augmentation_notebook(in_tmp):
    ibed = imgbeddings(model_path=MODEL)  # notebook: imgbeddings() (downloads patch32_v1)
    image = Image.open(PHOTO)  # notebook: Image.open(requests.get(url, stream=True).raw)
    image.resize((128, 128), Image.Resampling.LANCZOS)

    assert square_pad(image).resize((128, 128)).size == (128, 128)
    assert square_pad(image, background_color=None).resize((128, 128)).size == (128, 128)

    aug_images = ibed.augment_images(image, MULTIPLES, seed=42)
    assert len(aug_images) == MULTIPLES
    assert all(isinstance(x, Image.Image) and x.mode == "RGB" for x in aug_images)
    assert all(x.size[0] == x.size[1] >= 640 for x in aug_images)
    assert all(x.getpixel((0, 0)) == (0, 0, 0) for x in aug_images)  # rotation/pad fill: black
    assert len({x.tobytes() for x in aug_images}) == MULTIPLES
    same = ibed.augment_images(image, MULTIPLES, seed=42)
    assert [x.tobytes() for x in same] == [x.tobytes() for x in aug_images]
    other = ibed.augment_images(image, 4, seed=7)
    assert {x.tobytes() for x in other}.isdisjoint(x.tobytes() for x in aug_images)
    grid = [x.resize((64, 64)) for x in aug_images[0:32]]  # the notebook's image_grid
    assert all(g.size == (64, 64) for g in grid)

    embeddings = ibed.to_embeddings(aug_images, pca_transform=False)
    assert embeddings.shape == (MULTIPLES, 32) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()

    search_embed = ibed.to_embeddings(image, pca_transform=False)
    assert search_embed.shape == (1, 32) and search_embed.dtype == np.float32
    distances, indices = flat_ip_search(normalize(embeddings), normalize(search_embed), embeddings.shape[0])
    assert distances.shape == indices.shape == (1, MULTIPLES)
    assert sorted(indices[0]) == list(range(MULTIPLES)) and np.all(np.diff(distances[0]) <= 1e-6)
    assert np.all(np.abs(distances) <= 1 + 1e-5)

    # notebook: ibed.pca_fit(embeddings), i.e. 128 components of 768-d vectors; the tiny model is 32-d
    with pytest.raises(ValueError, match="out_dim"):
        ibed.pca_fit(embeddings)
    ibed.pca_fit(embeddings, 16)
    assert (in_tmp / "pca.npz").is_file()
    embeddings_pca = ibed.pca_transform(embeddings)
    assert embeddings_pca.shape == (MULTIPLES, 16) and embeddings_pca.dtype == np.float32
    assert np.allclose(embeddings_pca, ibed.pca.transform(embeddings))
    # with a PCA set, to_embeddings transforms by default: the same as transforming raw vectors
    some = aug_images[:8]
    assert np.allclose(
        ibed.to_embeddings(some), ibed.pca.transform(ibed.to_embeddings(some, pca_transform=False))
    )
    search_embed_pca = ibed.pca_transform(search_embed)
    assert search_embed_pca.shape == (1, 16)
    distances, indices = flat_ip_search(normalize(embeddings_pca), normalize(search_embed_pca), MULTIPLES)
    assert indices.shape == (1, MULTIPLES)


def flat_ip_search(index_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What faiss ``IndexFlatIP.search`` returns: top-``k`` inner products and their row indices."""
    scores = queries @ index_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_augment_images_default_seed_is_seeded_like_the_original():
    """0.1.0's ``seed=-1`` default is truthy, so it seeds too: two default calls give the same images."""
    ibed = imgbeddings(model_path=MODEL)
    small = Image.open(PHOTO).resize((64, 48))
    first = [x.tobytes() for x in ibed.augment_images(small, 3)]
    assert [x.tobytes() for x in ibed.augment_images(small, 3)] == first


def test_augment_images_with_dominant_color_background():
    ibed = imgbeddings(model_path=MODEL)
    image = Image.open(PHOTO)
    out = ibed.augment_images(image, 3, seed=1, r_shift=0, background_color=None)
    dominant = get_dominant_color(image.convert("RGB"))
    assert all(x.getpixel((0, 0)) == dominant for x in out)


# --- examples/cats_dogs.ipynb -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cats_and_dogs(tmp_path_factory) -> tuple[list[Image.Image], list[int]]:
    """Two classes of JPEGs (warm and cool scenes) of mixed sizes and modes, opened lazily like
    the notebook's ``datasets`` images; shuffled with ``default_rng(42)`` as it does."""
    folder = tmp_path_factory.mktemp("cats_vs_dogs")
    rng = np.random.default_rng(0)
    n = 40
    paths, labels = [], []
    for label in (0, 1):
        for i in range(n):
            w, h = (int(v) for v in rng.integers(96, 260, size=2))
            base = (200, 120, 60) if label == 0 else (60, 110, 200)
            color = tuple(int(np.clip(c + rng.integers(-40, 40), 0, 255)) for c in base)
            img = Image.new("RGB", (w, h), color)
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x, y = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
                shade = tuple(int(v) for v in rng.integers(0, 256, size=3))
                draw.ellipse((x, y, x + int(rng.integers(10, 60)), y + int(rng.integers(10, 60))), fill=shade)
            if i % 10 == 9:
                img = img.convert("L")  # a few greyscale photos, as in the real data set
            path = folder / f"{label}_{i:03d}.jpg"
            img.save(path, quality=90)
            paths.append(path)
            labels.append(label)
    idx = np.arange(2 * n)
    np.random.default_rng(42).shuffle(idx)
    return [Image.open(paths[i]) for i in idx], [labels[i] for i in idx]


def test_cats_dogs_notebook(cats_and_dogs):
    images, labels = cats_and_dogs
    assert {im.mode for im in images} == {"RGB", "L"}
    ibed = imgbeddings(model_path=MODEL)
    embeddings = ibed.to_embeddings(images)  # no PCA yet: raw vectors; >= 64 images: batches of 64
    assert embeddings.shape == (len(images), 32) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    assert cosine(embeddings[:5], ibed.to_embeddings(images[:5])).min() > 0.999  # int8: per-batch

    classifier = LogisticRegression(max_iter=500)
    x_train, x_test, y_train, y_test = train_test_split(
        embeddings, labels, test_size=0.2, random_state=42, stratify=labels
    )
    classifier.fit(x_train, y_train)
    assert classifier.score(x_test, y_test) >= 0.75
    predicted = classifier.predict(x_test)
    idx_mismatch = np.where(y_test != predicted)
    misclass_idx = np.where((embeddings[:, None] == x_test[idx_mismatch]).all(-1).any(-1))
    assert len(misclass_idx[0]) == len(idx_mismatch[0])


# --- examples/pokemon.ipynb -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pokemon_folder(tmp_path_factory) -> Path:
    """Transparent "sprites" resized to 224 and pasted onto white by their alpha, saved as
    ``0001.png``...: what the notebook's download loop writes."""
    folder = tmp_path_factory.mktemp("pokemon_images")
    size = 224
    rng = np.random.default_rng(1)
    for p_id in range(1, 25):
        sprite = Image.new("RGBA", (475, 475), (0, 0, 0, 0))
        draw = ImageDraw.Draw(sprite)
        for _ in range(3):
            box = sorted(int(v) for v in rng.integers(20, 455, size=2))
            top = sorted(int(v) for v in rng.integers(20, 455, size=2))
            fill = (*(int(v) for v in rng.integers(0, 256, size=3)), 255)
            draw.ellipse((box[0], top[0], box[1] + 10, top[1] + 10), fill=fill)
        img = sprite.resize((size, size), Image.Resampling.LANCZOS)
        bg = Image.new("RGB", (size, size), (255, 255, 255))
        bg.paste(img, mask=img.split()[3])
        bg.save(folder / f"{p_id:04d}.png")
    return folder


def test_pokemon_notebook(pokemon_folder, in_tmp):
    ibed = imgbeddings(model_path=MODEL)
    folder_name = str(pokemon_folder)
    inputs = [os.path.join(folder_name, x) for x in os.listdir(folder_name)]
    inputs.sort()
    embeddings = ibed.to_embeddings(inputs)
    assert embeddings.shape == (24, 32) and embeddings.dtype == np.float32

    ibed.pca_fit(embeddings, 16)  # notebook: 128 of 768 dimensions
    embeddings_pca = ibed.pca_transform(embeddings)
    assert embeddings_pca.shape == (24, 16) and embeddings_pca.dtype == np.float32
    assert np.allclose(embeddings_pca, ibed.pca.transform(embeddings))
    np.save("pokemon_embeddings_pca.npy", embeddings_pca)
    assert np.array_equal(np.load("pokemon_embeddings_pca.npy"), embeddings_pca)

    index = normalize(embeddings_pca)
    search_id = 5
    q_embedding = np.expand_dims(embeddings_pca[search_id - 1, :], 0)
    distances, indices = flat_ip_search(index, normalize(q_embedding), 10 + 1)
    assert indices[0][0] == search_id - 1 and distances[0][0] == pytest.approx(1.0, abs=1e-5)
    assert len(set(indices[0])) == 11

    # a new image, embedded alone: with the PCA fitted, to_embeddings returns PCA'd vectors
    img_path = str(PHOTO)
    img_embedding = ibed.to_embeddings(img_path)
    raw = ibed.to_embeddings(img_path, pca_transform=False)
    assert img_embedding.shape == (1, 16) and raw.shape == (1, 32)
    assert np.allclose(img_embedding, ibed.pca.transform(raw), atol=1e-6)
    distances, indices = flat_ip_search(index, normalize(img_embedding), 10)
    assert indices.shape == (1, 10)

    # a sprite embedded alone lands on its own row (int8 activations shift it a little)
    own = ibed.to_embeddings(inputs[search_id - 1])
    assert flat_ip_search(index, normalize(own), 1)[1][0][0] == search_id - 1

    # the saved PCA reloads as the README documents
    reloaded = imgbeddings(model_path=MODEL, pca="pca.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.allclose(reloaded.pca_transform(embeddings), embeddings_pca, atol=1e-5)
