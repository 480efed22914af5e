"""An output folder never silently loses or mixes rows: one writer at a time (a lock), stored
files checked when read back (foreign, damaged, edited, out of date), full disks, shard numbers
past 999999, and file names that are not UTF-8."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MODELS
from imgbeddings import OutputError, OutputLocked, embed_files, load
from imgbeddings.errors import ModelMismatch
from imgbeddings.models.cards import ModelCard, card_path_for
from imgbeddings.store import OutputStore, iter_load, lock_holder, read_manifest, summarize

MODEL = str(MODELS / "tiny_b32_legacy.onnx")
CARD = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy.onnx"))


def ident(card: ModelCard = CARD, **changes) -> dict:
    base = {"model": card.name, "card": card.fingerprint(), "mode": "fast", "normalize": False, "pca": None}
    return {**base, "dim": card.output.dim, **changes}


def vec(seed: int, dim: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def write(out, rows, identity=None, **options) -> OutputStore:
    """A closed output with ``rows``: (path, mtime, vector or None)."""
    store = OutputStore(out, identity or ident(), CARD, **options)
    for path, mtime, vector in rows:
        error = None if vector is not None else "ImageDecodeError"
        store.add(path, 1, mtime, vector, error, None if vector is not None else "bad")
    store.close()
    return store


def shard_rows(out) -> list[str]:
    return [
        p for s in sorted(out.glob("part-*.parquet")) for p in pq.read_table(s).column("path").to_pylist()
    ]


def read_until(stream, text: str, timeout: float = 90) -> bytes:
    """Bytes from a child's pipe until ``text`` shows up (bounded by ``timeout``)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {text!r}; got {seen!r}"
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"the child closed its output before {text!r}: {seen!r}"
            seen += chunk
    return seen


# --- one writer at a time ---------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_or_after_waiting(tmp_path):
    out = tmp_path / "o"
    first = OutputStore(out, ident(), CARD)
    with pytest.raises(
        OutputLocked, match=rf"being written by another imgbeddings run \(PID {os.getpid()} on "
    ):
        OutputStore(out, ident(), CARD)
    try:
        OutputStore(out, ident(), CARD)
    except OutputLocked as exc:
        assert (exc.pid, exc.path) == (os.getpid(), str(out))
        assert str(pickle.loads(pickle.dumps(exc))) == str(exc)
    started = time.monotonic()
    with pytest.warns(RuntimeWarning, match="waiting for it to finish"):
        with pytest.raises(OutputLocked, match=r"still, after waiting 0\.3 s"):
            OutputStore(out, ident(), CARD, wait=0.3)
    assert 0.25 < time.monotonic() - started < 30
    assert lock_holder(out)["pid"] == os.getpid() and summarize(out)["writer"]["pid"] == os.getpid()
    threading.Timer(0.3, first.close).start()
    with pytest.warns(RuntimeWarning, match="waiting"):
        second = OutputStore(out, ident(), CARD, wait=math.inf)  # goes on once the first closes
    second.close()
    assert lock_holder(out) is None and summarize(out)["writer"] is None


def test_the_lock_is_released_on_every_exit_path(tmp_path):
    out = tmp_path / "o"
    write(out, [("/a.jpg", 1, vec(1))])
    with pytest.raises(ModelMismatch):  # refused after locking: unlocked again
        OutputStore(out, ident(mode="exact"), CARD)
    with pytest.raises(KeyboardInterrupt), OutputStore(out, ident(), CARD) as store:
        store.add("/b.jpg", 1, 1, vec(2))
        raise KeyboardInterrupt
    with OutputStore(out, ident(), CARD) as store:  # not blocked; the interrupted run's row was kept
        assert store.status("/b.jpg", 1, 1) == "done"


