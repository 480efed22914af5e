"""Nearest-neighbour search (``analysis.search``) and the index beside an output (``analysis.index``):
exact search against brute force, indexes against exact search, queries of every kind, and an
index that is never used once the output has changed."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS
from imgbeddings import Embedder, ModelMismatch, OptionError, OutputError, OutputLocked, embed_files
from imgbeddings.analysis import index as index_mod
from imgbeddings.analysis import search as search_mod
from imgbeddings.analysis.index import (
    FLAT_BELOW,
    INDEX_DIR,
    RECORD,
    build_index,
    check_index,
    estimate_bytes,
    open_index,
    plan_index,
)
from imgbeddings.analysis.search import SearchResult, exact_search, search
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.errors import ImageDecodeError, ImageNotFound
from imgbeddings.folderlock import FolderLock
from imgbeddings.models.cards import ModelCard, card_path_for
from imgbeddings.store import OutputStore

MODEL = str(MODELS / "tiny_b32_legacy.onnx")
CARD = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy.onnx"))


# --- helpers -----------------------------------------------------------------------------------


def brute_force(vectors, paths, query, k, skip=None):
    """The reference: every cosine in float64, ordered by score then path."""
    x = np.asarray(vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    q = np.asarray(query, np.float64)
    q = q / max(np.linalg.norm(q), 1e-30)
    scores = x @ q
    order = sorted((i for i in range(len(paths)) if paths[i] != skip), key=lambda i: (-scores[i], paths[i]))
    return [(paths[i], float(scores[i])) for i in order[:k]]


def hits(result: SearchResult):
    return [(h.path, h.score) for h in result.results]


def assert_same(got, want, atol=1e-5):
    assert [p for p, _ in got] == [p for p, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=atol)


def identity(dim=32, **changes):
    base = {"model": CARD.name, "card": CARD.fingerprint(), "mode": "fast", "normalize": False, "pca": None}
    return {**base, "dim": dim, **changes}


def clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 100), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def synthetic_output(path, vectors, *, shard_size=500, prefix="/img/", **changes):
    """An output folder holding these vectors (as `embed` would store them), paths /img/00000.jpg..."""
    with OutputStore(path, identity(vectors.shape[1], **changes), CARD, shard_size=shard_size) as store:
        for i, v in enumerate(vectors):
            store.add(f"{prefix}{i:05d}.jpg", 100, i, v)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory, image_paths):
    """The test images plus made ones: a copy (same pixels, another name), a resized near-copy,
    flat colours, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    for p in image_paths:
        shutil.copy(p, folder / p.name)
    shutil.copy(image_paths[0], folder / "zz_copy_of_first.jpg")
    with Image.open(image_paths[1]) as im:
        im.resize((im.width // 2, im.height // 2)).save(folder / "half_size.png")
    for name, colour in [("red", (220, 20, 20)), ("green", (20, 200, 40)), ("blue", (30, 30, 210))]:
        Image.new("RGB", (96, 80), colour).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def out(tmp_path_factory, photos):
    """An output of the photos (one failure: broken.jpg)."""
    folder = tmp_path_factory.mktemp("out") / "o"
    result = embed_files([str(photos)], folder, model=MODEL, workers=0)
    assert result.counts.failed == 1
    return folder


@pytest.fixture
def fresh(tmp_path, out):
    """A private copy of the photos' output (tests that change it)."""
    copy = tmp_path / "o"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(INDEX_DIR))
    return copy


# --- exact search ----------------------------------------------------------------------------


def test_exact_search_equals_brute_force(out):
    vs = VectorSet.from_output(out)
    assert len(vs) == 13 and not any(p.endswith("broken.jpg") for p in vs.paths)  # the failure has no row
    results = search(out, vs.paths, k=5)
    assert [r.query for r in results] == vs.paths
    for vector, result in zip(vs.vectors, results, strict=True):
        assert result.ok and result.source == "stored" and result.method == "exact"
        assert [h.rank for h in result.results] == [1, 2, 3, 4, 5]
        assert_same(hits(result), brute_force(vs.vectors, vs.paths, vector, 5))
    for result in search(vs, vs.paths, k=3, exclude_self=True):
        assert all(h.path != result.query for h in result.results) and len(result.results) == 3
        own = vs.vectors[vs.paths.index(result.query)]
        want = brute_force(vs.vectors, vs.paths, own, 3, skip=result.query)
        assert_same(hits(result), want)


def test_exact_search_on_an_output_streams_its_shards(tmp_path, monkeypatch):
    """No index: the shards are read one at a time (never the whole matrix via load()); with a
    current embeddings.npy, it is memory-mapped instead. Both equal brute force."""
    x = clustered(1500)
    streamed = synthetic_output(tmp_path / "o", x, shard_size=200)
    paths = [f"/img/{i:05d}.jpg" for i in range(len(x))]
    want = [brute_force(x, paths, x[i], 6) for i in (0, 700, 1499)]
    import imgbeddings.store

    monkeypatch.setattr(imgbeddings.store, "load", None)  # used only with an npy
    results = search(streamed, [paths[0], paths[700], x[1499]], k=6, index=False)
    for result, expected in zip(results, want, strict=True):
        assert_same(hits(result), expected)
    monkeypatch.undo()
    with OutputStore(tmp_path / "o", identity(), CARD) as store:
        store.close(npy=True)
    assert (tmp_path / "o" / "embeddings.npy").is_file()
    results = search(streamed, [paths[0], paths[700], x[1499]], k=6, index=False)
    for result, expected in zip(results, want, strict=True):
        assert_same(hits(result), expected)


def test_equal_scores_come_out_by_path_even_at_the_cut(monkeypatch):
    """One-hot vectors give exactly equal scores whatever the summation order; blocks are forced
    small so the tied rows are spread over many blocks."""
    monkeypatch.setattr(search_mod, "BLOCK_BYTES", 1)  # the smallest blocks (256 rows)
    rng = np.random.default_rng(0)
    n = 2000
    vectors = np.zeros((n, 8), np.float32)
    vectors[np.arange(n), rng.integers(0, 8, n)] = 1.0
    paths = [f"/p/{i:04d}" for i in rng.permutation(n)]
    vs = VectorSet.from_arrays(vectors, paths)
    query = np.eye(8, dtype=np.float32)[3]
    tied = sorted(p for p, v in zip(paths, vectors, strict=True) if v[3] == 1)
    (result,) = search(vs, [query], k=7)
    assert [h.path for h in result.results] == tied[:7] and all(h.score == 1.0 for h in result.results)
    zero = search(vs, [np.zeros(8, np.float32)], k=4)[0]  # all scores 0: the first paths
    assert [h.path for h in zero.results] == sorted(paths)[:4]
    scores, rows = exact_search(query[None], vectors, 3)  # no paths: ties by row
    assert rows.tolist() == [sorted(i for i in range(n) if vectors[i, 3] == 1)[:3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0]]


def test_exact_search_in_blocks_equals_one_product(monkeypatch):
    x, q = clustered(3000, 48, seed=1), clustered(40, 48, seed=2)
    paths = [f"/v/{i:05d}" for i in range(len(x))]
    whole_scores, whole_rows = exact_search(q, x, 10, paths)
    monkeypatch.setattr(search_mod, "BLOCK_BYTES", 1)
    scores, rows = exact_search(q, x, 10, paths)
    assert np.array_equal(rows, whole_rows) and np.allclose(scores, whole_scores, atol=1e-6)
    for i in range(len(q)):
        assert [paths[r] for r in rows[i]] == [p for p, _ in brute_force(x, paths, q[i], 10)]


# --- queries -----------------------------------------------------------------------------------


def test_vector_path_and_image_queries(out, photos, monkeypatch):
    vs = VectorSet.from_output(out)
    first = str(photos / "big_1600x1200.jpg")
    monkeypatch.chdir(photos)
    emb = Embedder(MODEL)
    new_image = photos.parent / "not_in_output.png"
    with Image.open(photos / "odd_333x301.jpg") as im:
        im.rotate(90, expand=True).save(new_image)
    queries = [
        vs.vectors[vs.paths.index(first)],  # a vector
        "big_1600x1200.jpg",  # relative path of a stored file: its stored vector
        str(new_image),  # an image the output does not hold: embedded
        new_image.read_bytes(),  # the same as bytes
        [float(v) for v in vs.vectors[0]],  # a vector as a list
    ]
    results = search(out, queries, k=4)
    assert [r.source for r in results] == ["vector", "stored", "image", "image", "vector"]
    assert results[0].query == "<vector #0>" and results[1].query == "big_1600x1200.jpg"
    assert hits(results[0])[0] == (first, pytest.approx(1.0, abs=1e-5))
    assert_same(hits(results[1]), hits(results[0]))
    embedded = emb.embed(str(new_image))[0]
    assert_same(hits(results[2]), brute_force(vs.vectors, vs.paths, embedded, 4))
    assert_same(hits(results[3]), hits(results[2]))
    assert hits(results[4])[0][0] == vs.paths[0]


def test_exclude_self_and_exact_copies(out, photos, image_paths):
    first, copy = str(photos / image_paths[0].name), str(photos / "zz_copy_of_first.jpg")
    (with_self,) = search(out, [first], k=3)
    assert [h.path for h in with_self.results[:2]] == [first, copy]  # equal scores: by path
    assert with_self.results[0].score == pytest.approx(with_self.results[1].score, abs=1e-6)
    (without,) = search(out, [first], k=3, exclude_self=True)
    assert without.results[0].path == copy and first not in [h.path for h in without.results]
    assert len(without.results) == 3
    (vector,) = search(out, [VectorSet.from_output(out).vectors[0]], k=2, exclude_self=True)
    assert len(vector.results) == 2  # a vector query has no row of its own


def test_a_query_that_fails_is_reported_and_the_others_answered(out, photos, tmp_path):
    missing = str(tmp_path / "gone.jpg")
    results = search(out, [str(photos / "broken.jpg"), missing, str(photos / "red.png")], k=2)
    assert isinstance(results[0].error, ImageDecodeError) and results[0].results == []
    assert isinstance(results[1].error, ImageNotFound) and "not in the output" in results[1].error.reason
    assert results[2].ok and results[2].results[0].path == str(photos / "red.png")
    data = results[0].to_json()
    assert data["query"] == str(photos / "broken.jpg") and data["results"] == []
    assert data["error"]["type"] == "ImageDecodeError"
    assert json.loads(json.dumps([r.to_json() for r in results]))[2]["results"][0]["rank"] == 1


def test_to_json_shape(out):
    (result,) = search(out, [VectorSet.from_output(out).paths[0]], k=2)
    data = result.to_json()
    assert set(data) == {"query", "results"}
    assert [set(h) for h in data["results"]] == [{"rank", "path", "score"}] * 2
    assert data["results"][0]["rank"] == 1 and isinstance(data["results"][0]["score"], float)


def test_a_query_model_that_differs_is_refused(out, photos, tmp_path):
    other = Embedder(str(MODELS / "tiny_b32_legacy_int8.onnx"))
    with pytest.raises(ModelMismatch, match="model: the output has 'tiny_b32_legacy'"):
        search(out, [str(photos.parent / "nowhere.png"), str(photos / "red.png")], embedder=other)
    with pytest.raises(ModelMismatch, match="normalisation"):
        search(out, [str(photos / "red.png")], embedder=Embedder(MODEL, normalize=True))
    with pytest.raises(OptionError, match="16-d vector, the vectors searched 32-d"):
        search(out, [np.ones(16, np.float32)])
    vs = VectorSet.from_output(out)
    new = tmp_path / "new.png"
    shutil.copy(photos / "red.png", new)
    with pytest.raises(OptionError, match="embedder="):
        search(vs, [str(new)])
    (ok,) = search(vs, [new], k=1, embedder=Embedder(MODEL))  # a Path; the embedder checked against vs
    assert ok.source == "image" and ok.results[0].path == str(photos / "red.png")
    assert ok.results[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(OptionError, match="k must be"):
        search(vs, [vs.vectors[0]], k=0)


def test_empty_and_one_image_outputs(tmp_path, photos):
    empty = tmp_path / "empty"
    embed_files([str(photos / "broken.jpg")], empty, model=MODEL, workers=0)
    assert len(VectorSet.from_output(empty)) == 0
    (result,) = search(empty, [np.ones(32, np.float32)], k=5)
    assert result.ok and result.results == []
    info = build_index(empty)
    assert (info.kind, info.rows) == ("flat", 0)
    assert search(empty, [np.ones(32, np.float32)], index=True)[0].results == []
    one = tmp_path / "one"
    embed_files([str(photos / "red.png")], one, model=MODEL, workers=0)
    for index in (False, None):
        if index is None:
            build_index(one, kind="hnsw")
        (r,) = search(one, [str(photos / "red.png")], k=10, index=index)
        assert [h.path for h in r.results] == [str(photos / "red.png")]
        (r,) = search(one, [str(photos / "red.png")], k=10, exclude_self=True, index=index)
        assert r.results == []


# --- indexes --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_gives_the_exact_top_k_on_small_data(fresh, kind):
    vs = VectorSet.from_output(fresh)
    exact = search(fresh, vs.paths, k=5, index=False)
    info = build_index(fresh, kind=kind)
    assert info.kind == ("flat" if kind == "ivf" else kind)  # IVF needs >= 1024 vectors to train
    assert info.action == "built" and info.rows == len(vs)
    assert info.recall == (1.0 if info.kind == "flat" else None)  # 13 rows: too few to measure recall
    with_index = search(fresh, vs.paths, k=5)
    assert {r.method for r in with_index} == {info.kind}
    for a, b in zip(with_index, exact, strict=True):
        assert_same(hits(a), hits(b))


@pytest.mark.parametrize("kind", ["hnsw", "ivf-flat", "ivf-pq"])
def test_approximate_indexes_reach_their_recall(tmp_path, kind):
    x = clustered(3100)
    synthetic_output(tmp_path / "o", x[:3000])
    if kind == "ivf-pq":  # 16 bytes a vector here: below the target, said so
        with pytest.warns(RuntimeWarning, match=r"reaches recall@10 0\.\d+ at most"):
            info = build_index(tmp_path / "o", kind=kind)
    else:
        info = build_index(tmp_path / "o", kind=kind)
    assert info.kind == kind and info.rows == 3000
    queries = x[3000:]  # like the stored vectors, but not stored
    exact = search(tmp_path / "o", queries, k=10, index=False)
    approx = search(tmp_path / "o", queries, k=10)
    assert {r.method for r in approx} == {kind}
    found = [
        ({h.path for h in a.results}, {h.path for h in e.results}) for a, e in zip(approx, exact, strict=True)
    ]
    recall = np.mean([len(a & e) / 10 for a, e in found])
    if kind == "ivf-pq":  # compressed vectors: recall is measured and recorded, not promised
        assert 0 < info.recall <= 1 and recall > 0.3
    else:
        key = "efSearch" if kind == "hnsw" else "nprobe"
        assert info.params[key] >= 1 and info.recall >= index_mod.TARGET_RECALL and recall >= 0.9
    for a in approx:
        assert [h.score for h in a.results] == sorted((h.score for h in a.results), reverse=True)


def test_auto_choice_follows_size_and_memory_budget():
    assert plan_index(1000, 768) == ("flat", {})
    assert plan_index(FLAT_BELOW, 768, memory_budget_mb=10_000) == ("ivf-flat", {})
    assert plan_index(FLAT_BELOW, 768, kind="hnsw") == ("hnsw", {"M": 32, "efConstruction": 40})
    flat_mb = estimate_bytes("flat", 1_000_000, 768) / 2**20
    small_flat_mb = estimate_bytes("flat", 50_000, 768) / 2**20
    assert plan_index(50_000, 768, memory_budget_mb=small_flat_mb / 10)[0] == "ivf-pq"  # flat does not fit
    assert plan_index(1_000_000, 768, memory_budget_mb=flat_mb * 1.1)[0] == "ivf-flat"
    kind, params = plan_index(1_000_000, 768, memory_budget_mb=200)
    assert kind == "ivf-pq" and 768 % params["pq_m"] == 0
    assert estimate_bytes("ivf-pq", 1_000_000, 768, params["pq_m"]) <= 200 * 2**20
    assert plan_index(50_000, 768, memory_budget_mb=20) == ("ivf-pq", {"pq_m": 128, "pq_nbits": 8})
    with pytest.raises(OptionError, match="memory budget"):
        plan_index(1_000_000, 768, memory_budget_mb=1)
    with pytest.raises(OptionError, match="memory budget"):
        plan_index(1_000_000, 768, kind="flat", memory_budget_mb=100)
    with pytest.raises(OptionError, match="unknown index kind"):
        plan_index(10, 8, kind="annoy")


def test_an_index_is_used_only_while_the_output_is_unchanged(fresh, photos, tmp_path):
    info = build_index(fresh)
    assert check_index(fresh).current and open_index(fresh) is not None
    assert build_index(fresh).action == "current"
    new = tmp_path / "new.png"
    Image.new("RGB", (64, 64), (200, 200, 20)).save(new)
    embed_files([str(new)], fresh, model=MODEL, workers=0)  # the output grows
    status = check_index(fresh)
    assert not status.current and "changed since the index was built" in status.reason
    assert open_index(fresh) is None
    (r,) = search(fresh, [str(new)], k=1)  # a stale index is never used: exact, and sees the new row
    assert r.method == "exact" and r.results[0].path == str(new)
    with pytest.raises(OutputError, match="no current index"):
        search(fresh, [str(new)], index=True)
    updated = build_index(fresh)
    assert (updated.action, updated.added, updated.removed, updated.rows) == ("updated", 1, 0, info.rows + 1)
    (r,) = search(fresh, [str(new)], k=1)
    assert r.method == "flat" and r.results[0].path == str(new)
    assert open_index(fresh, build=True) is not None


def test_changed_and_removed_rows_are_dropped_from_the_index(tmp_path):
    x = clustered(1200)
    out = synthetic_output(tmp_path / "o", x)
    for run, kind in enumerate(("flat", "hnsw", "ivf-flat")):
        build_index(out, kind=kind, rebuild=True)
        with OutputStore(out, identity(), CARD) as store:  # /img/00003.jpg changed: now x[7]'s vector
            store.add("/img/00003.jpg", 100, 10**6 + run, x[7])
        info = build_index(out, kind=kind)
        assert (info.action, info.added, info.removed, info.rows) == ("updated", 1, 1, 1200)
        (r,) = search(out, [x[7]], k=3)
        assert r.method == kind and [h.path for h in r.results[:2]] == ["/img/00003.jpg", "/img/00007.jpg"]
        assert r.results[0].score == pytest.approx(1.0, abs=1e-5)
        assert len({h.path for h in r.results}) == 3  # the old row is gone, never a duplicate
        (r,) = search(out, ["/img/00003.jpg"], k=1, exclude_self=True)  # its stored vector is the new one
        assert r.results[0].path == "/img/00007.jpg"
    record = json.loads((out / INDEX_DIR / RECORD).read_text())
    assert record["kind"] == "ivf-flat" and record["tombstones"] == 0


def test_hnsw_keeps_tombstones_then_rebuilds(tmp_path, monkeypatch):
    x = clustered(500)
    out = synthetic_output(tmp_path / "o", x, shard_size=100)
    build_index(out, kind="hnsw")
    shard = out / "part-000000.parquet"
    import pyarrow.parquet as pq

    from imgbeddings.shards import atomic_write_table

    table = pq.read_table(shard)
    atomic_write_table(table.slice(10), shard)  # 10 rows removed from the output
    info = build_index(out, kind="hnsw")
    assert (info.action, info.removed, info.rows) == ("updated", 10, 490)
    assert json.loads((out / INDEX_DIR / RECORD).read_text())["tombstones"] == 10
    (r,) = search(out, [x[0]], k=20)  # removed rows never come back
    assert r.method == "hnsw" and not {h.path for h in r.results} & {f"/img/{i:05d}.jpg" for i in range(10)}
    assert_same(hits(r), hits(search(out, [x[0]], k=20, index=False)[0]))
    atomic_write_table(table.slice(60), shard)  # 60 removed: over 10 % of the graph
    info = build_index(out, kind="hnsw")
    assert (info.action, info.rows) == ("built", 440)
    assert json.loads((out / INDEX_DIR / RECORD).read_text())["tombstones"] == 0


def test_an_index_for_other_vectors_or_with_damaged_files_is_refused(fresh, photos, tmp_path):
    build_index(fresh)
    moved = tmp_path / "kept_index"
    shutil.move(fresh / INDEX_DIR, moved)
    shutil.rmtree(fresh)
    embed_files([str(photos)], fresh, model=MODEL, workers=0, normalize=True)  # same files, other vectors
    shutil.move(moved, fresh / INDEX_DIR)
    status = check_index(fresh)
    assert not status.current and "built for other vectors" in status.reason
    assert open_index(fresh) is None and search(fresh, [str(photos / "red.png")])[0].method == "exact"
    assert build_index(fresh).action == "built"
    record = json.loads((fresh / INDEX_DIR / RECORD).read_text())
    faiss_file = fresh / INDEX_DIR / record["index_file"]
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # damaged
    assert "missing or damaged" in check_index(fresh).reason and open_index(fresh) is None
    assert build_index(fresh).action == "built" and open_index(fresh) is not None


def test_index_files_are_replaced_whole_and_leftovers_removed(fresh):
    folder = fresh / INDEX_DIR
    build_index(fresh, kind="flat")
    (folder / ".index-dead.faiss.999999999.tmp").write_bytes(b"x")  # a killed build's temporary
    (folder / "index-0123456789abcdef.faiss").write_bytes(b"x")  # files of a build never recorded
    build_index(fresh, kind="hnsw")
    record = json.loads((folder / RECORD).read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [RECORD, record["index_file"], record["ids_file"], "imgbeddings.lock"]
    )
    lock = FolderLock(folder)
    lock.acquire(None)
    try:
        with pytest.raises(OutputLocked):
            build_index(fresh, rebuild=True)
        assert open_index(fresh) is not None  # readers need no lock
    finally:
        lock.release()


def test_a_shard_replaced_while_building_is_read_again(fresh, monkeypatch):
    from imgbeddings.shards import Changed

    real, calls = index_mod._shard_vectors, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Changed("part-000000.parquet")
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_shard_vectors", flaky)
    assert build_index(fresh).action == "built" and len(calls) > 1
    monkeypatch.setattr(index_mod, "_shard_vectors", lambda *a, **k: (_ for _ in ()).throw(Changed("x")))
    monkeypatch.setattr(index_mod.time, "sleep", lambda s: None)
    with pytest.raises(OutputError, match="kept changing while the index was built"):
        build_index(fresh, rebuild=True)
    assert open_index(fresh) is not None  # the index built before is still there, whole


def test_not_an_output(tmp_path):
    with pytest.raises(OutputError, match="not an imgbeddings output"):
        build_index(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(OutputError, match="not an imgbeddings output"):
        search(tmp_path / "nothing", [np.ones(4)])


def test_without_faiss_search_is_exact(fresh, monkeypatch):
    build_index(fresh)
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)
    vs = VectorSet.from_output(fresh)
    (r,) = search(fresh, [vs.paths[0]], k=2)
    assert r.method == "exact"
    with pytest.raises(ImportError, match=r"imgbeddings\[analysis\]"):
        build_index(fresh, rebuild=True)


def test_paths_that_are_not_utf8_round_trip(tmp_path):
    x = clustered(20)
    name = os.fsdecode(b"/img/caf\xe9-")
    out = synthetic_output(tmp_path / "o", x, prefix=name)
    build_index(out)
    (r,) = search(out, [f"{name}00004.jpg"], k=1)
    assert r.source == "stored" and r.method == "flat" and r.results[0].path == f"{name}00004.jpg"
