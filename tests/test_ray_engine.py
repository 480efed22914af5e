"""The Ray engine (:mod:`imgbeddings.ray_engine`): the same output folder and vectors as the local
job, failure rows for bad files, resuming, and one row per input when an actor dies."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import imgbeddings  # noqa: E402
from conftest import MODELS, cosine  # noqa: E402
from imgbeddings.job import embed_files  # noqa: E402
from imgbeddings.ray_engine import embed_files_ray  # noqa: E402
from imgbeddings.store import read_manifest  # noqa: E402

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def photos(tmp_path, image_paths):
    """The test images twice over: 16 files, under distinct names."""
    folder = tmp_path / "in"
    folder.mkdir()
    for copy in range(2):
        for p in image_paths:
            shutil.copy(p, folder / f"{copy}_{p.name}")
    return sorted(folder.iterdir())


def _by_path(out):
    emb = imgbeddings.load(out)
    return {str(p): v for p, v in zip(emb.paths, emb.vectors, strict=True)}, emb


def test_same_output_as_local(tmp_path, photos):
    paths = [str(p) for p in photos]
    local = embed_files(paths, tmp_path / "local", model=MODEL, workers=0, threads=1)
    remote = embed_files_ray(paths, tmp_path / "ray", model=MODEL, actors=2, batch_size=5)
    assert remote.counts.embedded == local.counts.embedded == len(paths)
    assert remote.complete and remote.workers == 2
    mine, theirs = read_manifest(tmp_path / "ray"), read_manifest(tmp_path / "local")
    assert mine["fingerprint"] == theirs["fingerprint"]
    assert mine["identity"] == theirs["identity"]
    a, emb = _by_path(tmp_path / "ray")
    b, _ = _by_path(tmp_path / "local")
    assert sorted(a) == sorted(b) == sorted(paths)
    keys = sorted(a)
    sims = cosine(np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys]))
    assert sims.min() >= 0.99999
    assert emb.vectors.dtype == np.float32 and len(emb.failures) == 0
    # the tall image is reported as an extreme aspect, as locally
    assert sorted(p for p, _ in remote.extreme_aspect) == sorted(p for p, _ in local.extreme_aspect)


def test_broken_files_are_failure_rows(tmp_path, photos):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.png"
    paths = [str(p) for p in photos[:3]] + [str(bad), str(missing)]
    local = embed_files(paths, tmp_path / "local", model=MODEL, workers=0, threads=1)
    result = embed_files_ray(paths, tmp_path / "ray", model=MODEL, actors=1, cpus_per_actor=2)
    assert result.counts.embedded == 3 and result.counts.failed == 2 and not result.complete
    assert {f.error for f in result.failures} == {f.error for f in local.failures}
    emb = imgbeddings.load(tmp_path / "ray")
    assert len(emb.vectors) == 3
    assert sorted((f.error, f.message) for f in emb.failures) == sorted(
        (f.error, f.message) for f in imgbeddings.load(tmp_path / "local").failures
    )


def test_resume_adds_only_missing(tmp_path, photos):
    paths = [str(p) for p in photos]
    half = len(paths) // 2
    out = tmp_path / "out"
    first = embed_files(paths[:half], out, model=MODEL, workers=0, threads=1)
    assert first.counts.embedded == half
    second = embed_files_ray(paths, out, model=MODEL)  # actors: the cluster's CPUs
    assert second.counts.skipped == half and second.counts.embedded == len(paths) - half
    assert second.workers == 2 and second.threads == 1
    third = embed_files_ray(paths, out, model=MODEL, actors=2)
    assert third.counts.skipped == len(paths) and third.counts.embedded == 0
    emb = imgbeddings.load(out)
    assert sorted(map(str, emb.paths)) == sorted(paths)


def test_killed_actor_still_one_row_per_input(tmp_path, photos):
    paths = [str(p) for p in photos]
    marker = tmp_path / "crashed"
    result = embed_files_ray(
        paths, tmp_path / "out", model=MODEL, actors=1, batch_size=4, _faults={"kill_once": str(marker)}
    )
    assert marker.exists()  # an actor did die mid-job
    assert result.counts.embedded == len(paths) and result.complete
    emb = imgbeddings.load(tmp_path / "out")
    assert sorted(map(str, emb.paths)) == sorted(paths)
    local = embed_files(paths, tmp_path / "local", model=MODEL, workers=0, threads=1)
    assert local.counts.embedded == len(paths)
    a, _ = _by_path(tmp_path / "out")
    b, _ = _by_path(tmp_path / "local")
    sims = cosine(np.stack([a[k] for k in paths]), np.stack([b[k] for k in paths]))
    assert sims.min() >= 0.99999


def test_missing_ray_is_missing_extra(monkeypatch, tmp_path):
    import sys

    from imgbeddings.errors import MissingExtra
    from imgbeddings.ray_engine import _ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"imgbeddings\[ray\]"):
        _ray()


def test_cli_engine_ray(tmp_path, image_paths, capsys):
    from test_cli import run

    out = tmp_path / "out"
    args = ["embed", *map(str, image_paths[:4]), "-o", str(out), "-m", MODEL]
    code, stdout, err = run([*args, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "1"], capsys)
    assert code == 0 and stdout.strip() == str(out) and "Ray actor(s)" in err, err
    local = tmp_path / "local"
    embed_files([str(p) for p in image_paths[:4]], local, model=MODEL, workers=0)
    a, b = imgbeddings.load(out), imgbeddings.load(local)
    assert sorted(a.paths) == sorted(b.paths)
    rows = [b.paths.index(p) for p in a.paths]
    assert cosine(a.vectors, b.vectors[rows]).min() >= 0.99999
    one = ["embed", str(image_paths[0]), "-o", str(tmp_path / "x")]
    code, _, err = run([*one, "--engine", "ray", "--strict"], capsys)
    assert code == 2 and "--strict" in err and "Traceback" not in err
    code, _, err = run(["embed", str(image_paths[0]), "-o", str(tmp_path / "y"), "--actors", "2"], capsys)
    assert code == 2 and "--engine ray" in err


def test_input_that_kills_its_actor_is_a_failure_row(tmp_path, photos):
    paths = [str(p) for p in photos]
    poison = photos[5].name
    result = embed_files_ray(
        paths, tmp_path / "out", model=MODEL, actors=1, batch_size=4, _faults={"poison": poison}
    )
    assert [(f.source, f.error) for f in result.failures] == [(paths[5], "WorkerCrashed")]
    assert "died" in result.failures[0].message
    assert result.counts.embedded == len(paths) - 1
    emb = imgbeddings.load(tmp_path / "out")
    assert sorted(map(str, emb.paths)) == sorted(p for p in paths if p != paths[5])
    assert [(str(f.source), f.error) for f in emb.failures] == [(paths[5], "WorkerCrashed")]


def test_hung_decode_is_abandoned(tmp_path, photos):
    paths = [str(p) for p in photos[:6]]
    hung = photos[2].name
    result = embed_files_ray(
        paths, tmp_path / "out", model=MODEL, actors=1, cpus_per_actor=2, item_timeout=1.0,
        _faults={"hang": hung},
    )  # fmt: skip
    assert [(f.source, f.error) for f in result.failures] == [(paths[2], "WorkerCrashed")]
    assert "took over 1 s" in result.failures[0].message
    assert result.counts.embedded == 5


def test_retried_batch_rows_are_written_once(tmp_path, photos):
    """The driver's side of a retried batch: the same rows answered twice are stored once."""
    from imgbeddings.job import open_output
    from imgbeddings.ray_engine import _Rows, _Writes

    emb = imgbeddings.Embedder(MODEL, threads=1)
    store = open_output(tmp_path / "out", emb, MODEL, None, shard_size=4, wait=None)
    paths = [str(p) for p in photos[:3]]
    rows = _Rows.of({"path": np.array(paths, dtype=object)}, frozenset(), emb.dim)
    rows.ok[:2], rows.vectors[:2] = True, emb.embed(paths[:2])
    rows.fail(2, "ImageDecodeError", "broken")
    answered = []
    writes = _Writes(store, on_batch=lambda n, f: answered.append((n, len(f))))
    writes.take([rows.columns(), rows.columns()])
    store.close()
    assert answered == [(3, 1)] and len(writes.failures) == 1
    out = imgbeddings.load(tmp_path / "out")
    assert sorted(map(str, out.paths)) == sorted(paths[:2]) and len(out.failures) == 1