def test_two_models_on_a_fresh_output_never_mix(tmp_path):
    out = tmp_path / "fresh"
    other = ModelCard.load(card_path_for(MODELS / "tiny_b32_legacy_int8.onnx"))
    first = OutputStore(out, ident(), CARD)
    with pytest.raises(OutputLocked):
        OutputStore(out, ident(other), other)
    threading.Timer(0.3, first.close).start()
    with pytest.warns(RuntimeWarning, match="waiting"), pytest.raises(ModelMismatch):
        OutputStore(out, ident(other), other, wait=60)
    assert read_manifest(out)["identity"] == ident()


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from imgbeddings import embed_files
    out, gate, wait, *images = sys.argv[1:]

    def on_start(todo, skipped):  # the output is locked by now: hold it until the gate opens
        print("started", flush=True)
        deadline = time.monotonic() + 60
        while gate != "-" and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)

    result = embed_files(images, out, model=MODEL, workers=0, threads=1, shard_size=2,
                         wait=None if wait == "-" else float(wait), on_start=on_start)
    print("done", result.counts.embedded, result.counts.skipped, flush=True)
    """
).replace("MODEL", repr(MODEL))


def test_concurrent_runs_on_one_output_refuse_or_queue_and_keep_every_row(tmp_path, image_paths):
    out, gate = tmp_path / "o", tmp_path / "gate"
    images = [str(p) for p in image_paths]

    def run(gate_file, wait, inputs):
        args = [sys.executable, "-c", CHILD, str(out), gate_file, wait, *inputs]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)

    first = run(str(gate), "-", images[:4])
    try:
        read_until(first.stdout, "started")
        refused = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), "-", "-", *images[4:]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0
        assert "OutputLocked" in refused.stderr and f"PID {first.pid} on" in refused.stderr
        queued = run("-", "120", images[3:])  # one file in common with the first run
        try:
            read_until(queued.stderr, f"being written by PID {first.pid}")
            gate.touch()
            first_out, first_err = first.communicate(timeout=120)
            queued_out, queued_err = queued.communicate(timeout=120)
        finally:
            queued.kill()
    finally:
        gate.touch()
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == 0, first_err.decode()
    assert queued.returncode == 0, queued_err.decode()
    assert b"done 4 0" in first_out and b"done 4 1" in queued_out
    data = load(out)
    assert sorted(data.paths) == sorted(images) and len(data.vectors) == 8
    assert sorted(shard_rows(out)) == sorted(images)  # every row exactly once


KILLED = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import pyarrow.parquet as pq
    from imgbeddings.models.cards import ModelCard, card_path_for
    from imgbeddings.store import OutputStore

    real = pq.write_table

    def stuck(table, where, **options):
        real(table, where, **options)  # the temporary file is on disk ...
        print("writing", flush=True)
        time.sleep(60)  # ... when the run is killed

    pq.write_table = stuck
    card = ModelCard.load(card_path_for(sys.argv[2]))
    store = OutputStore(sys.argv[1], json.loads(sys.argv[3]), card, shard_size=2)
    store.add("/a.jpg", 1, 1, np.ones(32, np.float32))
    store.add("/b.jpg", 1, 1, np.ones(32, np.float32))
    """
)


def test_a_writer_killed_mid_shard_leaves_nothing_that_blocks_or_lingers(tmp_path):
    out = tmp_path / "o"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(out), MODEL, json.dumps(ident())], stdout=subprocess.PIPE
    )
    try:
        read_until(child.stdout, "writing")
        temporaries = list(out.glob(f".part-*.{child.pid}.tmp"))
        assert len(temporaries) == 1
        with pytest.raises(OutputLocked, match=f"PID {child.pid}"):
            OutputStore(out, ident(), CARD)
        assert temporaries[0].exists()  # a live writer's file is never touched
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert json.loads((out / "imgbeddings.lock").read_text())["pid"] == child.pid  # stale record
    assert lock_holder(out) is None
    store = OutputStore(out, ident(), CARD)  # at once: the kernel dropped the dead writer's lock
    assert not temporaries[0].exists() and store.status("/a.jpg", 1, 1) == "new"
    store.close()
    assert not list(out.glob(".*.tmp"))


# --- what is read back is checked -------------------------------------------------------------


