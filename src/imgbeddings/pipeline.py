"""Streaming embedding for large collections: parallel decoding, bounded memory, ordered batches.

Layout of one run::

    input iterator --(dispatcher thread)--> decode worker processes --> results
          ^ at most ``window`` items in flight                              |
          |                                                                 v
    main thread: reorders results, forms batches in input order, runs ONNX Runtime, yields Batch

- Decoding and geometry (the expensive part: JPEG decode, resize) run in worker *processes*,
  so a decoder that crashes (segfault) or hangs only costs that one file: the worker is
  replaced, the file is reported as a failure, the worker's other queued files are re-sent.
- A dispatcher thread feeds the workers and drains their pipes continuously, so decoding
  overlaps with inference in the main thread (ONNX Runtime releases the GIL).
- At most ``window`` items are between the input iterator and the yielded batches, so memory
  does not grow with the number of inputs.
- Failures are values (:class:`~imgbeddings.embedder.Failure`), never exceptions that abort
  the stream; callers decide (the CLI's ``--strict`` stops at the first).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from . import settings
from .embedder import Embedder, Failure
from .errors import ImgbeddingsError, InputError, describe
from .images import ops
from .images.preprocess import Preprocessor
from .models.cards import PreprocessSpec

#: Seconds one file may take in a decode worker before the worker is killed and replaced.
DEFAULT_ITEM_TIMEOUT = 120.0
_POLL = 0.05


@dataclass
class Batch:
    """Consecutive inputs ``start .. start + len(items) - 1``, in input order.

    ``vectors`` is float32 (n, D) with NaN rows where ``ok`` is False; ``failures`` lists
    those inputs (with their global index) and why they failed.
    """

    start: int
    items: list[Any]
    vectors: np.ndarray
    ok: np.ndarray
    failures: list[Failure]

    @property
    def ids(self) -> list[str]:
        """A printable id per input (the path, for files)."""
        return [describe(x) for x in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Timings:
    """Where the time went (seconds). Worker-side times are summed over workers (CPU time)."""

    decode: float = 0.0
    geometry: float = 0.0
    tensor: float = 0.0
    inference: float = 0.0
    wall: float = 0.0
    items: int = 0
    worker_restarts: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ThreadPlan:
    """How the CPUs are shared: decode worker processes and ONNX Runtime intra-op threads."""

    workers: int
    threads: int
    cpus: int


def plan_threads(
    workers: int | None = None, threads: int | None = None, cpus: int | None = None
) -> ThreadPlan:
    """Share the CPUs this process may use between decoding and inference.

    Default: ONNX Runtime gets every CPU, and as many decode worker processes run beside it;
    ONNX Runtime's idle threads do not spin (``spin=False``), so whichever side has work gets
    the CPUs and neither busy-waits. On 2 CPUs this measured fastest of the plans tried
    (README, "Thread planning"). ``workers=0`` decodes in a thread of this process instead.
    """
    cpus = cpus or settings.available_cpus()
    if workers is None:
        workers = cpus
    if threads is None:
        threads = cpus
    return ThreadPlan(workers=max(0, workers), threads=max(1, threads), cpus=cpus)


# --- worker process ----------------------------------------------------------------------------


def _decode(pre: Preprocessor, index: int, item: Any) -> tuple:
    """Decode one item to its uint8 (S, S, 3) geometry: ``("ok", index, array, decode_s,
    geometry_s)`` or ``("err", index, error class, source, message)``. Never raises."""
    t0 = time.perf_counter()
    try:
        img = pre.load(item, index)
        t1 = time.perf_counter()
        arr = np.asarray(pre.geometry(img), dtype=np.uint8)
        return ("ok", index, arr, t1 - t0, time.perf_counter() - t1)
    except InputError as exc:
        return ("err", index, type(exc).__name__, exc.source, exc.reason)
    except Exception as exc:  # a bug or an unexpected decoder error: report it, keep going
        return ("err", index, type(exc).__name__, describe(item), f"{type(exc).__name__}: {exc}")


def _worker_main(conn: Connection, spec: PreprocessSpec, mode: str, max_pixels: int | None) -> None:
    """Decode loop of one worker process: receive (index, item), send back uint8 (S, S, 3)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    pre = Preprocessor(spec, mode, max_pixels)  # type: ignore[arg-type]
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, item = msg
        conn.send(_decode(pre, index, item))


def _picklable(item: Any) -> bool:
    """Items sent to worker processes: paths only (small messages; no pipe can fill up)."""
    return isinstance(item, (str, os.PathLike))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    queue: deque = field(default_factory=deque)  # (index, item) sent, not answered; [0] is in work
    busy_since: float = 0.0
    ready: bool = False


