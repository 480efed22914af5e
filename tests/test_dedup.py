"""Near-duplicates (``analysis.dedup``): planted groups found at the calibrated threshold, no
chaining, the same groups whatever the row order, the keep rule, report files, moves that undo,
and outputs with failures, no vectors or one vector."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS
from imgbeddings import Embedder, ModelMismatch, OptionError, embed_files
from imgbeddings.analysis.dedup import (
    DedupResult,
    calibrate,
    dedup,
    keep_key,
    move_to,
    read_report,
    undo,
    write_report,
)
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.export.samples import photo_like

MODEL = str(MODELS / "tiny_b32_legacy_int8.onnx")


# --- helpers -----------------------------------------------------------------------------------


def member_sets(result: DedupResult) -> list[tuple[str, frozenset[str]]]:
    return [(g["keep"], frozenset(m["path"] for m in g["members"])) for g in result.groups]


def clustered(n_clusters=30, singles=200, dim=48, seed=0):
    """Random unit vectors plus clusters of 2-5 near copies (noise 0.15: cosine ~0.98)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for c in range(n_clusters):
        base = rng.normal(size=dim)
        truth.append([f"/c/{c:03d}_{m}.jpg" for m in range(int(rng.integers(2, 6)))])
        rows += [base / np.linalg.norm(base) + 0.15 * rng.normal(size=dim) / np.sqrt(dim) for _ in truth[-1]]
    paths = [p for group in truth for p in group] + [f"/s/{i:04d}.jpg" for i in range(singles)]
    rows += list(rng.normal(size=(singles, dim)))
    return paths, np.array(rows, dtype=np.float32), truth


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12 distinct photo-like images; 6 with a half-size copy and a PNG copy, 3 of those also
    re-encoded at JPEG quality 60; embedded with the tiny model."""
    folder = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(7)
    truth = []
    for g in range(12):
        img = photo_like(240, 180, rng)
        img.save(folder / f"p{g:02d}.jpg", quality=92)
        names = [f"p{g:02d}.jpg"]
        if g < 6:
            img.resize((120, 90)).save(folder / f"p{g:02d}_small.jpg", quality=92)
            img.save(folder / f"p{g:02d}_copy.png")
            names += [f"p{g:02d}_small.jpg", f"p{g:02d}_copy.png"]
        if g < 3:
            img.save(folder / f"p{g:02d}_q60.jpg", quality=60)
            names.append(f"p{g:02d}_q60.jpg")
        truth.append(frozenset(str(folder / n) for n in names))
    out = folder.parent / (folder.name + "-out")
    embed_files([str(folder)], out, model=MODEL, workers=0)
    return folder, out, truth


# --- groups ------------------------------------------------------------------------------------


def test_planted_groups_found_at_calibrated_threshold(planted):
    _, out, truth = planted
    result = dedup(out)  # the calibration embeds altered copies with the output's own model
    assert result.calibration is not None and result.threshold == result.calibration.threshold
    assert result.method == "exact" and result.compared == sum(len(t) for t in truth)
    assert {members for _, members in member_sets(result)} == {t for t in truth if len(t) > 1}
    for g in result.groups:
        assert g["keep"].endswith(".jpg") and "_" not in Path(g["keep"]).name  # the full-size original
        assert g["members"][0] == {"path": g["keep"], "score": 1.0}
        scores = [m["score"] for m in g["members"][1:]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= result.threshold
    assert [g["group"] for g in result.groups] == list(range(len(result.groups)))


def test_calibration_threshold_between_copies_and_distinct_images(planted):
    """On the planted set the chosen threshold separates what is known: every planted copy
    scores above it, and it is at or above the distinct images' high quantile."""
    _, out, truth = planted
    cal = calibrate(out, Embedder(MODEL))
    vs = VectorSet.from_output(out)
    unit = vs.unit()
    sims = unit @ unit.T
    group_of = {p: i for i, t in enumerate(truth) for p in t}
    same = np.array([[group_of[a] == group_of[b] for b in vs.paths] for a in vs.paths])
    np.fill_diagonal(same, False)
    assert sims[same].min() > cal.threshold  # every planted copy pair is above it
    assert cal.threshold >= cal.distinct["q95"]
    assert cal.distinct["q95"] < cal.copies["max"]
    assert cal.sample == len(vs) and cal.copies["n"] == 3 * len(vs)
    assert cal.already_duplicated >= 15  # images that have a planted copy
    assert "threshold" in cal.summary() and cal.to_json()["threshold"] == cal.threshold


