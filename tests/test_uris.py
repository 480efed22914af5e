"""URIs as inputs (:mod:`imgbeddings.uris`): listing a prefix like a folder, stat for the resume
rule, concurrent reads with per-object errors, and the local job reading ``s3://`` objects from a
real S3 stand-in (moto's server on loopback)."""

from __future__ import annotations

import datetime as dt
import shutil

import fsspec
import numpy as np
import pytest

import imgbeddings
from conftest import MODELS, cosine
from imgbeddings import uris
from imgbeddings.errors import ImageNotFound
from imgbeddings.inputs import canonical_path, entries, expand
from imgbeddings.job import embed_files

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


@pytest.fixture
def memory_store(image_paths):
    """Three images and a text file in fsspec's in-memory store, under memory://store/."""
    fs = fsspec.filesystem("memory")
    fs.pipe("/store/a.jpg", image_paths[0].read_bytes())
    fs.pipe("/store/notes.txt", b"not an image")
    fs.pipe("/store/sub/b[1].png", image_paths[1].read_bytes())
    fs.pipe("/store/sub/deeper/c.JPG", image_paths[2].read_bytes())
    yield fs
    fs.rm("/store", recursive=True)


def test_what_is_a_uri(tmp_path):
    assert uris.protocol("s3://b/k.jpg") == "s3" and uris.protocol("GS://b") == "gs"
    assert uris.is_uri("s3://b/k.jpg") and uris.is_uri("https://host/x.png")
    for local in ("photo.jpg", "/abs/x.png", "C:/x.png", "a://", "file:///tmp/x.jpg", b"s3://x"):
        assert not uris.is_uri(local), local
    assert uris.local_path(f"file://{tmp_path}/x.jpg") == f"{tmp_path}/x.jpg"
    assert uris.local_path("s3://b/k") == "s3://b/k"


def test_file_uris_are_local_paths(tmp_path, image_paths):
    for p in image_paths[:3]:
        shutil.copy(p, tmp_path / p.name)
    as_uri = list(entries([f"file://{tmp_path}"]))
    as_path = list(entries([str(tmp_path)]))
    assert as_uri == as_path and len(as_path) == 3
    assert all(size > 0 and mtime > 0 for _, size, mtime in as_path)


def test_prefix_listed_like_a_folder(memory_store):
    flat = list(expand(["memory://store/"]))
    deep = list(expand(["memory://store"], recursive=True))
    # names in fsspec's canonical form (the memory store's root is "/")
    assert flat == ["memory:///store/a.jpg"] and uris.canonical("memory://store/a.jpg") == flat[0]
    assert deep == [
        "memory:///store/a.jpg",
        "memory:///store/sub/b[1].png",
        "memory:///store/sub/deeper/c.JPG",
    ]
    listed = list(entries(["memory://store"], recursive=True))
    named = list(entries(deep))  # one by one: stat'ed, not listed
    assert [e[:2] for e in listed] == [e[:2] for e in named]
    assert all(size == memory_store.info(u[len("memory://") :])["size"] for u, size, _ in listed)
    # a missing object is an input like a missing file: -1, -1 (its failure is recorded later)
    assert list(entries(["memory://store/gone.jpg"])) == [("memory:///store/gone.jpg", -1, -1)]


def test_read_many_keeps_order_and_errors(memory_store, image_paths):
    got = uris.read_many(["memory://store/a.jpg", "memory://store/nope.jpg", "memory://store/sub/b[1].png"])
    assert got[0] == image_paths[0].read_bytes() and got[2] == image_paths[1].read_bytes()
    assert isinstance(got[1], ImageNotFound) and "memory://store/nope.jpg" in str(got[1])
    with pytest.raises(ImageNotFound, match="no such object"):
        uris.read("memory://store/nope.jpg")