class _Dispatcher(threading.Thread):
    """Feeds items to worker processes and collects their results into ``out`` (a Queue of
    ``(index, item, ok, payload)``; payload is a uint8 image or a Failure), then ``("end", n)``."""

    #: The worker process's main function (tests substitute one that crashes or hangs on cue).
    worker_target = staticmethod(_worker_main)

    def __init__(
        self,
        items: Iterator[Any],
        pre: Preprocessor,
        workers: int,
        slots: threading.Semaphore,
        out: queue.Queue,
        timings: Timings,
        item_timeout: float,
    ) -> None:
        super().__init__(name="imgbeddings-dispatch", daemon=True)
        self.items = items
        self.pre = pre
        self.n_workers = workers
        self.slots = slots
        self.out = out
        self.timings = timings
        self.item_timeout = item_timeout
        self.stop_event = threading.Event()
        self.workers: list[_Worker] = []
        self.retry: deque = deque()  # (index, item) to send again after a worker died
        self.ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self.per_worker = 1

    # -- worker management --
    def _start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=self.worker_target,
            args=(child, self.pre.spec, self.pre.mode, self.pre.max_pixels),
            name="imgbeddings-decode",
            daemon=True,
        )
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _stop_worker(self, w: _Worker, kill: bool = False) -> None:
        if kill:
            w.process.kill()
        else:
            try:
                w.conn.send(None)
            except OSError:
                pass
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()

    def _replace(self, w: _Worker, reason: str) -> None:
        """A worker died or hung: fail the item it was on, re-send the rest, start a new one."""
        if not w.ready:
            raise ImgbeddingsError(f"a decode worker failed to start ({reason}); try --workers 0")
        if w.queue:
            index, item = w.queue.popleft()
            self.out.put((index, item, False, Failure(index, describe(item), "WorkerCrashed", reason)))
        self.retry.extendleft(reversed(w.queue))
        self._stop_worker(w, kill=True)
        self.workers[self.workers.index(w)] = self._start_worker()
        self.timings.worker_restarts += 1

    # -- main loop --
    def _next_item(self, block: bool) -> tuple[int, Any] | None:
        """The next (index, item) to decode, if a slot in the window is free."""
        if self.retry:
            return self.retry.popleft()
        if self._exhausted or not self.slots.acquire(timeout=_POLL if block else 0):
            return None
        try:
            return next(self.items)
        except StopIteration:
            self._exhausted = True
            self.slots.release()
            return None

    def _dispatch(self) -> int:
        """Hand out items while some worker has room; returns the highest index + 1 seen."""
        top = 0
        while True:
            target = min(self.workers, key=lambda w: len(w.queue)) if self.workers else None
            if target is not None and len(target.queue) >= self.per_worker:
                return top
            nxt = self._next_item(block=target is None)
            if nxt is None:
                return top
            index, item = nxt
            top = max(top, index + 1)
            if target is None or not _picklable(item):
                self._result(item, _decode(self.pre, index, item))  # no workers, or an in-memory object
                continue
            if not target.queue:
                target.busy_since = time.monotonic()
            target.queue.append((index, item))
            try:
                target.conn.send((index, item))
            except OSError:
                pass  # the worker is gone: its death is handled in _collect

    def _collect(self) -> None:
        """Read results; replace workers that died or hang."""
        waitables = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
        ready = wait(waitables, timeout=_POLL)
        for w in list(self.workers):
            if w.conn in ready:
                try:
                    while w.conn.poll():
                        self._handle(w, w.conn.recv())
                except (EOFError, OSError):
                    pass
            if not w.process.is_alive():
                self._replace(w, f"decoder worker process died (exit code {w.process.exitcode}) on this file")
            elif w.queue and time.monotonic() - w.busy_since > self.item_timeout:
                self._replace(w, f"decoding took longer than {self.item_timeout:g} s; worker stopped")

    def run(self) -> None:
        self._exhausted = False
        count = 0
        try:
            self.workers = [self._start_worker() for _ in range(self.n_workers)]
            while not self.stop_event.is_set():
                count = max(count, self._dispatch())
                if self._exhausted and not self.retry and not any(w.queue for w in self.workers):
                    break
                if self.workers:
                    self._collect()
            self.out.put(("end", count))
        except BaseException as exc:
            self.out.put(("error", exc))
        finally:
            for w in self.workers:
                self._stop_worker(w, kill=self.stop_event.is_set())

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            return
        index = msg[1]
        if not w.queue or w.queue[0][0] != index:  # cannot happen: pipes are ordered
            return
        _, item = w.queue.popleft()
        w.busy_since = time.monotonic()
        self._result(item, msg)

    def _result(self, item: Any, msg: tuple) -> None:
        """Pass a decode result (see :func:`_decode`) on to the consuming thread."""
        index = msg[1]
        if msg[0] == "ok":
            _, _, arr, t_decode, t_geom = msg
            self.timings.decode += t_decode
            self.timings.geometry += t_geom
            self.out.put((index, item, True, arr))
        else:
            _, _, error, source, message = msg
            self.out.put((index, item, False, Failure(index, source, error, message)))