def test_a_shard_from_another_output_is_refused_reported_and_quarantined(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    write(mine, [("/a.jpg", 1, vec(1)), ("/b.jpg", 1, vec(2))])
    write(theirs, [("/b.jpg", 1, vec(8)), ("/c.jpg", 1, vec(9))], identity=ident(mode="exact"))
    shutil.copy(theirs / "part-000000.parquet", mine / "part-000007.parquet")
    with pytest.raises(OutputError, match=r"part-000007\.parquet belongs to another output.*quarantine"):
        load(mine)
    with pytest.raises(OutputError, match="part-000007"):
        list(iter_load(mine))
    with pytest.warns(RuntimeWarning, match="part-000007"):
        data = load(mine, skip_damaged=True)
    assert data.paths == ["/a.jpg", "/b.jpg"] and np.array_equal(data.vectors[1], vec(2))
    info = summarize(mine)
    assert [name for name, _ in info["damaged"]] == ["part-000007.parquet"] and info["vectors"] == 2
    with pytest.warns(RuntimeWarning, match=r"part-000007\.parquet belongs to another output.*moved to"):
        store = OutputStore(mine, ident(), CARD)
    assert store.status("/b.jpg", 1, 1) == "done" and store.status("/c.jpg", 1, 1) == "new"
    store.close()
    assert (mine / "quarantine" / "part-000007.parquet").is_file()
    assert shard_rows(mine) == ["/a.jpg", "/b.jpg"]  # the genuine shard is untouched
    data = load(mine)
    assert data.paths == ["/a.jpg", "/b.jpg"] and np.array_equal(data.vectors, np.stack([vec(1), vec(2)]))
    assert summarize(mine)["quarantined"] == ["part-000007.parquet"]


def test_a_shard_of_another_width_is_refused(tmp_path):
    write(tmp_path, [("/a.jpg", 1, vec(1))])
    meta = pq.read_schema(tmp_path / "part-000000.parquet").metadata
    table = pa.table(
        {
            "path": ["/x.jpg"],
            "size": pa.array([1], pa.int64()),
            "mtime_ns": pa.array([1], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec(3, 16)), 16),
            "error": pa.array([None], pa.string()),
            "message": pa.array([None], pa.string()),
        }
    ).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "part-000001.parquet")
    with pytest.raises(
        OutputError, match=r"part-000001\.parquet holds vectors of width 16, this output's are 32"
    ):
        load(tmp_path)


def test_an_edited_manifest_is_refused(tmp_path):
    write(tmp_path, [("/a.jpg", 1, vec(1))])
    path = tmp_path / "imgbeddings.json"
    original = json.loads(path.read_text())
    path.write_text(json.dumps({**original, "dim": 16}))
    for read in (read_manifest, load, summarize):
        with pytest.raises(
            OutputError, match=r"edited or damaged \(its dim 16 differs from its identity's 32\)"
        ):
            read(tmp_path)
    with pytest.raises(OutputError, match="edited or damaged"):
        OutputStore(tmp_path, ident(), CARD)
    both = {**original, "dim": 16, "identity": {**original["identity"], "dim": 16}}
    path.write_text(json.dumps(both))
    with pytest.raises(OutputError, match="its identity does not match its fingerprint"):
        load(tmp_path)
    path.write_text('{"dim": ')
    with pytest.raises(OutputError, match="unreadable"):
        load(tmp_path)


def test_a_truncated_shard_is_an_error_naming_it_and_embed_repairs_it(tmp_path, image_paths):
    out, images = tmp_path / "o", [str(p) for p in image_paths]
    embed_files(images, out, model=MODEL, workers=0, shard_size=3)
    shard = out / "part-000001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    fix = r"part-000001\.parquet is truncated or not a Parquet file .*Run `imgbeddings embed` again"
    with pytest.raises(OutputError, match=fix):
        load(out)
    info = summarize(out)
    assert info["damaged"][0][0] == "part-000001.parquet" and info["vectors"] == 5
    with pytest.warns(RuntimeWarning, match=r"part-000001\.parquet is truncated.*moved to .*quarantine"):
        result = embed_files(images, out, model=MODEL, workers=0, shard_size=3)
    assert (result.counts.embedded, result.counts.skipped) == (3, 5)
    assert sorted(load(out).paths) == sorted(images) and summarize(out)["damaged"] == []
    assert (out / "quarantine" / "part-000001.parquet").is_file()
    assert [p.name for p in sorted(out.glob("part-*"))][-1] == "part-000003.parquet"


