"""Jobs over collections (``embed_files``, ``embed_stream``): what a first real use hits —
a plain script without a ``__main__`` guard, a PCA, outputs made another way, failed starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import MODELS
from imgbeddings import Embedder, Failure, ModelMismatch, embed_files, fit_pca, load
from imgbeddings.errors import ImageNotFound

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


def test_readme_example_works_in_a_plain_script(tmp_path, image_paths):
    """Worker processes must not re-run a script that has no ``if __name__ == "__main__":``."""
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from imgbeddings import embed_files, embed_stream, load
            print("script body ran")
            result = embed_files([{str(image_paths[0])!r}, {str(image_paths[1])!r}], "out", model={MODEL!r})
            print("embedded", result.counts.embedded, "workers", result.workers)
            for batch in embed_stream({MODEL!r}, [{str(image_paths[2])!r}], workers=2):
                print("streamed", batch.ok.tolist())
            print("loaded", len(load("out").paths))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("script body ran") == 1  # not re-run in the workers
    assert "embedded 2 workers 2" in proc.stdout and "streamed [True]" in proc.stdout
    assert "loaded 2" in proc.stdout


def test_pca_and_normalize_define_the_output(tmp_path, image_paths):
    raw = Embedder(MODEL).embed(image_paths)
    pca = fit_pca(raw, 4)
    items = [str(p) for p in image_paths]
    result = embed_files(items, tmp_path / "o", model=MODEL, pca=pca)
    assert result.counts.embedded == 8
    data = load(tmp_path / "o")
    assert data.vectors.shape == (8, 4)
    by_path = dict(zip(data.paths, data.vectors, strict=True))
    assert np.allclose(np.stack([by_path[p] for p in items]), pca.transform(raw), atol=1e-4)
    with pytest.raises(ModelMismatch, match="normalisation"):
        embed_files(items, tmp_path / "o", model=MODEL, pca=pca, normalize=True)
    embed_files(items[:2], tmp_path / "raw", model=MODEL)
    with pytest.raises(ModelMismatch, match=r"normalisation.*not normalised, this run L2-normalised"):
        embed_files(items, tmp_path / "raw", model=MODEL, normalize=True)


def test_failures_are_one_type_from_the_run_to_the_stored_output(tmp_path, image_paths):
    missing = str(tmp_path / "missing.jpg")
    result = embed_files([str(image_paths[0]), missing], tmp_path / "o", model=MODEL)
    assert result.failures == [Failure(1, missing, "ImageNotFound", "no such file")]
    stored = load(tmp_path / "o").failures
    assert stored == [Failure(None, missing, "ImageNotFound", "no such file")]
    assert isinstance(stored[0].to_error(), ImageNotFound)
    res = Embedder(MODEL).embed_with_failures([image_paths[0], missing])
    assert [(f.source, f.error, f.message) for f in res.failures] == [
        (missing, "ImageNotFound", "no such file")
    ]


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, image_paths):
    out = tmp_path / "o"
    with pytest.raises(ImageNotFound):
        embed_files([str(tmp_path / "missing.jpg"), str(image_paths[0])], out, model=MODEL, strict=True)
    assert not out.exists()
    embed_files([str(image_paths[0])], out, model=MODEL)
    with pytest.raises(ImageNotFound):  # an existing output is kept as it was
        embed_files([str(tmp_path / "missing.jpg")], out, model=MODEL, strict=True)
    assert len(load(out).paths) == 1


def test_default_mode_is_the_same_everywhere():
    import inspect

    from imgbeddings import cli
    from imgbeddings.images.preprocess import DEFAULT_MODE

    assert Embedder(MODEL).mode == DEFAULT_MODE
    assert inspect.signature(embed_files).parameters["mode"].default == DEFAULT_MODE
    fast_flag = inspect.signature(cli.embed_cmd).parameters["fast"].default
    assert ("fast" if fast_flag else "exact") == DEFAULT_MODE


def test_an_interrupted_run_unlocks_its_output_and_keeps_its_rows(tmp_path, image_paths):
    from imgbeddings import OutputLocked
    from imgbeddings.store import OutputStore

    out, items = tmp_path / "o", [str(p) for p in image_paths]

    def interrupt(done, failures):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_files(items, out, model=MODEL, workers=0, batch_size=2, shard_size=2, on_batch=interrupt)
    assert len(load(out).paths) == 2  # the first batch's rows are kept ...
    result = embed_files(items, out, model=MODEL, workers=0, wait=None)  # ... and nothing is left locked
    assert (result.counts.embedded, result.counts.skipped) == (6, 2)
    embedder = Embedder(MODEL)
    holder = OutputStore(out, embedder.identity(), embedder.card)
    try:
        with pytest.raises(OutputLocked, match="being written by another imgbeddings run"):
            embed_files(items, out, model=embedder, workers=0)
    finally:
        holder.close()