def test_no_chaining():
    """cos(A,B) and cos(B,C) above the threshold, cos(A,C) below: A keeps B, C stays alone."""
    angle = np.deg2rad([0.0, 20.0, 40.0])
    abc = np.zeros((3, 8), dtype=np.float32)
    abc[:, 0], abc[:, 1] = np.cos(angle), np.sin(angle)
    others = np.eye(8, dtype=np.float32)[3:]  # orthogonal to A, B, C and to each other
    vs = VectorSet.from_arrays(np.vstack([abc, others]), ["a", "b", "c", "x", "y", "z", "v", "w"])
    t = float(np.cos(np.deg2rad(25)))  # 0.906: A~B (0.94), B~C (0.94), A!~C (0.77)
    for method in ("exact", "ann"):
        result = dedup(vs, threshold=t, method=method)
        assert member_sets(result) == [("a", frozenset({"a", "b"}))]
        assert result.pairs == 2
    # with B kept first, A and C are both its near-duplicates: one group, each member within t of B
    favour_b = dedup(vs, threshold=t, keep=lambda p: (p != "b", p))
    assert member_sets(favour_b) == [("b", frozenset({"a", "b", "c"}))]
    assert all(m["score"] >= t for m in favour_b.groups[0]["members"])


def test_each_image_joins_its_most_similar_representative():
    """D is within the threshold of A and of B (A, B distinct): it joins B, the closer one."""
    a, b = np.eye(4, dtype=np.float32)[:2]
    d = (0.6 * a + 0.8 * b) / 1.0
    vs = VectorSet.from_arrays(np.stack([a, b, d, b]), ["a", "b", "d", "e"])  # e: a copy of b
    result = dedup(vs, threshold=0.55)
    assert member_sets(result) == [("b", frozenset({"b", "d", "e"}))]  # a (0.6 to d) loses d to b (0.8)


@pytest.mark.parametrize("method", ["exact", "ann"])
def test_same_groups_whatever_the_row_order(method):
    paths, x, truth = clustered()
    want = None
    for seed in range(4):
        perm = np.random.default_rng(seed).permutation(len(paths)) if seed else np.arange(len(paths))
        vs = VectorSet.from_arrays(x[perm], [paths[i] for i in perm])
        result = dedup(vs, threshold=0.9, method=method)
        got = json.dumps(result.groups)
        want = want or got
        assert got == want
    assert {m for _, m in member_sets(result)} == {frozenset(t) for t in truth}