def test_mtime_from_any_store():
    when = dt.datetime(2026, 11, 30, 10, 0, 0, 500_000, tzinfo=dt.timezone.utc)
    whole = int(when.replace(microsecond=0).timestamp()) * 10**9
    assert uris._mtime_ns({"LastModified": when}) == whole  # s3fs
    assert uris._mtime_ns({"updated": "2026-11-30T10:00:00.500Z"}) == whole  # gcsfs
    assert uris._mtime_ns({"mtime": when.timestamp()}) == whole  # local, sftp
    assert uris._mtime_ns({"size": 3}) == -1  # plain HTTP keeps none


def test_unknown_protocol(image_paths):
    # planning a job: a usage error; one input among others: that input's failure
    with pytest.raises(imgbeddings.errors.OptionError, match="nosuchproto"):
        list(entries(["nosuchproto://x/y.jpg"]))
    got = uris.read_many(["nosuchproto://x/y.jpg", f"file://{image_paths[0]}"])
    assert isinstance(got[0], imgbeddings.errors.ImageDecodeError) and got[1] == image_paths[0].read_bytes()
    emb = imgbeddings.Embedder(MODEL, threads=1)
    batch = emb.embed_with_failures(["nosuchproto://x/y.jpg", str(image_paths[0])])
    assert [f.error for f in batch.failures] == ["ImageDecodeError"] and batch.ok.tolist() == [False, True]


def test_embedder_reads_a_uri(memory_store, image_paths):
    emb = imgbeddings.Embedder(MODEL, threads=1)
    from_uri = emb.embed(["memory://store/a.jpg"])
    from_file = emb.embed([str(image_paths[0])])
    assert cosine(from_uri, from_file).min() >= 0.99999


def test_local_job_reads_s3(tmp_path, image_paths, monkeypatch):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from s3_helpers import s3_bucket

    files = {f"in/{p.name}": p for p in image_paths[:4]}
    files["in/broken.jpg"] = b"not an image"
    # decode workers started before the credentials are set (their forkserver keeps the
    # environment it started with) must still see them
    local = embed_files([str(p) for p in image_paths[:4]], tmp_path / "local", model=MODEL, workers=1)
    assert local.counts.embedded == 4
    with s3_bucket(files) as s3:
        for name, value in s3["env"].items():  # the local job reads the store's own configuration
            monkeypatch.setenv(name, value)
        listed = tmp_path / "list.txt"
        listed.write_text("s3://photos/in/gone.png\n")
        out = tmp_path / "out"
        # workers=1: the objects are read in a decode worker process, as they are by default
        result = embed_files(["s3://photos/in/", str(listed)], out, model=MODEL, workers=1, threads=1)
        assert result.counts.embedded == 4 and result.counts.failed == 2
        assert {(f.source, f.error) for f in result.failures} == {
            ("s3://photos/in/broken.jpg", "ImageDecodeError"),
            ("s3://photos/in/gone.png", "ImageNotFound"),
        }
        again = embed_files(["s3://photos/in/"], out, model=MODEL, workers=0, threads=1)
        assert again.counts.skipped == 5 and again.counts.embedded == 0  # the listing's stat = the rows'
    a, b = imgbeddings.load(out), imgbeddings.load(tmp_path / "local")
    by_name = {str(p).rsplit("/", 1)[-1]: v for p, v in zip(a.paths, a.vectors, strict=True)}
    assert sorted(map(str, a.paths)) == sorted(f"s3://photos/{k}" for k in files if "broken" not in k)
    names = [str(p).rsplit("/", 1)[-1] for p in b.paths]
    assert cosine(np.stack([by_name[n] for n in names]), b.vectors).min() >= 0.99999
    assert canonical_path(str(image_paths[0])) == str(image_paths[0])


def test_store_without_credentials_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from s3_helpers import s3_bucket
    from test_cli import run

    with s3_bucket({"in/a.jpg": b"x"}) as s3:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3["env"]["AWS_ENDPOINT_URL"])
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        out = tmp_path / "out"
        for uri in ("s3://photos/in/", "s3://photos/in/a.jpg"):  # a listing; one object's stat
            code, stdout, err = run(["embed", uri, "-o", str(out), "-m", MODEL], capsys)
            assert code == 1 and stdout == "", err
            assert err.startswith(f"store unavailable: {uri}") and "NoCredentialsError" in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
            assert not out.exists()
