"""The streaming pipeline: input order, parallel decoding, failures as values, recovery from
crashed and hung decoders, bounded memory."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS
from imgbeddings import Embedder
from imgbeddings.job import embed_stream
from imgbeddings.pipeline import Timings, plan_threads


@pytest.fixture(scope="module")
def emb() -> Embedder:
    return Embedder(MODELS / "tiny_b32_legacy.onnx", batch_size=4)


def collect(stream):
    batches = list(stream)
    vectors = np.concatenate([b.vectors for b in batches]) if batches else np.empty((0, 32))
    ok = np.concatenate([b.ok for b in batches]) if batches else np.empty(0, bool)
    failures = [f for b in batches for f in b.failures]
    return batches, vectors, ok, failures


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_same_vectors_in_input_order(emb, image_paths, workers):
    items = [str(p) for p in image_paths] * 3
    batches, vectors, ok, failures = collect(embed_stream(emb, items, workers=workers))
    assert ok.all() and not failures
    assert [b.start for b in batches] == list(range(0, len(items), 4))
    assert [i for b in batches for i in b.items] == items
    expected = emb.embed(items)
    assert np.allclose(vectors, expected, atol=1e-5)


def test_plan_threads_shares_the_cpus():
    assert plan_threads(cpus=2) == plan_threads(workers=2, threads=2, cpus=2)
    assert plan_threads(cpus=8).workers == 8 and plan_threads(workers=3, cpus=8).threads == 8
    assert plan_threads(workers=0, cpus=4).workers == 0


@pytest.fixture
def bad_files(tmp_path, image_paths):
    """Every kind of bad input a real folder contains, beside good ones."""
    good = [str(p) for p in image_paths[:3]]
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    data = image_paths[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    png = image_paths[2].read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    bad = [
        "zero.jpg",
        "text.png",
        "cut.jpg",
        "cut.png",
        "bomb.png",
        "folder.jpg",
        "dangling.jpg",
        "pipe.jpg",
        "missing.jpg",
    ]
    items = [
        good[0],
        *[str(tmp_path / b) for b in bad[:5]],
        good[1],
        *[str(tmp_path / b) for b in bad[5:]],
        good[2],
    ]
    return items, good


@pytest.mark.parametrize("workers", [0, 2])
def test_every_bad_file_is_a_failure_and_nothing_hangs(emb, bad_files, workers):
    items, good = bad_files
    t0 = time.perf_counter()
    _, vectors, ok, failures = collect(embed_stream(emb, items, workers=workers, item_timeout=30))
    assert time.perf_counter() - t0 < 30
    assert ok.tolist() == [x in good for x in items]
    by_name = {os.path.basename(f.source): f for f in failures}
    assert set(by_name) == {os.path.basename(x) for x in items if x not in good}
    assert by_name["zero.jpg"].message.startswith("empty file")
    assert by_name["text.png"].error == "ImageDecodeError"
    assert by_name["cut.jpg"].error == "ImageDecodeError" and by_name["cut.png"].error == "ImageDecodeError"
    assert by_name["bomb.png"].error == "ImageTooLarge"
    assert by_name["folder.jpg"].error == "ImageNotFound" and "directory" in by_name["folder.jpg"].message
    assert "broken symbolic link" in by_name["dangling.jpg"].message
    assert "not a regular file" in by_name["pipe.jpg"].message
    assert all(items[f.index] == f.source for f in failures)
    assert np.allclose(vectors[ok], emb.embed(good), atol=1e-5)


def test_crashed_worker_is_replaced_and_its_file_reported(emb, image_paths, tmp_path, monkeypatch):
    import crashy_worker
    from imgbeddings import pipeline

    monkeypatch.setattr(pipeline._ProcessFeeder, "worker_target", staticmethod(crashy_worker.worker_main))
    crash = tmp_path / "CRASH.jpg"
    crash.write_bytes(image_paths[0].read_bytes())
    items = [str(p) for p in image_paths] + [str(crash)] + [str(p) for p in image_paths]
    timings = Timings()
    _, vectors, ok, failures = collect(embed_stream(emb, items, workers=2, timings=timings))
    assert [f.index for f in failures] == [8]
    assert failures[0].error == "WorkerCrashed" and "exit code -11" in failures[0].message
    assert timings.worker_restarts == 1
    assert ok.sum() == 16
    assert np.allclose(vectors[ok], emb.embed([str(p) for p in image_paths] * 2), atol=1e-5)


def test_hung_worker_is_stopped_after_the_timeout(emb, image_paths, tmp_path, monkeypatch):
    import crashy_worker
    from imgbeddings import pipeline

    monkeypatch.setattr(pipeline._ProcessFeeder, "worker_target", staticmethod(crashy_worker.worker_main))
    hang = tmp_path / "HANG.png"
    hang.write_bytes(image_paths[2].read_bytes())
    items = [str(image_paths[0]), str(hang), str(image_paths[1])]
    t0 = time.perf_counter()
    _, _, ok, failures = collect(embed_stream(emb, items, workers=1, item_timeout=1.5))
    assert time.perf_counter() - t0 < 20
    assert ok.tolist() == [True, False, True]
    assert "longer than 1.5 s" in failures[0].message


def test_memory_is_bounded_by_the_window(emb, image_paths):
    """The input iterator is never read more than `window` items ahead of what was yielded."""
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield str(image_paths[i % len(image_paths)])

    yielded, ahead = 0, 0
    for batch in embed_stream(emb, source(), batch_size=4, window=12, workers=1):
        ahead = max(ahead, pulled - yielded)
        yielded += len(batch)
    assert yielded == 200
    assert ahead <= 12 + 4


def test_in_memory_items_and_stopping_early(emb, image_paths):
    pil = Image.open(image_paths[0])
    arr = np.asarray(Image.open(image_paths[1]).convert("RGB"))
    _, vectors, ok, _ = collect(embed_stream(emb, [pil, arr, str(image_paths[2])], workers=1))
    assert ok.all() and np.allclose(vectors, emb.embed([pil, arr, image_paths[2]]), atol=1e-5)
    stream = embed_stream(emb, (str(image_paths[i % 8]) for i in range(10_000)), workers=1)
    first = next(stream)
    stream.close()  # stops the workers; must not hang
    assert len(first) == 4


def test_builds_its_own_embedder_with_planned_threads(image_paths):
    batches = list(embed_stream(MODELS / "tiny_b32_legacy.onnx", [str(image_paths[0])], workers=0))
    assert batches[0].ok.all()


# --- model outputs with NaN or inf --------------------------------------------------------------


def _nan_model(folder):
    """A tiny model whose output is log(mean pixel value) + a bias: NaN for images whose normalised
    pixels average below zero (dark ones), finite for bright ones. Its card is the tiny test
    model's with the output and file changed."""
    import json

    import onnx
    from onnx import TensorProto, helper

    dim = 8
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixel_values"], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "shape"], ["column"]),
            helper.make_node("Log", ["column"], ["log"]),
            helper.make_node("Add", ["log", "bias"], ["image_embeds"]),
        ],
        "nan_for_dark_images",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", dim])],
        [
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
            helper.make_tensor("bias", TensorProto.FLOAT, [dim], list(range(dim))),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = folder / "nan_model.onnx"
    onnx.save(model, path)
    card = json.loads((MODELS / "tiny_b32_proj.card.json").read_text())
    card["name"] = "nan_model"
    card["output"].update(dim=dim, kind="projection", name="image_embeds", normalized=False)
    card["file"].update(filename=path.name, sha256=None)
    (folder / "nan_model.card.json").write_text(json.dumps(card))
    return path


@pytest.fixture
def nan_emb(tmp_path):
    return Embedder(_nan_model(tmp_path), batch_size=4)


def test_non_finite_output_is_a_failure_not_a_vector(nan_emb):
    from imgbeddings.errors import InputError, NonFiniteOutput

    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)
    res = nan_emb.embed_with_failures([white, black, white, black, white])
    assert res.ok.tolist() == [True, False, True, False, True]
    assert [(f.index, f.error, f.message) for f in res.failures] == [
        (i, "NonFiniteOutput", "the model returned NaN or inf for this input") for i in (1, 3)
    ]
    assert np.isnan(res.vectors[~res.ok]).all() and np.isfinite(res.vectors[res.ok]).all()
    with pytest.raises(NonFiniteOutput, match=r"input #1 .*NaN or inf") as err:
        nan_emb.embed([white, black])
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    assert nan_emb.embed([white]).shape == (1, 8)


def test_non_finite_output_with_other_failures_through_embed_files(nan_emb, tmp_path):
    from imgbeddings import embed_files

    Image.new("RGB", (40, 30), (255, 255, 255)).save(tmp_path / "a_white.png")
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "b_black.png")
    (tmp_path / "c_broken.png").write_text("not an image")
    Image.new("RGB", (40, 30), (250, 250, 250)).save(tmp_path / "d_white.png")
    inputs = sorted(str(p) for p in tmp_path.glob("*.png"))
    result = embed_files(inputs, tmp_path / "out", model=nan_emb, workers=1)
    assert result.counts.embedded == 2 and result.counts.failed == 2
    assert sorted((os.path.basename(f.source), f.error) for f in result.failures) == [
        ("b_black.png", "NonFiniteOutput"),
        ("c_broken.png", "ImageDecodeError"),
    ]
