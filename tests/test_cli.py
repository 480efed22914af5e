"""The command line: embed (good and broken files, resume, incremental, strict, kill -9),
models, info, export errors. In-process through ``cli.main`` plus the real entry point in
subprocesses where a process boundary matters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import MODELS
from imgbeddings import Embedder, load
from imgbeddings.cli import main

MODEL = str(MODELS / "tiny_b32_legacy.onnx")  # fp32: vectors do not depend on batch-mates
OTHER = str(MODELS / "tiny_b32_legacy_int8.onnx")


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def photos(tmp_path, image_paths):
    """A folder of good photos (one in a sub-folder) and broken files."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for p in image_paths[:5]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "sub" / "nested.PNG").write_bytes(image_paths[5].read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "fake.png").write_text("<html>")
    data = image_paths[0].read_bytes()
    (folder / "cut.jpg").write_bytes(data[:2000])
    (folder / "album.jpg").mkdir()
    os.symlink(folder / "gone.jpg", folder / "broken.jpg")
    return folder


def rows(out) -> list[str]:
    return [
        r for s in sorted(out.glob("part-*.parquet")) for r in pq.read_table(s).column("path").to_pylist()
    ]


def test_embed_folder_with_broken_files(photos, tmp_path, capsys, image_paths):
    out = tmp_path / "out"
    code, stdout, err = run(
        ["embed", str(photos), "-o", str(out), "-m", MODEL, "-r", "--no-progress"], capsys
    )
    assert code == 6, err  # finished, some inputs failed
    assert stdout.strip() == str(out)
    assert "embedded 6, skipped 0 (already done), failed 5" in err
    assert "time split: decode" in err and "failed " + str(photos / "fake.png") in err
    data = load(out)
    assert sorted(os.path.basename(p) for p in data.paths) == sorted(
        [p.name for p in image_paths[:5]] + ["nested.PNG"]
    )
    failures = {
        os.path.basename(f["path"]): f["error"] for f in pq.read_table(out / "failures.parquet").to_pylist()
    }
    assert failures == {
        "empty.jpg": "ImageDecodeError",
        "fake.png": "ImageDecodeError",
        "cut.jpg": "ImageDecodeError",
        "album.jpg": "ImageNotFound",
        "broken.jpg": "ImageNotFound",
    }
    fast = Embedder(MODEL, mode="fast")
    by_path = dict(zip(data.paths, data.vectors, strict=True))
    nested = str(photos / "sub" / "nested.PNG")
    assert np.allclose(by_path[nested], fast.embed(nested)[0], atol=1e-4)


def test_rerun_skips_and_embeds_only_new_or_changed_files(photos, tmp_path, capsys, image_paths):
    out = tmp_path / "out"
    args = ["embed", str(photos), "-o", str(out), "-m", MODEL, "--no-progress"]
    run(args, capsys)
    code, _, err = run(args, capsys)
    assert "nothing to embed: 10 file(s) already done" in err  # 5 photos, 5 broken
    assert "img/s" not in err and "time split" not in err
    # the output still lacks vectors for the 5 broken inputs: say so, and exit 6 (not 0)
    assert code == 6 and "5 input(s) failed in an earlier run and are unchanged: not retried" in err
    (photos / "new.png").write_bytes(image_paths[6].read_bytes())
    changed = photos / image_paths[1].name
    changed.write_bytes(image_paths[7].read_bytes())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    code, _, err = run(args, capsys)
    assert "embedded 2, skipped 9" in err
    assert sorted(rows(out)) == sorted(set(rows(out)))  # one row per file
    fresh = Embedder(MODEL, mode="fast").embed(str(changed))[0]
    data = load(out)
    assert np.allclose(dict(zip(data.paths, data.vectors, strict=True))[str(changed)], fresh, atol=1e-4)
    code, _, err = run([*args, "--retry-failed"], capsys)
    assert code == 6 and "embedded 0, skipped 6 (already done), failed 5" in err  # broken ones tried again


