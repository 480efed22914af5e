"""2-D maps (``analysis.mapping``): UMAP coordinates, the PNG, sampling, colours, files.

Every test that lays out points runs UMAP, whose numba code compiles on first use in a process
(~15 s on 2 CPUs, once); those tests are marked ``slow``."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from imgbeddings import embed_files
from imgbeddings.analysis.cluster import cluster, write_clusters
from imgbeddings.analysis.mapping import (
    _square_box,
    choose_grid,
    make_map,
    palette,
    read_labels,
    sample_rows,
    spread_subset,
    write_coords,
)
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.errors import OptionError, OutputError
from twoclass import TINY, write_classes


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    write_classes(root / "images", per_class=30)
    embed_files([str(root / "images")], root / "out", model=str(TINY), recursive=True, workers=0)
    return VectorSet.from_output(root / "out")


def planted(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 2)[-2] for p in paths]


@pytest.mark.slow
def test_map_png_and_reproducible_coordinates(two_class, tmp_path):
    res = make_map(two_class, tmp_path / "map.png", seed=3)
    with Image.open(tmp_path / "map.png") as png:
        assert png.format == "PNG" and max(png.size) == 1800 and min(png.size) >= 900  # the layout's shape
    assert res.xy.shape == (60, 2) and res.xy.dtype == np.float32 and np.isfinite(res.xy).all()
    assert res.paths == two_class.paths and not res.sampled and res.png == tmp_path / "map.png"
    assert res.thumbnails > 0 and res.color_by == "cluster" and len(set(res.groups)) == 8
    # the planted classes are apart on the map: a point's 2-D neighbours share its class
    knn = cross_val_score(KNeighborsClassifier(5), res.xy, planted(res.paths), cv=5).mean()
    assert knn > 0.9
    again = make_map(two_class, tmp_path / "again.png", seed=3, thumbnails=False, color_by=None)
    assert np.array_equal(again.xy, res.xy)  # same vectors, same seed: same map
    assert again.thumbnails == 0 and again.groups is None
    other = make_map(two_class, tmp_path / "other.png", seed=4, thumbnails=False)
    assert not np.array_equal(other.xy, res.xy)


@pytest.mark.slow
def test_sampling_is_seeded(two_class, tmp_path):
    res = make_map(two_class, tmp_path / "m.png", sample=20, seed=1, thumbnails=False)
    assert len(res) == 20 and res.total == 60 and res.sampled
    assert np.all(np.diff(res.rows) > 0) and res.paths == [two_class.paths[i] for i in res.rows]
    assert np.array_equal(res.rows, sample_rows(60, 20, 1))
    assert not np.array_equal(sample_rows(60, 20, 1), sample_rows(60, 20, 2))
    assert np.array_equal(sample_rows(60, 100, 1), np.arange(60)) and len(sample_rows(60, None, 0)) == 60
    with pytest.raises(OptionError, match="sample must be at least"):
        sample_rows(60, 2, 0)


@pytest.mark.slow
def test_colours_by_folder_label_or_clusters(two_class, tmp_path):
    res = make_map(two_class, tmp_path / "f.png", color_by="folder", thumbnails=False)
    assert res.groups == planted(two_class.paths)
    labels = ["a" if i % 3 else "b" for i in range(60)]
    res = make_map(
        two_class, tmp_path / "l.png", color_by="label", labels=labels, sample=30, thumbnails=False
    )
    assert res.groups == [labels[i] for i in res.rows]
    by_path = {p: "x" for p in two_class.paths[:10]}
    res = make_map(two_class, tmp_path / "m.png", color_by="label", labels=by_path, thumbnails=False)
    assert res.groups.count("x") == 10 and res.groups.count("") == 50
    clusters = cluster(two_class, k=2)
    res = make_map(two_class, tmp_path / "c.png", labels=clusters, thumbnails=False)
    assert sorted(set(res.groups)) == ["0", "1"]
    clusters.labels[:5] = -1
    from_file = read_labels(write_clusters(clusters, tmp_path / "clusters.parquet"))
    res = make_map(two_class, tmp_path / "c.png", color_by="label", labels=from_file, thumbnails=False)
    assert res.groups[:5] == ["noise"] * 5 and set(res.groups) == {"noise", "0", "1"}


def test_colour_options_are_checked(two_class, tmp_path):
    with pytest.raises(OptionError, match="needs labels"):
        make_map(two_class, tmp_path / "x.png", color_by="label")
    with pytest.raises(OptionError, match="got 3 labels for 60 vectors"):
        make_map(two_class, tmp_path / "x.png", color_by="label", labels=["a", "b", "c"])
    with pytest.raises(OptionError, match="color_by must be"):
        make_map(two_class, tmp_path / "x.png", color_by="size")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_coordinates_and_html_files(two_class, tmp_path):
    res = make_map(
        two_class,
        tmp_path / "m.png",
        color_by="folder",
        thumbnails=False,
        coords_out=tmp_path / "m.parquet",
        html_out=tmp_path / "m.html",
    )
    table = pq.read_table(tmp_path / "m.parquet")
    assert table.column_names == ["path", "x", "y", "row", "group"]
    assert table.column("path").to_pylist() == res.paths
    assert np.array_equal(np.stack([table.column("x"), table.column("y")], axis=1), res.xy)
    assert table.schema.metadata[b"imgbeddings.seed"] == b"0"
    page = (tmp_path / "m.html").read_text()
    assert (
        page.count("<circle") == 60
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "red (30)" in page and two_class.paths[0] in page
    write_coords(res, tmp_path / "again.parquet")
    assert pq.read_table(tmp_path / "again.parquet").equals(table)


@pytest.mark.slow
def test_moved_images_are_left_as_dots(two_class, tmp_path):
    vs = VectorSet(
        [str(tmp_path / f"gone{i}.jpg") for i in range(len(two_class))], two_class.vectors, two_class.manifest
    )
    res = make_map(vs, tmp_path / "m.png")
    assert res.thumbnails == 0 and (tmp_path / "m.png").is_file()


@pytest.mark.slow
def test_tiny_sets(tmp_path, image_paths):
    embed_files([str(p) for p in image_paths[:4]], tmp_path / "four", model=str(TINY), workers=0)
    res = make_map(VectorSet.from_output(tmp_path / "four"), tmp_path / "m.png")
    assert res.xy.shape == (4, 2) and np.isfinite(res.xy).all()
    assert res.groups == ["0"] * 4  # at most one k-means cluster per 5 points: not 4 clusters of one


def test_too_few_vectors(tmp_path, image_paths):
    embed_files([str(image_paths[0])], tmp_path / "one", model=str(TINY), workers=0)
    with pytest.raises(OutputError, match=r"cannot make a map: \S*one holds only 1 vector"):
        make_map(VectorSet.from_output(tmp_path / "one"), tmp_path / "m.png")
    with pytest.raises(OptionError, match="needs at least 4"):
        make_map(VectorSet.from_arrays(np.eye(3, 8)), tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def test_spread_subset_takes_one_point_per_cell():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.normal(0, 0.01, (500, 2)), rng.uniform(-1, 1, (50, 2))])
    chosen = spread_subset(xy, grid=10, cap=1000)
    lo, span = _square_box(xy)
    cells = np.minimum(((xy[chosen] - lo) / span * 10).astype(int), 9)
    assert len(chosen) <= 100 and len(chosen) == len({tuple(c) for c in cells})
    assert np.sum(chosen < 500) <= 4  # the dense blob gets a cell's worth, not 500 thumbnails
    assert len(spread_subset(xy, grid=10, cap=5)) == 5
    assert len(spread_subset(xy, grid=10, cap=0)) == 0


def test_labels_files(tmp_path):
    import pyarrow as pa

    pq.write_table(
        pa.table({"path": ["a", "b"], "label": ["cat", "dog"], "p:cat": [0.9, 0.2]}), tmp_path / "p.pq"
    )
    assert read_labels(tmp_path / "p.pq") == {"a": "cat", "b": "dog"}
    pq.write_table(pa.table({"path": ["a"], "x": [1.0]}), tmp_path / "x.pq")
    with pytest.raises(OptionError, match="has no labels"):
        read_labels(tmp_path / "x.pq")


def test_thumbnail_grid_gets_finer_for_tight_clusters():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 1, (2000, 2))
    tight = np.concatenate([rng.normal(c, 0.01, (500, 2)) for c in ((0, 0), (1, 1), (0, 1), (1, 0))])
    assert choose_grid(spread, 10, 30, cap=100) == 10  # spread out: 10 x 10 already fills the cap
    assert choose_grid(tight, 10, 30, cap=100) > 10  # tight piles: finer cells, more thumbnails
    assert len(spread_subset(tight, choose_grid(tight, 10, 30, cap=100), cap=100)) <= 100


def test_palette_greys_noise_and_the_long_tail():
    groups = ["noise", ""] + [f"g{i}" for i in range(25) for _ in range(25 - i)]
    colours = palette(groups)
    assert colours["noise"] == colours[""] == colours["g24"] == "#b0b0b0"
    assert len({colours[f"g{i}"] for i in range(18)}) == 18
