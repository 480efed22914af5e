"""The cluster, map, classify, pca and dedup-undo commands, and the aspect-ratio warning of embed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import MODELS
from imgbeddings.analysis.classify import Probe
from imgbeddings.analysis.cluster import read_clusters
from imgbeddings.pca import PCAModel
from imgbeddings.store import load
from test_cli import run
from twoclass import TINY, write_classes


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """An output of 2 x 16 tinted images plus one broken file (a failure row)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("twoclass")
    write_classes(root / "images", per_class=16)
    (root / "images" / "red" / "broken.jpg").write_bytes(b"not an image")
    out = root / "out"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        from imgbeddings.cli import main

        with pytest.raises(SystemExit) as exc:
            main(["embed", str(root / "images"), "-r", "-o", str(out), "-m", str(TINY)])
    assert exc.value.code == 6
    return root, out


def test_cluster_k_writes_clusters_and_sheets(two_classes, capsys, tmp_path):
    _, out = two_classes
    code, stdout, err = run(
        [
            "cluster",
            str(out),
            "--k",
            "2",
            "-o",
            str(tmp_path / "c.parquet"),
            "--sheets",
            str(tmp_path / "sheets"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "kmeans: 2 cluster(s) over 32 images" in err
    lines = [line.split("\t") for line in stdout.strip().splitlines()]
    assert sorted(int(n) for _, n, _ in lines) == sorted(
        np.bincount(read_clusters(tmp_path / "c.parquet").labels).tolist()
    )
    for _, _, sheet in lines:
        with Image.open(sheet) as img:
            assert img.format == "PNG" and img.width > 100
    result = read_clusters(tmp_path / "c.parquet")
    assert len(result) == 32 and not any(p.endswith("broken.jpg") for p in result.paths)
    # the planted classes come back as the clusters (tinted strongly enough for the tiny model)
    by_class = {
        c: {int(lab) for p, lab in zip(result.paths, result.labels, strict=True) if f"/{c}/" in p}
        for c in ("red", "blue")
    }
    assert len(by_class["red"]) == 1 and len(by_class["blue"]) == 1 and by_class["red"] != by_class["blue"]


def test_cluster_defaults_json_and_usage_errors(two_classes, capsys):
    _, out = two_classes
    code, stdout, err = run(["cluster", str(out), "-k", "3", "--json", "--no-sheets"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in stdout.strip().splitlines()]
    assert [r["cluster"] for r in records] == [0, 1, 2] and sum(r["size"] for r in records) == 32
    assert all(r["sheet"] is None and 1 <= len(r["nearest"]) <= 5 for r in records)
    assert (out / "clusters.parquet").is_file()
    for args in (["cluster", str(out)], ["cluster", str(out), "--k", "2", "--auto"]):
        code, _, err = run(args, capsys)
        assert code == 2 and "either --k" in err and "Traceback" not in err
    code, _, err = run(["cluster", str(out), "--k", "99"], capsys)
    assert code == 2 and "between 1 and the number of vectors (32)" in err


@pytest.mark.slow
def test_cluster_auto_finds_the_two_classes(two_classes, capsys, tmp_path):
    _, out = two_classes
    code, stdout, err = run(
        ["cluster", str(out), "--auto", "--no-sheets", "-o", str(tmp_path / "a.parquet")], capsys
    )
    assert code == 0 and "hdbscan on umap: 2 cluster(s)" in err, err
    assert len(stdout.strip().splitlines()) == 2


@pytest.mark.slow
def test_map_png_html_coords_and_labels(two_classes, capsys, tmp_path):
    _, out = two_classes
    png, html, coords = tmp_path / "map.png", tmp_path / "map.html", tmp_path / "xy.parquet"
    code, stdout, err = run(
        [
            "map",
            str(out),
            "-o",
            str(png),
            "--color-by",
            "folder",
            "--html",
            str(html),
            "--coords",
            str(coords),
        ],
        capsys,
    )
    assert code == 0 and stdout.strip() == str(png), err
    assert "map: 32 images, 2 group(s)" in err
    with Image.open(png) as img:
        assert img.format == "PNG" and max(img.size) == 1800
    assert html.read_text().count("<circle") == 32
    table = pq.read_table(coords)
    assert table.num_rows == 32 and set(table.column("group").to_pylist()) == {"red", "blue"}
    # a sample, coloured by a predictions file
    labels = tmp_path / "labels.parquet"
    labels_table = {"path": table.column("path").to_pylist(), "label": ["x"] * 10 + ["y"] * 22}
    import pyarrow as pa

    pq.write_table(pa.table(labels_table), labels)
    code, _, err = run(
        [
            "map",
            str(out),
            "-o",
            str(png),
            "--color-by",
            "label",
            "--labels",
            str(labels),
            "--sample",
            "12",
            "--no-thumbnails",
        ],
        capsys,
    )
    assert code == 0 and "12 of 32 images (sample, seed 0)" in err and "0 thumbnail(s)" in err, err


def test_map_usage_errors(two_classes, capsys, tmp_path):
    _, out = two_classes
    code, _, err = run(["map", str(out), "-o", str(tmp_path / "m.png"), "--color-by", "label"], capsys)
    assert code == 2 and "needs --labels" in err
    code, _, err = run(["map", str(out), "-o", str(tmp_path / "m.jpg")], capsys)
    assert code == 2 and "PNG" in err
    code, _, err = run(["map", str(out), "-o", str(tmp_path / "m.png"), "--color-by", "colour"], capsys)
    assert code == 2 and "Traceback" not in err


def test_classify_train_on_a_folder_then_predict(two_classes, capsys, tmp_path):
    root, out = two_classes
    probe_file = tmp_path / "probe.json"
    code, stdout, err = run(
        ["classify", "train", str(root / "images"), "-o", str(probe_file), "-m", str(TINY)], capsys
    )
    assert code == 6, err  # broken.jpg failed: named, left out, the probe written anyway
    assert stdout.strip() == str(probe_file) and "failed " in err and "broken.jpg" in err
    probe = Probe.load(probe_file)
    assert probe.classes == ["blue", "red"] and probe.counts == {"blue": 16, "red": 16}
    assert f"cross-validated accuracy {probe.cv_accuracy:.3f}" in err and "confusion" in err
    assert sum(map(sum, probe.confusion)) == 32
    # predict on the output: labels file, and the plain listing
    labels = tmp_path / "labels.parquet"
    code, stdout, err = run(
        ["classify", "predict", str(out), "--probe", str(probe_file), "-o", str(labels)], capsys
    )
    assert code == 0 and stdout.strip() == str(labels), err
    table = pq.read_table(labels)
    assert table.num_rows == 32 and {"path", "label", "probability", "p:blue", "p:red"} <= set(
        table.column_names
    )
    expected = probe.predict(load(out).vectors)
    assert table.column("label").to_pylist() == expected.labels
    code, stdout, _ = run(["classify", "predict", str(out), "--probe", str(probe_file)], capsys)
    rows = [line.split("\t") for line in stdout.strip().splitlines()]
    assert len(rows) == 32 and [r[1] for r in rows] == expected.labels


def test_classify_train_on_an_output_and_mismatch(two_classes, capsys, tmp_path):
    root, out = two_classes
    probe_file = tmp_path / "p.json"
    code, _, err = run(["classify", "train", str(out), "-o", str(probe_file)], capsys)
    assert code == 0 and "2 classes (blue 16, red 16)" in err, err
    # a probe trained on another model's vectors does not apply to this output
    other = tmp_path / "other.json"
    code, _, err = run(
        [
            "classify",
            "train",
            str(root / "images"),
            "-o",
            str(other),
            "-m",
            str(MODELS / "tiny_b32_proj.onnx"),
        ],
        capsys,
    )
    assert code == 6, err
    code, _, err = run(["classify", "predict", str(out), "--probe", str(other)], capsys)
    assert code == 8 and "output mismatch" in err and "Traceback" not in err
    # usage errors: one class, a probe file that is not one, a missing probe file
    one = tmp_path / "one"
    write_classes(one, per_class=3)
    import shutil

    shutil.rmtree(one / "blue")
    code, _, err = run(
        ["classify", "train", str(one), "-o", str(tmp_path / "x.json"), "-m", str(TINY)], capsys
    )
    assert code == 2 and "at least 2 classes" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run(["classify", "predict", str(out), "--probe", str(bad)], capsys)
    assert code == 2 and "not an imgbeddings probe" in err
    code, _, err = run(["classify", "predict", str(out), "--probe", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "Traceback" not in err


def test_pca_fit_then_embed_with_it(two_classes, capsys, tmp_path):
    root, out = two_classes
    pca_file = tmp_path / "pca.npz"
    code, stdout, err = run(["pca", "fit", str(out), "--dim", "8", "-o", str(pca_file)], capsys)
    assert code == 0 and stdout.strip() == str(pca_file), err
    model = PCAModel.load(pca_file)
    vectors = load(out).vectors
    assert model.in_dim == vectors.shape[1] and model.out_dim == 8
    assert f"explains {100 * model.total_explained_variance:.1f} %" in err
    # the saved PCA applies when embedding: the projected output equals transform(raw vectors)
    projected = tmp_path / "projected"
    code, _, err = run(
        [
            "embed",
            str(root / "images" / "blue"),
            "-o",
            str(projected),
            "-m",
            str(TINY),
            "--pca",
            str(pca_file),
        ],
        capsys,
    )
    assert code == 0, err
    raw, got = load(out), load(projected)
    rows = [raw.paths.index(p) for p in got.paths]
    np.testing.assert_allclose(got.vectors, model.transform(raw.vectors[rows]), atol=1e-4)
    code, _, err = run(["pca", "fit", str(out), "--dim", "999", "-o", str(pca_file)], capsys)
    assert code == 2 and "can keep 1 to 32 components" in err
    code, _, err = run(["pca", "fit", str(projected), "--dim", "2", "-o", str(pca_file)], capsys)
    assert code == 2 and "already projected" in err


def test_dedup_move_then_undo(tmp_path, capsys, image_paths):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in image_paths:
        (folder / p.name).write_bytes(p.read_bytes())
    copy = folder / "copy.jpg"
    copy.write_bytes(image_paths[0].read_bytes())
    out = tmp_path / "out"
    code, _, err = run(["embed", str(folder), "-o", str(out), "-m", str(TINY)], capsys)
    assert code == 0, err
    moved_to = tmp_path / "dupes"
    code, _, err = run(["dedup", str(out), "--threshold", "0.9999", "--move-to", str(moved_to)], capsys)
    assert code == 0 and "moved 1 file(s)" in err, err
    manifest = next(moved_to.glob("*.json"))
    gone = [p for p in (folder / image_paths[0].name, copy) if not p.exists()]
    assert len(gone) == 1
    code, _, err = run(["dedup-undo", str(manifest)], capsys)
    assert code == 0 and "moved 1 file(s) back, 0 skipped" in err, err
    assert gone[0].exists()
    code, _, err = run(["dedup-undo", str(manifest)], capsys)  # nothing left to undo
    assert code == 0 and "moved 0 file(s) back" in err


def test_dedup_options_center_sample_and_model(tmp_path, capsys, image_paths):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in image_paths:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    code, _, err = run(["embed", str(folder), "-o", str(out), "-m", str(TINY)], capsys)
    assert code == 0, err
    code, _, err = run(["dedup", str(out), "--center", "--sample", "4", "--model", str(TINY)], capsys)
    assert code == 0 and "calibrated on the collection" in err, err
    code, _, err = run(["dedup", str(out), "--model", str(MODELS / "tiny_b32_proj.onnx")], capsys)
    assert code == 8 and "output mismatch" in err and "Traceback" not in err


def test_embed_warns_about_extreme_aspect_ratios(tmp_path, capsys, image_paths):
    out = tmp_path / "out"
    code, _, err = run(["embed", *map(str, image_paths), "-o", str(out), "-m", str(TINY)], capsys)
    assert code == 0, err
    expected = []
    for p in image_paths:
        with Image.open(p) as img:
            ratio = max(img.size) / min(img.size)
        if ratio > 3:
            expected.append((p, ratio))
    assert len(expected) == 2  # tall_150x900, wide_1000x180
    assert f"warning: {len(expected)} image(s) are more than 3:1" in err
    for p, ratio in expected:
        assert f"{p} ({ratio:.1f}:1)" in err


def test_analysis_commands_on_an_empty_and_a_one_image_output(tmp_path, capsys, image_paths):
    empty = tmp_path / "empty_in"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    code, _, _ = run(["embed", str(empty), "-o", str(out), "-m", str(TINY)], capsys)
    assert code == 6
    probe = tmp_path / "probe.json"
    Probe(["a", "b"], np.zeros((1, 32)), np.zeros(1), np.zeros(32), np.ones(32), 1.0).save(probe)
    # nothing can be made of nothing: exit 8, the output named
    for args in (
        ["cluster", str(out), "--k", "1"],
        ["map", str(out), "-o", str(tmp_path / "m.png")],
        ["pca", "fit", str(out), "--dim", "1", "-o", str(tmp_path / "p.npz")],
    ):
        code, _, err = run(args, capsys)
        assert (
            code == 8
            and "output error" in err
            and f"{out} holds no vectors" in err
            and "Traceback" not in err
        ), (
            args,
            err,
        )
    # nothing found in nothing: exit 0, an empty answer, said on stderr
    code, stdout, err = run(["search", str(out), str(image_paths[0]), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["results"] == [] and "holds no vectors" in err, err
    code, stdout, err = run(["dedup", str(out), "--json"], capsys)
    assert code == 0 and stdout == "" and "nothing to compare" in err and "0 vector(s)" in err, err
    code, stdout, err = run(["index", str(out)], capsys)
    assert code == 0 and "0 vectors x 32" in err, err
    code, stdout, err = run(["classify", "predict", str(out), "--probe", str(probe)], capsys)
    assert code == 0 and stdout == "" and "predicted 0 image(s)" in err, err
    one = tmp_path / "one"
    code, _, _ = run(["embed", str(image_paths[2]), "-o", str(one), "-m", str(TINY)], capsys)
    assert code == 0
    code, stdout, err = run(["cluster", str(one), "--k", "1", "--no-sheets"], capsys)
    assert code == 0 and stdout.strip().split("\t")[:2] == ["0", "1"], err
    code, _, err = run(["map", str(one), "-o", str(tmp_path / "m.png")], capsys)
    assert code == 8 and "needs at least 4" in err
    code, stdout, err = run(["search", str(one), str(image_paths[2]), "--json", "-k", "3"], capsys)
    assert code == 0, err
    hits = json.loads(stdout)["results"]
    assert len(hits) == 1 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    code, stdout, err = run(["dedup", str(one), "--json"], capsys)
    assert code == 0 and stdout == "" and "nothing to compare" in err and "1 vector(s)" in err, err