def test_strict_stops_at_the_first_bad_input(photos, tmp_path, capsys):
    code, _, err = run(
        ["embed", str(photos), "-o", str(tmp_path / "o"), "-m", MODEL, "--strict", "--no-progress"], capsys
    )
    assert code == 7 and "stopped at a bad input" in err and "Traceback" not in err


def test_lists_stdin_npy_and_mismatched_model(photos, tmp_path, capsys, monkeypatch, image_paths):
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p in image_paths[:3]) + "\n")
    out = tmp_path / "o"
    code, _, err = run(
        ["embed", str(listing), "-o", str(out), "-m", MODEL, "--format", "npy", "--no-progress"], capsys
    )
    assert code == 0 and np.load(out / "embeddings.npy").shape == (3, 32)
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{image_paths[4]}\n"))
    code, _, err = run(
        ["embed", "-", "-o", str(out), "-m", MODEL, "--format", "npy", "--no-progress"], capsys
    )
    assert code == 0 and len(load(out)) == 4
    code, _, err = run(["embed", str(listing), "-o", str(out), "-m", OTHER], capsys)
    assert code == 8 and "model: the output has 'tiny_b32_legacy', this run 'tiny_b32_legacy_int8'" in err
    code, _, err = run(["embed", str(listing), "-o", str(out), "-m", MODEL, "--exact"], capsys)
    assert (
        code == 8 and "preprocessing mode" in err and "the output has mode fast, this run mode exact" in err
    )
    assert "model:" not in err


def test_models_and_info(tmp_path, capsys, image_paths):
    code, stdout, _ = run(["models"], capsys)
    assert code == 0 and "patch32_v1" in stdout and "not downloaded" in stdout
    code, stdout, _ = run(["info", MODEL], capsys)
    assert code == 0 and '"kind": "legacy"' in stdout and "fingerprint" in stdout
    out = tmp_path / "o"
    run(["embed", str(image_paths[0]), str(tmp_path / "nope.jpg"), "-o", str(out), "-m", MODEL], capsys)
    code, stdout, _ = run(["info", str(out)], capsys)
    assert code == 0 and "1 x 32 float32" in stdout and "nope.jpg: ImageNotFound" in stdout
    assert "made with    mode fast (fingerprint" in stdout


def test_unknown_model_is_one_clear_line(tmp_path, capsys, image_paths):
    code, _, err = run(
        ["embed", str(image_paths[0]), "-o", str(tmp_path / "o"), "-m", "nope/nope/x.bin"], capsys
    )
    assert code == 5 and "no model" in err and "Traceback" not in err