def test_damaged_vector_pages_are_found_by_readers_info_and_the_next_run(tmp_path):
    write(tmp_path, [(f"/{i}.jpg", 1, vec(i)) for i in range(300)])
    shard = tmp_path / "part-000000.parquet"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2  # inside the vectors' pages; the footer stays intact
    data[middle : middle + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    with pytest.raises(OutputError, match=r"part-000000\.parquet cannot be read .*imgbeddings embed"):
        load(tmp_path)
    assert summarize(tmp_path)["damaged"][0][0] == "part-000000.parquet"
    assert summarize(tmp_path, verify=False)["damaged"] == []  # footers alone look fine
    with pytest.warns(RuntimeWarning, match="cannot be read.*moved to"):
        store = OutputStore(tmp_path, ident(), CARD)
    assert store.status("/1.jpg", 1, 1) == "new"
    store.close()


def test_derived_files_are_used_only_when_built_from_the_current_shards(tmp_path):
    store = OutputStore(tmp_path, ident(), CARD)
    store.add("/a.jpg", 1, 1, vec(1))
    store.add("/b.jpg", 1, 1, vec(2))
    store.close(npy=True)
    record = json.loads((tmp_path / "embeddings.json").read_text())
    assert record["rows"] == 2 and isinstance(load(tmp_path).vectors, np.memmap)
    # a run that changed /a.jpg and failed on /c.jpg is killed before it closes
    store = OutputStore(tmp_path, ident(), CARD)
    store.add("/a.jpg", 1, 2, vec(9))
    store.add("/c.jpg", 1, 1, None, "ImageDecodeError", "truncated")
    store.flush()
    store._lock.release()
    info = summarize(tmp_path)
    assert sorted(info["stale"]) == ["embeddings.npy", "failures.parquet"]
    assert [f.source for f in info["failures"]] == ["/c.jpg"]  # derived from the shards
    with pytest.warns(RuntimeWarning, match="not in step with the shards"):
        data = load(tmp_path)  # the npy still has 2 rows, like the shards: not enough to use it
    assert not isinstance(data.vectors, np.memmap)
    assert dict(zip(data.paths, map(tuple, data.vectors), strict=True))["/a.jpg"] == tuple(vec(9))
    assert [f.source for f in data.failures] == ["/c.jpg"]
    OutputStore(tmp_path, ident(), CARD).close()  # the next run rebuilds what the folder has
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load(tmp_path)
    assert isinstance(data.vectors, np.memmap) and summarize(tmp_path)["stale"] == []
    assert data.paths == ["/b.jpg", "/a.jpg"] and np.array_equal(data.vectors[1], vec(9))
    (tmp_path / "paths.txt").write_bytes(b"/x\n/y\n")  # edited by hand
    with pytest.warns(RuntimeWarning, match="not in step"):
        assert load(tmp_path).paths == ["/b.jpg", "/a.jpg"]


def test_an_output_path_that_is_a_file_is_one_clean_error(tmp_path, image_paths):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"")
    for call in (
        lambda: OutputStore(target, ident(), CARD),
        lambda: embed_files([str(image_paths[0])], target, model=MODEL, workers=0),
        lambda: load(target),
        lambda: summarize(target),
    ):
        with pytest.raises(OutputError, match=r"out\.parquet (exists and )?is (not a folder|a file)"):
            call()


# --- full disks --------------------------------------------------------------------------------


