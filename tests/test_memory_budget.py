"""The decode budget: pixels being decoded at once are bounded across decode threads and worker
processes, an image over the whole budget is decoded alone, requests are served in order, and
what a crashed or hung worker held comes back when it is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgbeddings import Embedder, settings
from imgbeddings.budget import (
    BYTES_PER_DECODED_PIXEL,
    FALLBACK_DECODE_BUDGET,
    MIN_DECODE_BUDGET,
    DecodeBudget,
    default_decode_budget,
)
from imgbeddings.errors import OptionError
from imgbeddings.pipeline import Timings, stream
from imgbeddings.settings import _cgroup_memory_left

MODEL = Path(__file__).parent / "data" / "models" / "tiny_b32_legacy.onnx"  # no conftest import:
# decode worker processes import this module (for the misbehaving workers below)


@pytest.fixture(scope="module")
def emb() -> Embedder:
    return Embedder(MODEL, batch_size=4)


def _pngs(folder: Path, sides: list[int]) -> list[str]:
    paths = []
    for i, side in enumerate(sides):
        path = folder / f"{i:02d}-{side}.png"
        value = (i * 37) % 256
        Image.new("RGB", (side, side), (value, 255 - value, 90)).save(path)
        paths.append(str(path))
    return paths


def _run(emb, items, **kwargs):
    timings = Timings()
    batches = list(stream(emb, items, batch_size=4, timings=timings, **kwargs))
    ok = np.concatenate([b.ok for b in batches])
    return ok, [f for b in batches for f in b.failures], timings, np.concatenate([b.vectors for b in batches])


# --- the budget on its own ----------------------------------------------------------------------


class _Holder(threading.Thread):
    """A decoder thread: takes ``pixels`` from the budget (``got`` is set), holds them until
    ``let_go`` is set, then gives them back."""

    def __init__(self, budget: DecodeBudget, pixels: int) -> None:
        super().__init__(daemon=True)
        self.budget, self.pixels = budget, pixels
        self.got, self.let_go = threading.Event(), threading.Event()
        self.start()

    def run(self) -> None:
        self.budget.acquire(self.pixels)
        self.got.set()
        self.let_go.wait()
        self.budget.release()


def test_a_request_waits_until_its_pixels_fit():
    budget = DecodeBudget(100, slots=4)
    first = _Holder(budget, 60)
    assert first.got.wait(10) and budget.held() == 60
    second = _Holder(budget, 60)
    assert not second.got.wait(0.3)  # 60 + 60 > 100: it waits
    first.let_go.set()
    assert second.got.wait(10) and budget.held() == 60
    second.let_go.set()
    second.join(10)
    assert budget.held() == 0


def test_an_image_over_the_whole_budget_is_decoded_alone_and_not_overtaken():
    budget = DecodeBudget(100, slots=4)
    small = _Holder(budget, 10)
    assert small.got.wait(10)
    big = _Holder(budget, 500)
    assert not big.got.wait(0.3)  # waits until nothing else is held...
    later = _Holder(budget, 10)
    assert not later.got.wait(0.3)  # ...and a small one arriving later, though it fits, queues behind it
    small.let_go.set()
    assert big.got.wait(10) and budget.held() == 500
    assert not later.got.wait(0.3)  # nothing runs beside the oversized image
    big.let_go.set()
    assert later.got.wait(10) and budget.held() == 10
    later.let_go.set()


def test_reclaim_works_even_if_the_holder_died_inside_the_lock():
    from imgbeddings import pipeline

    budget = DecodeBudget(100, slots=3, ctx=pipeline.worker_context())
    proc = pipeline.worker_context().Process(target=_die_holding_lock, args=(budget, 0))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert budget.held() == 40
    assert budget.reclaim(0) == 40 and budget.held() == 0
    budget.acquire(100, slot=1)  # the lock works again
    assert budget.held(1) == 100


def _die_holding_lock(budget: DecodeBudget, slot: int) -> None:
    from imgbeddings import budget as budget_module

    budget.acquire(40, slot=slot)
    budget._lock.acquire()
    budget._state[budget_module._LOCK_OWNER] = slot + 1
    os.kill(os.getpid(), signal.SIGKILL)


# --- in the engine --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_budget_bounds_how_many_images_decode_at_once(emb, tmp_path, backend):
    items = _pngs(tmp_path, [100] * 12)  # 0.01 MP each; the budget fits two
    ok, failures, timings, vectors = _run(emb, items, backend=backend, workers=4, decode_budget=0.025)
    assert ok.all() and not failures
    assert timings.budget_mp == 0.025
    assert 1 <= timings.peak_decoding <= 2 and timings.peak_decoding_mp <= 0.025
    assert np.allclose(vectors, emb.embed(items), atol=1e-5)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_an_image_larger_than_the_budget_is_decoded_alone(emb, tmp_path, backend):
    items = _pngs(tmp_path, [60, 60, 300, 60, 60, 60])  # 300 x 300 = 0.09 MP > the budget
    ok, failures, timings, _ = _run(emb, items, backend=backend, workers=3, decode_budget=0.02)
    assert ok.all() and not failures
    assert timings.peak_decoding_mp == pytest.approx(0.09)  # alone: nothing held beside it


def test_in_memory_items_share_the_budget_with_worker_processes(emb, tmp_path):
    paths = _pngs(tmp_path, [100] * 6)
    items = [x for p in paths for x in (p, np.asarray(Image.open(p).convert("RGB")))]
    ok, failures, timings, _ = _run(emb, items, backend="processes", workers=2, decode_budget=0.015)
    assert ok.all() and not failures and timings.peak_decoding == 1


CUE_PIXELS = 77 * 77  # a worker below misbehaves right after taking budget for a 77 x 77 image


def crash_after_acquire(conn, spec, mode, max_pixels):
    """A decode worker killed (like the OOM killer would) once it holds budget for a cue image."""
    _misbehave_after_acquire(lambda: os.kill(os.getpid(), signal.SIGKILL))
    from imgbeddings import pipeline

    pipeline._worker_main(conn, spec, mode, max_pixels)


def hang_after_acquire(conn, spec, mode, max_pixels):
    """A decode worker that hangs once it holds budget for a cue image."""
    _misbehave_after_acquire(lambda: time.sleep(3600))
    from imgbeddings import pipeline

    pipeline._worker_main(conn, spec, mode, max_pixels)


def _misbehave_after_acquire(act) -> None:
    from imgbeddings import pipeline

    budget, _ = pipeline._WORKER_BUDGET
    acquire = budget.acquire

    def acquire_then_misbehave(pixels, slot=None, on_wait=None):
        waited = acquire(pixels, slot, on_wait)
        if pixels == CUE_PIXELS:
            act()
        return waited

    budget.acquire = acquire_then_misbehave


@pytest.mark.parametrize("how", ["crash", "hang"])
def test_what_a_dead_or_hung_worker_held_comes_back(emb, tmp_path, monkeypatch, how):
    """The budget fits one image at a time: had the misbehaving worker's budget not come back when
    it was replaced, the images after it would wait forever. Waiting for budget is not hanging:
    the worker that waits while the hung one holds the budget is not stopped."""
    from imgbeddings import pipeline

    target = crash_after_acquire if how == "crash" else hang_after_acquire
    monkeypatch.setattr(pipeline._ProcessFeeder, "worker_target", staticmethod(target))
    items = _pngs(tmp_path, [64, 64, 77, 64, 64, 64, 64])
    result: dict = {}

    timeout = 2.0 if how == "hang" else 120.0

    def consume() -> None:
        result["value"] = _run(
            emb, items, backend="processes", workers=2, decode_budget=0.006, item_timeout=timeout
        )

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the stream hung: the budget held by the replaced worker was not given back"
    ok, failures, timings, _ = result["value"]
    assert ok.tolist() == [True, True, False, True, True, True, True]
    assert [(f.index, f.error) for f in failures] == [(2, "WorkerCrashed")]
    assert timings.worker_restarts == 1
    assert timings.peak_decoding == 1


# --- how big the budget is ------------------------------------------------------------------------


def test_default_budget_formula(monkeypatch):

    monkeypatch.delenv("IMGBEDDINGS_DECODE_BUDGET_MP", raising=False)
    monkeypatch.setattr(settings, "available_memory", lambda: 24_000_000_000)
    assert default_decode_budget() == 24_000_000_000 // 8 // BYTES_PER_DECODED_PIXEL == 250_000_000
    monkeypatch.setattr(settings, "available_memory", lambda: 1_000_000_000)
    assert default_decode_budget() == MIN_DECODE_BUDGET
    monkeypatch.setattr(settings, "available_memory", lambda: None)
    assert default_decode_budget() == FALLBACK_DECODE_BUDGET
    monkeypatch.setenv("IMGBEDDINGS_DECODE_BUDGET_MP", "12.5")  # read when asked, not at import
    assert default_decode_budget() == 12_500_000
    for bad in ("lots", "0", "-3", "inf"):
        monkeypatch.setenv("IMGBEDDINGS_DECODE_BUDGET_MP", bad)
        with pytest.raises(OptionError, match="IMGBEDDINGS_DECODE_BUDGET_MP"):
            default_decode_budget()


def test_env_var_and_parameter_set_the_budget(emb, tmp_path, monkeypatch):
    items = _pngs(tmp_path, [50, 50])
    monkeypatch.setenv("IMGBEDDINGS_DECODE_BUDGET_MP", "3")
    assert _run(emb, items, workers=1)[2].budget_mp == 3
    assert _run(emb, items, workers=1, decode_budget=0.5)[2].budget_mp == 0.5  # the parameter wins
    with pytest.raises(OptionError, match="decode_budget"):
        _run(emb, items, decode_budget=0)


def test_cgroup_limit_caps_available_memory(tmp_path):
    own = tmp_path / "cgroup"
    own.write_text("0::/user.slice/job\n")
    root = tmp_path / "fs"
    (root / "user.slice" / "job").mkdir(parents=True)
    (root / "user.slice" / "job" / "memory.max").write_text("max\n")
    (root / "user.slice" / "memory.max").write_text("4000000000\n")
    (root / "user.slice" / "memory.current").write_text("1000000000\n")
    assert _cgroup_memory_left(root, own) == 3_000_000_000  # the tightest ancestor
    (root / "user.slice" / "job" / "memory.max").write_text("2000000000\n")
    (root / "user.slice" / "job" / "memory.current").write_text("500000000\n")
    assert _cgroup_memory_left(root, own) == 1_500_000_000
    assert _cgroup_memory_left(tmp_path / "none", tmp_path / "missing") is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert _cgroup_memory_left(v1.parent, tmp_path / "missing") is None
    (v1 / "memory.limit_in_bytes").write_text("8000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("3000000000\n")
    assert _cgroup_memory_left(v1.parent, tmp_path / "missing") == 5_000_000_000