def embed_stream(
    model: Embedder | str | os.PathLike[str],
    inputs: Iterable[Any],
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    window: int | None = None,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    timings: Timings | None = None,
    **embedder_options: Any,
) -> Iterator[Batch]:
    """Embed a (possibly huge, possibly lazy) iterable of images; yields :class:`Batch` objects
    in input order as soon as each is ready.

    Args:
        model: an :class:`Embedder`, or a model name/repo/path to build one (then
            ``embedder_options`` go to it and its threads follow :func:`plan_threads`).
        inputs: paths (decoded in worker processes) or any other accepted input (decoded in a
            thread of this process).
        batch_size: inputs per batch (default: the embedder's).
        workers: decode worker processes (default from :func:`plan_threads`; 0 = no processes).
        window: most inputs in flight at once (default ``3 * batch_size``): bounds memory.
        item_timeout: seconds before a hung decode is abandoned (its worker is replaced).
        timings: a :class:`Timings` to accumulate the time split into.

    Bad inputs never stop the stream: they come back as failures in their batch.
    """
    plan = plan_threads(workers, embedder_options.pop("threads", None))
    if not isinstance(model, Embedder):
        embedder_options.setdefault("spin", plan.workers == 0)
        model = Embedder(model, threads=plan.threads, **embedder_options)
    embedder = model
    size = batch_size or embedder.batch_size
    window = max(window or 3 * size, size)
    timings = timings if timings is not None else Timings()
    slots = threading.Semaphore(window)
    out: queue.Queue = queue.Queue()
    disp = _Dispatcher(
        enumerate(inputs), embedder.preprocessor, plan.workers, slots, out, timings, item_timeout
    )
    disp.per_worker = max(2, math.ceil(window / max(1, plan.workers)))
    started = time.perf_counter()
    lut = ops.standardize_lut(
        embedder.card.preprocess.rescale, embedder.card.preprocess.mean, embedder.card.preprocess.std
    )
    pending: dict[int, tuple[Any, bool, Any]] = {}
    next_index, total = 0, None
    disp.start()
    try:
        while total is None or next_index < total:
            msg = out.get()
            if msg[0] == "error":
                raise msg[1]
            if msg[0] == "end":
                total = msg[1]
            else:
                index, item, ok, payload = msg
                pending[index] = (item, ok, payload)
            while True:
                run = 0
                while next_index + run in pending and run < size:
                    run += 1
                final = total is not None and next_index + run == total
                if run == 0 or (run < size and not final):
                    break
                batch = _run_batch(embedder, pending, next_index, run, lut, timings)
                next_index += run
                for _ in range(run):
                    slots.release()
                timings.items += run
                timings.wall = time.perf_counter() - started
                yield batch
    finally:
        disp.stop_event.set()
        disp.join(timeout=30)


def _run_batch(
    embedder: Embedder, pending: dict, start: int, count: int, lut: np.ndarray, timings: Timings
) -> Batch:
    entries = [pending.pop(i) for i in range(start, start + count)]
    ok = np.array([e[1] for e in entries], dtype=bool)
    size = embedder.preprocessor.size
    t0 = time.perf_counter()
    pixels = np.empty((int(ok.sum()), 3, size, size), dtype=np.float32)
    for slot, (_, _, arr) in enumerate(e for e in entries if e[1]):
        ops.to_chw_float(arr, lut, pixels[slot])
    t1 = time.perf_counter()
    vectors = np.full((count, embedder.dim), np.nan, dtype=np.float32)
    if len(pixels):
        vectors[ok] = embedder.run(pixels)
    timings.tensor += t1 - t0
    timings.inference += time.perf_counter() - t1
    failures = [e[2] for e in entries if not e[1]]
    return Batch(start, [e[0] for e in entries], vectors, ok, failures)