def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_a_shard_is_one_error_and_keeps_the_previous_state(tmp_path, monkeypatch):
    store = OutputStore(tmp_path, ident(), CARD, shard_size=2)
    store.add("/a.jpg", 1, 1, vec(1))
    store.add("/b.jpg", 1, 1, vec(2))
    real = pq.write_table

    def half_then_full(table, where, **options):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a shard")
        _enospc()

    monkeypatch.setattr(pq, "write_table", half_then_full)
    store.add("/c.jpg", 1, 1, vec(3))
    with pytest.raises(
        OutputError, match=rf"no space left on the device of output {tmp_path}: writing part-000001"
    ):
        store.add("/d.jpg", 1, 1, vec(4))
    try:
        store.add("/d.jpg", 1, 1, vec(4))
    except OutputError as exc:
        assert re.search(r"needs about [\d.]+ (bytes|kB), .* free", str(exc)) and "resumes" in str(exc)
    store.abort()
    monkeypatch.setattr(pq, "write_table", real)
    assert not list(tmp_path.glob(".*.tmp")) and load(tmp_path).paths == ["/a.jpg", "/b.jpg"]
    with OutputStore(tmp_path, ident(), CARD) as again:  # resumes: the lost rows are simply new
        assert again.status("/c.jpg", 1, 1) == "new" and again.status("/b.jpg", 1, 1) == "done"


def test_a_full_disk_while_writing_the_npy_is_one_error(tmp_path, monkeypatch):
    store = OutputStore(tmp_path, ident(), CARD)
    store.add("/a.jpg", 1, 1, vec(1))
    store.close(npy=True)
    store = OutputStore(tmp_path, ident(), CARD)
    store.add("/b.jpg", 1, 1, vec(2))
    monkeypatch.setattr(os, "posix_fallocate", _enospc, raising=False)
    with pytest.raises(OutputError, match=r"no space .*writing embeddings\.npy needs about"):
        store.close(npy=True)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.warns(RuntimeWarning, match="not in step"):  # the old npy is kept, and known to be old
        assert load(tmp_path).paths == ["/a.jpg", "/b.jpg"]
    OutputStore(tmp_path, ident(), CARD).close()  # not locked; the next run rebuilds it
    assert isinstance(load(tmp_path).vectors, np.memmap)


@contextlib.contextmanager
def small_filesystem(path, size: str):
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a small tmpfs here ({exc}); the monkeypatched disk-full tests cover this")
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({done.stderr.strip()}); the monkeypatched tests cover it"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_real_full_file_system(tmp_path):
    rows = [(f"/{i}.jpg", 1, vec(i)) for i in range(2000)]  # ~260 kB of vectors
    with small_filesystem(tmp_path / "small", "1m") as mnt:
        out = mnt / "o"
        write(out, rows)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 40_000))
        store = OutputStore(out, ident(), CARD, shard_size=2000)
        with pytest.raises(OutputError, match="no space left on the device of output"):
            for path, _, vector in rows:
                store.add(path.replace("/", "/new-"), 1, 1, vector)
        store.abort()
        assert not list(out.glob(".*.tmp")) and len(load(out)) == 2000
        filler.unlink()
        filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 120_000))
        store = OutputStore(out, ident(), CARD)
        with pytest.raises(OutputError, match=r"writing embeddings\.npy needs about 2\d\d\.\d kB"):
            store.close(npy=True)  # an error, not a SIGBUS
        assert not list(out.glob(".*.tmp")) and not (out / "embeddings.npy").exists()
        assert len(load(out)) == 2000


# --- shard names and file names --------------------------------------------------------------


def test_shard_numbers_past_999999_keep_their_order_and_are_never_reused(tmp_path):
    store = OutputStore(tmp_path, ident(), CARD, shard_size=2)
    store.add("/a.jpg", 1, 1, vec(1))
    store.add("/b.jpg", 1, 1, vec(2))
    store.add("/a.jpg", 1, 2, vec(9))  # the newer row of /a.jpg, in the next shard
    store.flush()
    store._superseded.clear()  # as if killed before the older row was dropped
    store._lock.release()
    os.rename(tmp_path / "part-000000.parquet", tmp_path / "part-999999.parquet")
    os.rename(tmp_path / "part-000001.parquet", tmp_path / "part-1000000.parquet")
    data = load(tmp_path)
    assert data.paths == ["/b.jpg", "/a.jpg"] and np.array_equal(data.vectors[1], vec(9))
    with OutputStore(tmp_path, ident(), CARD) as store:
        assert store.status("/a.jpg", 1, 2) == "done"
        store.add("/c.jpg", 1, 1, vec(3))
    assert [p.name for p in store.shards()] == [
        "part-999999.parquet",
        "part-1000000.parquet",
        "part-1000001.parquet",
    ]
    data = load(tmp_path)
    assert data.paths == ["/b.jpg", "/a.jpg", "/c.jpg"]
    assert np.array_equal(data.vectors, np.stack([vec(2), vec(9), vec(3)]))


