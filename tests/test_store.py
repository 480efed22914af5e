"""Resumable Parquet output: atomic shards, skip/redo logic, model mismatch, loading."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MODELS
from imgbeddings import load
from imgbeddings.errors import Failure, ImageDecodeError, ModelMismatch, OutputError
from imgbeddings.models.cards import ModelCard, card_path_for
from imgbeddings.store import OutputStore, iter_load

CARD = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy.onnx"))


def ident(card: ModelCard = CARD, **changes) -> dict:
    """An output identity as ``Embedder.identity()`` gives it."""
    base = {"model": card.name, "card": card.fingerprint(), "mode": "fast", "normalize": False, "pca": None}
    return {**base, "dim": card.output.dim, **changes}


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=32).astype(np.float32)


def test_rows_shards_and_load(tmp_path):
    store = OutputStore(tmp_path, ident(mode="exact"), CARD, shard_size=3)
    for i in range(7):
        store.add(f"/img/{i}.jpg", 100 + i, 1000 + i, vec(i))
    store.add("/img/bad.jpg", 5, 6, None, "ImageDecodeError", "truncated")
    counts = store.close()
    assert (counts.embedded, counts.failed, counts.shards_written) == (7, 1, 3)
    assert [p.name for p in store.shards()] == [
        "part-000000.parquet",
        "part-000001.parquet",
        "part-000002.parquet",
    ]
    assert not list(tmp_path.glob(".*tmp"))
    table = pq.read_table(tmp_path / "part-000000.parquet")
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 32 and kind.value_type == pa.float32()
    manifest = load(tmp_path).manifest
    assert table.schema.metadata[b"imgbeddings.fingerprint"].decode() == manifest["fingerprint"]
    assert manifest["identity"] == ident(mode="exact")
    out = load(tmp_path)
    assert out.paths == [f"/img/{i}.jpg" for i in range(7)]
    assert np.array_equal(out.vectors, np.stack([vec(i) for i in range(7)]))
    assert out.failures == [Failure(None, "/img/bad.jpg", "ImageDecodeError", "truncated")]
    assert isinstance(out.failures[0].to_error(), ImageDecodeError)
    failures = pq.read_table(tmp_path / "failures.parquet").to_pylist()
    assert failures == [
        {
            "path": "/img/bad.jpg",
            "error": "ImageDecodeError",
            "message": "truncated",
            "path_bytes": b"/img/bad.jpg",
        }
    ]
    streamed = list(iter_load(tmp_path))
    assert sum(len(p) for p, _ in streamed) == 7


def test_status_and_superseded_rows(tmp_path):
    store = OutputStore(tmp_path, ident(mode="fast"), CARD, shard_size=10)
    store.add("/a.jpg", 1, 1, vec(1))
    store.add("/b.jpg", 2, 2, None, "ImageDecodeError", "bad")
    store.close()
    again = OutputStore(tmp_path, ident(mode="fast"), CARD)
    assert again.status("/a.jpg", 1, 1) == "done"
    assert again.status("/b.jpg", 2, 2) == "failed"
    assert again.status("/a.jpg", 1, 99) == "changed"
    assert again.status("/c.jpg", 1, 1) == "new"
    again.add("/a.jpg", 1, 99, vec(9))  # the file changed: new row, old one dropped
    again.close()
    out = load(tmp_path)
    assert out.paths == ["/a.jpg"] and np.array_equal(out.vectors[0], vec(9))
    rows = [r for s in again.shards() for r in pq.read_table(s).column("path").to_pylist()]
    assert sorted(rows) == ["/a.jpg", "/b.jpg"]


def test_duplicates_left_by_a_killed_run_are_repaired(tmp_path):
    store = OutputStore(tmp_path, ident(mode="fast"), CARD, shard_size=1)
    store.add("/a.jpg", 1, 1, vec(1))
    store.add("/a.jpg", 1, 2, vec(2))  # second shard; pretend the run died before dropping the first row
    store._superseded.clear()
    store.flush()
    store._lock.release()  # the run dies here (the kernel drops its lock)
    assert len(store.shards()) == 2
    assert load(tmp_path).paths == ["/a.jpg"]  # the loader already keeps only the newest row
    OutputStore(tmp_path, ident(mode="fast"), CARD)  # opening repairs the files themselves
    rows = [
        r
        for s in sorted(tmp_path.glob("part-*.parquet"))
        for r in pq.read_table(s).column("path").to_pylist()
    ]
    assert rows == ["/a.jpg"] and np.array_equal(load(tmp_path).vectors[0], vec(2))


def test_vectors_made_otherwise_are_refused_naming_what_differs(tmp_path):
    OutputStore(tmp_path, ident(), CARD).close()
    other = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy_int8.onnx"))
    with pytest.raises(ModelMismatch, match="model: the output has 'tiny_b32_legacy', this run 'tiny_b32_le"):
        OutputStore(tmp_path, ident(other), other)
    with pytest.raises(ModelMismatch, match=r"mode.*the output has mode fast, this run mode exact") as err:
        OutputStore(tmp_path, ident(mode="exact"), CARD)
    assert "model" not in str(err.value).split("(", 1)[1]
    with pytest.raises(ModelMismatch, match=r"normalisation.*not normalised, this run L2-normalised"):
        OutputStore(tmp_path, ident(normalize=True), CARD)
    with pytest.raises(ModelMismatch, match=r"PCA.*no PCA, this run PCA abc.*vector width"):
        OutputStore(tmp_path, ident(pca="abc", dim=4), CARD)
    OutputStore(tmp_path, ident(), CARD).close()  # the same identity appends


def test_leftover_temp_files_are_removed_and_foreign_folders_refused(tmp_path):
    OutputStore(tmp_path / "o", ident(mode="fast"), CARD).close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    (tmp_path / "o" / f".part-000009.parquet.{dead.pid}.tmp").write_bytes(b"half a file")
    (tmp_path / "o" / ".embeddings.npy.tmp").write_bytes(b"left by an older version")
    live = tmp_path / "o" / f".part-000010.parquet.{os.getppid()}.tmp"  # a live process's: kept
    live.write_bytes(b"being written")
    OutputStore(tmp_path / "o", ident(mode="fast"), CARD).close()
    assert list((tmp_path / "o").glob(".*.tmp")) == [live]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "part-000000.parquet").write_bytes(b"")
    with pytest.raises(OutputError, match=r"no imgbeddings\.json"):
        OutputStore(tmp_path / "f", ident(mode="fast"), CARD)
    with pytest.raises(OutputError, match="not an imgbeddings output"):
        load(tmp_path / "f")


def test_npy_export_is_memory_mapped(tmp_path):
    store = OutputStore(tmp_path, ident(mode="fast"), CARD)
    for i in range(5):
        store.add(f"/{i}.png", i, i, vec(i))
    store.close(npy=True)
    out = load(tmp_path)
    assert isinstance(out.vectors, np.memmap) and out.paths == [f"/{i}.png" for i in range(5)]
    assert np.array_equal(np.asarray(out.vectors), np.stack([vec(i) for i in range(5)]))
    assert (tmp_path / "paths.txt").read_text().splitlines() == out.paths