def test_s3_prefix_with_storage_options(tmp_path, photos):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from s3_helpers import s3_bucket

    files = {f"in/{p.name}": p for p in photos[:6]}
    files["in/broken.png"] = b"\x89PNG but not really"
    with s3_bucket(files) as s3:  # no AWS_* variables: the options reach the driver and the actors
        out = tmp_path / "out"
        result = embed_files_ray(
            ["s3://photos/in/"], out, model=MODEL, actors=1, batch_size=3, storage_options=s3["options"]
        )
        assert result.counts.embedded == 6 and [f.error for f in result.failures] == ["ImageDecodeError"]
        again = embed_files_ray(["s3://photos/in"], out, model=MODEL, storage_options=s3["options"])
        assert again.counts.skipped == 7 and again.counts.embedded == 0
        # a path-only Dataset of the same URIs: the actors stat and read them with the options,
        # so a run over the prefix afterwards finds every object done (same name, size, mtime)
        named = tmp_path / "named"
        uris_ds = ray.data.from_items([{"path": f"s3://photos/in/{p.name}"} for p in photos[:6]])
        first = embed_files_ray(uris_ds, named, model=MODEL, actors=1, storage_options=s3["options"])
        assert first.counts.embedded == 6
        listed = embed_files_ray(["s3://photos/in/"], named, model=MODEL, storage_options=s3["options"])
        assert listed.counts.skipped == 6 and listed.counts.embedded == 0 and listed.counts.failed == 1
    assert embed_files([str(p) for p in photos[:6]], tmp_path / "local", model=MODEL, workers=0).complete
    a, b = imgbeddings.load(out), imgbeddings.load(tmp_path / "local")
    assert sorted(map(str, a.paths)) == sorted(f"s3://photos/in/{p.name}" for p in photos[:6])
    by_name = {str(p).rsplit("/", 1)[-1]: v for p, v in zip(a.paths, a.vectors, strict=True)}
    names = [str(p).rsplit("/", 1)[-1] for p in b.paths]
    assert cosine(np.stack([by_name[n] for n in names]), b.vectors).min() >= 0.99999