def test_kill_9_then_rerun_gives_exactly_one_row_per_input(tmp_path):
    """SIGKILL in the middle of a job, then the same command again: every input has exactly
    one row, no temporary file is left, and completed shards were not redone."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "imgbeddings",
        "embed",
        str(folder),
        "-o",
        str(out),
        "-m",
        MODEL,
        "--batch-size",
        "2",
        "--shard-size",
        "20",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("part-*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(first) < 30
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"skipped {20 * len(first)} (already done)" in again.stderr
    paths = rows(out)
    assert len(paths) == len(set(paths)) == 600
    assert not list(out.glob(".*tmp"))
    assert all((out / name).stat().st_mtime_ns == ns for name, ns in first.items())  # not rewritten
    assert load(out).vectors.shape == (600, 32)


def test_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "imgbeddings", "embed", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--output" in proc.stdout and "resum" in proc.stdout


# --- usage errors, version, logs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "x.jpg", "-o", "out", "--bogus"],  # unknown option
        ["embed", "x.jpg"],  # missing -o
        ["embed", "x.jpg", "-o", "out", "--batch-size", "abc"],  # malformed value
        ["embed", "x.jpg", "-o", "out", "--batch-size", "0"],  # out of range
        ["embed", "x.jpg", "-o", "out", "--shard-size", "0"],
        ["embed", "x.jpg", "-o", "out", "--format", "tiff"],
        ["embed", "x.jpg", "-o", "out", "--pca", "no-such.npz"],
        ["embd", "x.jpg"],  # unknown command
        [],  # no arguments: the help, as a usage error
    ],
)
def test_usage_errors_are_short_and_exit_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(args, capsys)
    assert code == 2, (stdout, err)
    assert "Traceback" not in err + stdout and not (tmp_path / "out").exists()
    if args:
        assert len(err.strip().splitlines()) <= 8 and ("Usage:" in err or "Error" in err), err


def test_usage_error_from_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "imgbeddings", "embed", "x.jpg", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--bogus" in proc.stderr


def test_version(capsys):
    import imgbeddings

    code, stdout, _ = run(["--version"], capsys)
    assert code == 0 and stdout.strip() == f"imgbeddings {imgbeddings.__version__}"


def test_options_that_cannot_fit_the_model_are_usage_errors(tmp_path, capsys, image_paths):
    from imgbeddings import fit_pca

    pca = fit_pca(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32), 4)  # 16-d, model is 32-d
    pca.save(tmp_path / "pca16.npz")
    out = tmp_path / "o"
    code, _, err = run(
        ["embed", str(image_paths[0]), "-o", str(out), "-m", MODEL, "--pca", str(tmp_path / "pca16.npz")],
        capsys,
    )
    assert code == 2 and "invalid option" in err and "16-d" in err and not out.exists()


def test_logs_when_stderr_is_not_a_terminal(tmp_path, capsys, image_paths, monkeypatch):
    """One unwrapped line per failure (whatever the width), and plain progress lines."""
    from imgbeddings import cli

    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setattr(cli.embed, "PROGRESS_EVERY", 0.0)
    folder = tmp_path / ("a-rather-long-folder-name-" * 4)
    folder.mkdir()
    for i, p in enumerate(image_paths):
        (folder / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    (folder / "zz-broken-file-with-a-long-name.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, _, err = run(
        ["embed", str(folder), "-o", str(tmp_path / "o"), "-m", MODEL, "--batch-size", "2"], capsys
    )
    assert code == 6
    lines = err.splitlines()
    bad = str(folder / "zz-broken-file-with-a-long-name.jpg")
    assert f"failed {bad}: ImageDecodeError: " in err
    assert any(line.startswith(f"failed {bad}: ImageDecodeError") for line in lines)  # one line, not wrapped
    progress = [line for line in lines if line.startswith("progress ")]
    assert progress and all("img/s, ETA" in line and "failed" in line for line in progress)
    assert "━" not in err  # no progress bar drawn into a log


def test_normalize_and_pca_options(tmp_path, capsys, image_paths):
    from imgbeddings import fit_pca

    raw = Embedder(MODEL).embed(image_paths)
    pca = fit_pca(raw, 4)
    pca.save(tmp_path / "pca.npz")
    items = [str(p) for p in image_paths]
    out = tmp_path / "o"
    code, _, err = run(
        ["embed", *items, "-o", str(out), "-m", MODEL, "--normalize", "--pca", str(tmp_path / "pca.npz")],
        capsys,
    )
    assert code == 0, err
    data = load(out)
    expected = pca.transform(raw)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    by_path = dict(zip(data.paths, data.vectors, strict=True))
    assert np.allclose(np.stack([by_path[p] for p in items]), expected, atol=1e-4)
    assert data.manifest["dim"] == 4 and data.manifest["identity"]["normalize"] is True
    code, _, err = run(
        ["embed", *items, "-o", str(out), "-m", MODEL, "--pca", str(tmp_path / "pca.npz")], capsys
    )
    assert code == 8 and "L2 normalisation" in err and "PCA" not in err.split("(", 1)[1].split(";")[0]
    code, _, err = run(["embed", *items, "-o", str(out), "-m", MODEL, "--normalize"], capsys)
    assert code == 8 and "PCA (--pca, pca=): the output has PCA " in err and "this run no PCA" in err


def test_offline_builtin_model_gives_cli_advice(tmp_path, capsys, image_paths):
    code, _, err = run(["embed", str(image_paths[0]), "-o", str(tmp_path / "o"), "-m", "patch16_v1"], capsys)
    assert code == 5 and "Traceback" not in err
    assert "--model /path/to/patch16_v1.onnx" in err and "model_path=" not in err
    assert "/minimaxir/imgbeddings/resolve/main/patch16_v1.onnx" in err and "patch32" not in err
    assert not (tmp_path / "o").exists()


def test_help_shows_no_python_type_noise(capsys):
    code, stdout, _ = run(["embed", "--help"], capsys)
    assert code == 0 and "--normalize" in stdout and "--pca" in stdout
    for noise in ("<bool>", "<list[str]>", "{paths}", "<path>"):
        assert noise not in stdout


def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "imgbeddings", "embed", str(folder), "-o", str(out), "-m", MODEL,
           "--batch-size", "2", "--shard-size", "10", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(out.glob("part-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the " in err and "run the same command again" in err and "Traceback" not in err
    kept = len(rows(out))
    assert kept >= 20
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    paths = rows(out)
    assert len(paths) == len(set(paths)) == 400


# --- outputs you can trust, from the command line ----------------------------------------------------


def test_output_in_use_exits_9_or_waits(tmp_path, capsys, image_paths):
    from imgbeddings import Embedder
    from imgbeddings.store import OutputStore

    emb = Embedder(MODEL)
    out = tmp_path / "o"
    holder = OutputStore(out, emb.identity(), emb.card)  # holds the folder's lock, as a running job does
    try:
        args = ["embed", str(image_paths[0]), "-o", str(out), "-m", MODEL, "--no-progress"]
        code, _, err = run(args, capsys)
        assert code == 9 and "output in use" in err and f"PID {os.getpid()}" in err, err
        t0 = time.monotonic()
        code, _, err = run([*args, "--wait", "--wait-timeout", "0.5"], capsys)
        assert code == 9 and time.monotonic() - t0 >= 0.5
    finally:
        holder.close()
    code, _, err = run([*args, "--wait"], capsys)
    assert code == 0, err


def test_info_reports_a_damaged_output_and_exits_8(tmp_path, capsys, image_paths):
    out = tmp_path / "o"
    items = [str(p) for p in image_paths]
    assert run(["embed", *items, "-o", str(out), "-m", MODEL, "--shard-size", "3"], capsys)[0] == 0
    shard = sorted(out.glob("part-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    code, stdout, err = run(["info", str(out)], capsys)
    assert code == 8 and f"damaged      {shard.name}" in stdout and "Traceback" not in err
    assert "run imgbeddings embed again" in err
    code, _, err = run(["embed", *items, "-o", str(out), "-m", MODEL], capsys)  # repairs it
    assert code == 0 and "quarantine" in err
    code, stdout, _ = run(["info", str(out)], capsys)
    assert code == 0 and "8 x 32" in stdout and "quarantined  1 file(s)" in stdout


def test_a_latin1_file_name_is_embedded_and_printed_readably(tmp_path, capsys, image_paths):
    folder = tmp_path / "old"
    folder.mkdir()
    good = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    bad = os.path.join(os.fsencode(folder), b"na\xefve.jpg")
    with open(good, "wb") as fh:
        fh.write(image_paths[0].read_bytes())
    with open(bad, "wb") as fh:
        fh.write(b"not an image")
    out = tmp_path / "o"
    code, _, err = run(["embed", str(folder), "-o", str(out), "-m", MODEL], capsys)
    assert code == 6 and "failed " in err and "na\\xefve.jpg: ImageDecodeError" in err
    data = load(out)
    assert (
        data.paths == [os.fsdecode(good)] and open(data.paths[0], "rb").read() == image_paths[0].read_bytes()
    )