def test_large_groups_stay_whole():
    """A group bigger than k (each image keeps k neighbours) is searched again and stays one group."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=32)
    copies = base + 0.01 * rng.normal(size=(60, 32))
    x = np.vstack([copies, rng.normal(size=(100, 32))]).astype(np.float32)
    vs = VectorSet.from_arrays(x)
    for method in ("exact", "ann"):
        result = dedup(vs, threshold=0.95, method=method, k=8)
        assert len(result.groups) == 1 and len(result.groups[0]["members"]) == 60


def test_centred_similarity_option():
    paths, x, truth = clustered(seed=3)
    result = dedup(VectorSet.from_arrays(x, paths), threshold=0.9, center=True)
    assert result.centered and result.to_json()["similarity"] == "centred cosine"
    assert {m for _, m in member_sets(result)} == {frozenset(t) for t in truth}


def test_options_checked():
    vs = VectorSet.from_arrays(np.eye(3))
    with pytest.raises(OptionError, match="threshold"):
        dedup(vs, threshold=1.5)
    with pytest.raises(OptionError, match="method"):
        dedup(vs, threshold=0.9, method="fast")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="embedder= or threshold="):
        dedup(vs)  # plain vectors: nothing to calibrate with
    with pytest.raises(OptionError, match="unique"):
        dedup(VectorSet.from_arrays(np.eye(2), ["p", "p"]), threshold=0.9)


# --- keep rule ---------------------------------------------------------------------------------


def test_keep_rule_pixels_then_oldest_then_path(tmp_path):
    img = photo_like(200, 150, np.random.default_rng(0))
    files = {
        "b_small.jpg": (100, 75, 1_000),
        "c_big_new.png": (200, 150, 3_000),
        "d_big_old.jpg": (200, 150, 2_000),
        "a_big_old.jpg": (200, 150, 2_000),
    }
    for name, (w, h, mtime) in files.items():
        img.resize((w, h)).save(tmp_path / name)
        os.utime(tmp_path / name, ns=(mtime * 10**9, mtime * 10**9))
    paths = sorted(str(tmp_path / n) for n in files)
    ranked = sorted(paths, key=keep_key)
    assert [Path(p).name for p in ranked] == [
        "a_big_old.jpg",
        "d_big_old.jpg",
        "c_big_new.png",
        "b_small.jpg",
    ]
    assert keep_key(str(tmp_path / "missing.jpg"))[:2] == (0, 2**63 - 1)
    vs = VectorSet.from_arrays(np.ones((4, 8)), paths)  # identical vectors: one group
    result = dedup(vs, threshold=0.99)
    assert Path(result.groups[0]["keep"]).name == "a_big_old.jpg"


# --- outputs -----------------------------------------------------------------------------------


def test_output_with_failures(tmp_path, planted):
    folder, _, _ = planted
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("p00.jpg", "p00_small.jpg", "p01.jpg"):
        (photos / name).write_bytes((folder / name).read_bytes())
    (photos / "broken.jpg").write_bytes(b"not an image")
    embed_files([str(photos)], tmp_path / "out", model=MODEL, workers=0)
    result = dedup(tmp_path / "out", threshold=0.99)
    assert (result.compared, result.failed) == (3, 1)
    assert member_sets(result) == [
        (str(photos / "p00.jpg"), frozenset({str(photos / "p00.jpg"), str(photos / "p00_small.jpg")}))
    ]


def test_output_without_vectors_and_with_one(tmp_path, planted):
    folder, _, _ = planted
    empty, one = tmp_path / "empty", tmp_path / "one"
    empty.mkdir()
    one.mkdir()
    (empty / "broken.png").write_bytes(b"\x89PNG not really")
    (one / "p00.jpg").write_bytes((folder / "p00.jpg").read_bytes())
    embed_files([str(empty)], tmp_path / "out-empty", model=MODEL, workers=0)
    embed_files([str(one)], tmp_path / "out-one", model=MODEL, workers=0)
    nothing = dedup(tmp_path / "out-empty")  # no threshold needed: nothing to compare
    assert (nothing.groups, nothing.compared, nothing.failed, nothing.threshold) == ([], 0, 1, None)
    single = dedup(tmp_path / "out-one")
    assert (single.groups, single.compared, single.calibration) == ([], 1, None)
    assert single.to_json()["groups"] == []


def test_calibration_refuses_another_models_embedder(planted):
    _, out, _ = planted
    with pytest.raises(ModelMismatch):
        dedup(out, embedder=Embedder(str(MODELS / "tiny_b32_legacy.onnx")))


def test_calibration_needs_readable_images(tmp_path):
    paths, x, _ = clustered(n_clusters=2, singles=5)
    vs = VectorSet.from_arrays(x, [str(tmp_path / Path(p).name) for p in paths])  # no such files
    with pytest.raises(OptionError, match="could be read"):
        dedup(vs, embedder=Embedder(MODEL))


# --- report ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_report_round_trip(tmp_path, suffix):
    paths, x, _ = clustered(n_clusters=5, singles=20)
    paths[0] = "/c/odd, name\nwith a newline.jpg"
    result = dedup(VectorSet.from_arrays(x, paths), threshold=0.9)
    target = write_report(result, tmp_path / f"dups{suffix}")
    rows = read_report(target)
    assert len(rows) == sum(len(g["members"]) for g in result.groups)
    assert [(p, g, k) for p, g, k, _ in rows] == [(p, g, k) for p, g, k, _ in result.rows()]
    assert np.allclose([r[3] for r in rows], [r[3] for r in result.rows()], atol=1e-6)
    if suffix == ".csv":
        with open(target, newline="") as fh:
            assert next(csv.reader(fh)) == ["path", "group", "keep", "score"]


def test_report_keeps_names_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"/c/caf\xe9.jpg")  # Latin-1 bytes: a surrogate escape in the str
    result = dedup(VectorSet.from_arrays(np.ones((2, 4)), [name, "/c/b.jpg"]), threshold=0.9)
    assert read_report(write_report(result, tmp_path / "r.csv"))[1][0] == name  # exact bytes in CSV
    assert read_report(write_report(result, tmp_path / "r.parquet"))[1][0] == "/c/caf\\xe9.jpg"


def test_report_format_from_extension(tmp_path):
    result = dedup(VectorSet.from_arrays(np.ones((2, 4))), threshold=0.9)
    with pytest.raises(OptionError, match=r"\.parquet or \.csv"):
        write_report(result, tmp_path / "dups.txt")


# --- moving duplicates aside -------------------------------------------------------------------


def photo_folder(root: Path, groups: int = 3, copies: int = 2) -> tuple[list[str], np.ndarray]:
    """Files in two sub-folders and matching vectors: each group's files share one vector."""
    rng = np.random.default_rng(0)
    paths, rows = [], []
    for g in range(groups):
        vec = rng.normal(size=16)
        for c in range(copies + 1):
            sub = root / ("a" if c == 0 else "b")
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"g{g}_{c}.png"
            Image.new("RGB", (64 - 8 * c, 48), (40 * g, 10 * c, 0)).save(path)  # the first is the largest
            paths.append(str(path))
            rows.append(vec)
    return paths, np.array(rows, dtype=np.float32)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_move_to_and_undo_round_trip(tmp_path):
    photos, review = tmp_path / "photos", tmp_path / "review"
    paths, x = photo_folder(photos)
    before = snapshot(photos)
    result = dedup(VectorSet.from_arrays(x, paths), threshold=0.99)
    assert result.duplicates == 6
    moved = move_to(result, review)
    assert len(moved.done) == 6 and not moved.skipped
    assert sorted(snapshot(photos)) == sorted(p for p in before if p.startswith("a/"))  # kept ones stay
    assert snapshot(review).keys() >= {f"b/g{g}_{c}.png" for g in range(3) for c in (1, 2)}
    for src, dst in moved.done:  # same bytes, under DIR with their path below the shared folder
        assert Path(dst).read_bytes() == before[str(Path(src).relative_to(photos))]
    record = json.loads(moved.manifest.read_text())
    assert moved.manifest.parent == review and {e["state"] for e in record["moves"]} == {"moved"}
    back = undo(moved.manifest)
    assert len(back.done) == 6 and not back.skipped
    assert snapshot(photos) == before  # everything back, byte for byte
    assert {e["state"] for e in json.loads(moved.manifest.read_text())["moves"]} == {"restored"}
    assert not undo(moved.manifest).done  # a second undo does nothing


