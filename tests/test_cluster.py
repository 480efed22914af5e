"""Clusters (``analysis.cluster``) and contact sheets (``analysis.sheets``) on the tiny model's
vectors of generated red and blue scenes: the planted classes must come back as clusters."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from imgbeddings import embed_files
from imgbeddings.analysis.cluster import ClusterResult, cluster, read_clusters, write_clusters
from imgbeddings.analysis.sheets import contact_sheets, sheet_size, thumbnail
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.errors import OptionError, OutputError
from twoclass import TINY, write_classes


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """An output of 30 red + 30 blue scenes and one broken file (a failure, left out)."""
    root = tmp_path_factory.mktemp("two")
    write_classes(root / "images", per_class=30)
    (root / "images" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    embed_files([str(root / "images")], root / "out", model=str(TINY), recursive=True, workers=0)
    return VectorSet.from_output(root / "out")


def planted(vs: VectorSet) -> list[str]:
    return [p.rsplit("/", 2)[-2] for p in vs.paths]


def test_kmeans_finds_the_planted_classes(two_class):
    assert len(two_class) == 60  # the broken file failed and has no vector
    res = cluster(two_class, k=2)
    assert res.method == "kmeans" and res.n_clusters == 2 and res.n_noise == 0
    assert adjusted_rand_score(planted(two_class), res.labels) > 0.9
    assert res.params["fingerprint"] == two_class.fingerprint
    again = cluster(two_class, k=2, seed=0)
    assert np.array_equal(res.labels, again.labels)


def test_cluster_ids_distances_and_members(two_class):
    res = cluster(two_class, k=4, seed=1)
    sizes = list(res.sizes().values())
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == 60  # id 0 is the largest
    assert np.all((res.distances >= 0) & (res.distances <= 2))
    for c in range(res.n_clusters):
        rows = res.members(c)
        assert np.all(res.labels[rows] == c)
        assert np.all(np.diff(res.distances[rows]) >= 0)  # nearest the centre first
    assert res.centroids is not None and res.centroids.shape == (4, two_class.dim)
    assert np.allclose(np.linalg.norm(res.centroids, axis=1), 1, atol=1e-5)


def test_minibatch_kmeans_for_large_sets(two_class):
    res = cluster(two_class, k=2, minibatch_above=10)
    assert res.method == "minibatch-kmeans"
    assert adjusted_rand_score(planted(two_class), res.labels) > 0.9


@pytest.mark.slow  # UMAP: numba compiles on first use (~15 s on 2 CPUs)
def test_auto_finds_the_classes_without_k(two_class):
    res = cluster(two_class, auto=True)  # HDBSCAN on a 5-d UMAP
    assert res.method == "hdbscan on umap" and res.n_clusters >= 2
    kept = res.labels >= 0
    assert kept.mean() > 0.8
    assert adjusted_rand_score(np.array(planted(two_class))[kept], res.labels[kept]) > 0.9
    assert np.all(np.isnan(res.distances[~kept]))


def test_auto_on_pca_and_on_the_vectors_themselves(two_class):
    for reduce in ("pca", None):
        res = cluster(two_class, auto=True, reduce=reduce, min_cluster_size=5)
        assert res.params["reduce"] == reduce and len(res.labels) == 60
    with pytest.raises(OptionError, match="reduce"):
        cluster(two_class, auto=True, reduce="tsne")


def test_bad_options(two_class):
    for kwargs in ({}, {"k": 2, "auto": True}):
        with pytest.raises(OptionError, match="either k"):
            cluster(two_class, **kwargs)
    for k in (0, 61, 2.5, True):
        with pytest.raises(OptionError, match="k must be"):
            cluster(two_class, k=k)


def test_empty_and_single_image_outputs(tmp_path, image_paths):
    (tmp_path / "bad.jpg").write_bytes(b"")
    embed_files([str(tmp_path / "bad.jpg")], tmp_path / "empty", model=str(TINY), workers=0)
    empty = VectorSet.from_output(tmp_path / "empty")
    with pytest.raises(OutputError, match="holds no vectors"):
        cluster(empty, k=1)
    embed_files([str(image_paths[0])], tmp_path / "one", model=str(TINY), workers=0)
    one = VectorSet.from_output(tmp_path / "one")
    res = cluster(one, k=1)  # trivially one cluster
    assert res.labels.tolist() == [0] and res.distances.tolist() == [0.0]
    with pytest.raises(OutputError, match="only 1 vector"):
        cluster(one, auto=True)
    with pytest.raises(OptionError, match="got only 3 vectors"):
        cluster(VectorSet.from_arrays(np.eye(3, 8)), auto=True)


def test_clusters_file_round_trip(two_class, tmp_path):
    res = cluster(two_class, k=2)
    res.labels[0], res.distances[0] = -1, np.nan  # as HDBSCAN's noise
    path = write_clusters(res, tmp_path / "clusters.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["path", "cluster", "distance"]
    assert table.column("distance").null_count == 1
    back = read_clusters(path)
    assert back.paths == res.paths and np.array_equal(back.labels, res.labels)
    assert np.allclose(back.distances, res.distances, equal_nan=True)
    assert back.method == "kmeans" and back.params["k"] == 2 and back.centroids is None
    with pytest.raises(OptionError, match="not a clusters file"):
        (tmp_path / "junk.parquet").write_bytes(b"junk")
        read_clusters(tmp_path / "junk.parquet")


def test_contact_sheets_show_each_cluster_nearest_first(two_class, tmp_path):
    res = cluster(two_class, k=2)
    written = contact_sheets(res, tmp_path / "sheets", per_sheet=4)
    assert [p.name for p in written] == ["cluster_0.png", "cluster_1.png"]
    for c, path in enumerate(written):
        with Image.open(path) as sheet:
            assert sheet.format == "PNG"
            assert sheet.size == sheet_size(res.sizes()[c], 4)  # a 2 x 2 grid under the title
            first = thumbnail(res.paths[res.members(c)[0]])
            assert first is not None
            # the first tile (top left) is the image nearest the centre, centred in its cell
            x0 = 8 + (128 - first.width) // 2
            y0 = 28 + 8 + (128 - first.height) // 2
            tile = np.asarray(sheet.convert("RGB").crop((x0, y0, x0 + first.width, y0 + first.height)))
            assert np.abs(tile.astype(int) - np.asarray(first, dtype=int)).max() <= 1


def test_contact_sheets_noise_and_unreadable_images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(paths[-1])
    paths.append(str(tmp_path / "gone.jpg"))  # moved away since it was embedded: a placeholder
    res = ClusterResult(
        paths, np.array([0, 0, -1, 0]), np.array([0.1, 0.2, np.nan, 0.3], np.float32), None, "test"
    )
    written = contact_sheets(res, tmp_path / "sheets", per_sheet=36)
    assert [p.name for p in written] == ["cluster_0.png", "noise.png"]
    with Image.open(written[0]) as sheet:
        assert sheet.size == sheet_size(3, 36)  # 6 columns, 1 row
        grey = np.asarray(sheet.convert("RGB"))[28 + 8 + 64, 8 + 2 * 136 + 30]
        assert tuple(grey) == (200, 200, 200)  # the third tile is the placeholder
    with pytest.raises(OptionError, match="per_sheet"):
        contact_sheets(res, tmp_path / "x", per_sheet=0)


def test_thumbnails_are_bounded(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(big)
    img = thumbnail(str(big))
    assert img is not None and max(img.size) == 128 and img.size == (128, 96)
    assert thumbnail(str(tmp_path / "missing.jpg")) is None
    with pytest.raises(OptionError):
        thumbnail(str(big), 1000)