def test_ray_dataset_input(tmp_path, photos):
    folder = photos[0].parent
    (folder / "broken.jpg").write_bytes(b"nope")
    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    out = tmp_path / "out"
    result = embed_files_ray(ds, out, model=MODEL, actors=2)
    assert result.counts.embedded == len(photos) and [f.error for f in result.failures] == [
        "ImageDecodeError"
    ]
    assert embed_files([str(p) for p in photos], tmp_path / "local", model=MODEL, workers=0).complete
    a, b = _by_path(out)[0], _by_path(tmp_path / "local")[0]
    assert sorted(a) == sorted(b)  # read_binary_files gives local paths as they are
    keys = sorted(a)
    assert cosine(np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])).min() >= 0.99999
    # a rerun skips the rows whose path is in the output; a path-only Dataset is read by the actors
    again = embed_files_ray(ray.data.read_binary_files(str(folder), include_paths=True), out, model=MODEL)
    assert again.counts.skipped == len(photos) + 1 and again.counts.embedded == 0
    fresh = tmp_path / "by_path"
    names = ray.data.from_items([{"path": str(p)} for p in photos[:5]])
    by_path = embed_files_ray(names, fresh, model=MODEL, actors=1)
    assert by_path.counts.embedded == 5
    rows = read_manifest(fresh)
    assert rows["fingerprint"] == read_manifest(out)["fingerprint"]
    from imgbeddings.errors import OptionError

    with pytest.raises(OptionError, match="'path' column"):
        embed_files_ray(ray.data.from_items([{"file": "x.jpg"}]), tmp_path / "nope", model=MODEL)
    assert not (tmp_path / "nope").exists()