def test_moves_never_overwrite_or_delete(tmp_path):
    photos, review = tmp_path / "photos", tmp_path / "review"
    paths, x = photo_folder(photos, groups=2, copies=1)
    (review / "b").mkdir(parents=True)
    (review / "b" / "g0_1.png").write_bytes(b"already here")  # a name taken in DIR
    result = dedup(VectorSet.from_arrays(x, paths), threshold=0.99)
    os.unlink(photos / "b" / "g1_1.png")  # gone before the move
    moved = move_to(result, review)
    assert [Path(d).name for _, d in moved.done] == ["g0_1~1.png"]
    assert (review / "b" / "g0_1.png").read_bytes() == b"already here"
    assert [Path(s).name for s, _ in moved.skipped] == ["g1_1.png"]
    (photos / "b" / "g0_1.png").write_bytes(b"a new file at the old name")
    back = undo(moved.manifest)
    assert not back.done and len(back.skipped) == 1  # the old name is taken again: left as is
    assert (review / "b" / "g0_1~1.png").exists()
    assert (photos / "b" / "g0_1.png").read_bytes() == b"a new file at the old name"


def test_undo_of_an_interrupted_move(tmp_path):
    """A manifest still saying "planned" (the run was killed): files are judged by where they are."""
    photos, review = tmp_path / "photos", tmp_path / "review"
    paths, x = photo_folder(photos, groups=1, copies=2)
    moved = move_to(dedup(VectorSet.from_arrays(x, paths), threshold=0.99), review)
    record = json.loads(moved.manifest.read_text())
    for entry in record["moves"]:
        entry["state"] = "planned"
    first = record["moves"][0]
    os.rename(first["to"], first["from"])  # this one had not been moved yet
    moved.manifest.write_text(json.dumps(record))
    back = undo(moved.manifest)
    assert len(back.done) == 1 and not back.skipped
    assert all(os.path.exists(e["from"]) for e in record["moves"])


def test_undo_needs_a_manifest(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(OptionError, match="not a dedup manifest"):
        undo(tmp_path / "x.json")