def test_file_names_that_are_not_utf8_are_embedded_and_round_trip(tmp_path, image_paths):
    folder = tmp_path / "archive"
    folder.mkdir()
    latin1 = os.path.join(folder, os.fsdecode(b"caf\xe9.jpg"))
    broken = os.path.join(folder, os.fsdecode(b"\xffbroken.jpg"))
    shutil.copy(image_paths[0], latin1)
    shutil.copy(image_paths[1], folder / "plain.jpg")
    with open(broken, "wb") as fh:
        fh.write(b"not an image")
    out = tmp_path / "o"
    result = embed_files([str(folder)], out, model=MODEL, workers=0, npy=True)
    assert (result.counts.embedded, result.counts.failed) == (2, 1)
    for data in (load(out), load(out, use_npy=False)):
        assert sorted(data.paths) == sorted([latin1, str(folder / "plain.jpg")])
        assert [f.source for f in data.failures] == [broken]
    assert isinstance(load(out).vectors, np.memmap)
    with open(latin1, "rb") as fh:  # the loaded name opens the very file
        assert fh.read() == image_paths[0].read_bytes()
    streamed = [p for paths, _ in iter_load(out) for p in paths]
    assert latin1 in streamed
    readable = shard_rows(out)
    assert str(folder / "caf\\xe9.jpg") in readable and str(folder / "\\xffbroken.jpg") in readable
    listed = [os.fsdecode(line) for line in (out / "paths.txt").read_bytes().split(b"\n")[:-1]]
    assert listed == load(out).paths
    again = embed_files([str(folder)], out, model=MODEL, workers=0)
    assert (again.counts.embedded, again.counts.failed, again.counts.skipped) == (0, 0, 3)
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert [os.fsdecode(f["path_bytes"]) for f in failures] == [broken]


def test_outputs_written_before_path_bytes_stay_readable(tmp_path):
    write(tmp_path, [("/a.jpg", 1, vec(1)), ("/b.jpg", 1, None)])
    for shard in tmp_path.glob("part-*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["path_bytes"]), shard)
    data = load(tmp_path)
    assert data.paths == ["/a.jpg"] and [f.source for f in data.failures] == ["/b.jpg"]
    with OutputStore(tmp_path, ident(), CARD) as store:
        assert store.status("/a.jpg", 1, 1) == "done"
        store.add("/a.jpg", 1, 5, vec(5))  # rewrites the old shard without its old row
    assert load(tmp_path).paths == ["/a.jpg"] and np.array_equal(load(tmp_path).vectors[0], vec(5))


def test_resume_reads_each_shard_through_once(tmp_path, monkeypatch):
    """Footers and schemas are checked on every open; the vectors' pages only for shards not yet
    checked (a resume of a large output must not re-read all of it), and again once a file changes."""
    from imgbeddings import shards

    out = tmp_path / "o"
    write(out, [(f"/{i}.jpg", i, vec(i)) for i in range(6)], shard_size=2)
    (out / ".verified.json").unlink()  # as an output written before this record existed
    seen: list[tuple[str, bool]] = []
    real = shards.inspect_shard

    def spy(out_dir, name, listed, fingerprint, dim, columns, verify=False):
        seen.append((name, verify))
        return real(out_dir, name, listed, fingerprint, dim, columns, verify)

    monkeypatch.setattr(shards, "inspect_shard", spy)
    OutputStore(out, ident(), CARD).close()
    first = [v for name, v in seen if name.startswith("part-")][:3]
    assert first == [True, True, True]  # nothing recorded: each shard read through once
    seen.clear()
    OutputStore(out, ident(), CARD).close()
    assert seen and not any(v for _, v in seen)  # all recorded: footers and small columns only
    seen.clear()
    victim = sorted(out.glob("part-*.parquet"))[1]
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    OutputStore(out, ident(), CARD).close()
    assert [name for name, v in seen if v] == [victim.name]
