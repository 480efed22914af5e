"""The streaming engine under every entry point: parallel decoding, bounded memory, ordered batches.

``Embedder.embed`` / ``embed_with_failures`` (threads), ``embed_stream`` / ``embed_files`` and
the CLI (processes) all run :func:`stream`. Layout of one run::

    input iterator --(feeder thread)--> decode backend (threads or worker processes) --> results
          ^ at most ``window`` items in flight                                           |
          |                                                                              v
    calling thread: reorders results, forms batches in input order, runs the model, yields Batch

- **Decode backends.** ``threads``: a pool of decode threads in this process (any input:
  paths, bytes, PIL images, arrays, file objects). ``processes``: worker *processes* decode
  paths, so a decoder that crashes (segfault) or hangs costs only that one file (the worker is
  replaced, the file reported as :class:`~imgbeddings.errors.WorkerCrashed`, the worker's
  other queued files re-sent); in-memory items are decoded in the feeder thread. Both return
  the same uint8 ``size x size x 3`` geometry; the calling thread turns it into the float
  tensor, so the model sees identical pixels either way.
- Decoding overlaps with inference (ONNX Runtime releases the GIL).
- At most ``window`` items are between the input iterator and the yielded batches, so memory
  does not grow with the number of inputs.
- Failures are values (:class:`~imgbeddings.errors.Failure`), never exceptions that abort the
  stream; callers decide (``Embedder.embed`` and ``--strict`` stop at the first).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import settings
from .errors import Failure, ImgbeddingsError, InputError, OptionError, describe
from .images import ops
from .images.preprocess import Preprocessor
from .models.cards import PreprocessSpec

if TYPE_CHECKING:
    from .embedder import Embedder

#: Seconds one file may take in a decode worker before the worker is killed and replaced.
DEFAULT_ITEM_TIMEOUT = 120.0
_POLL = 0.05

Backend = Literal["threads", "processes"]


@dataclass
class Batch:
    """Consecutive inputs ``start .. start + len(items) - 1``, in input order.

    ``vectors`` is float32 (n, D) with NaN rows where ``ok`` is False; ``failures`` lists
    those inputs (with their global index) and why they failed. ``embed_with_failures``
    returns one Batch covering all its inputs.
    """

    start: int
    items: list[Any]
    vectors: np.ndarray
    ok: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    @property
    def good(self) -> np.ndarray:
        """Only the rows of inputs that worked, (n_ok, D)."""
        return self.vectors[self.ok]

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def concat(cls, batches: Sequence[Batch], dim: int) -> Batch:
        """One Batch from consecutive ones (an empty one of width ``dim`` if there are none)."""
        if not batches:
            return cls(0, [], np.empty((0, dim), dtype=np.float32), np.empty(0, dtype=bool), [])
        return cls(
            batches[0].start,
            [x for b in batches for x in b.items],
            np.concatenate([b.vectors for b in batches]),
            np.concatenate([b.ok for b in batches]),
            [f for b in batches for f in b.failures],
        )


@dataclass
class Timings:
    """Where the time went (seconds). Decode-side times are summed over workers (CPU time)."""

    decode: float = 0.0
    geometry: float = 0.0
    tensor: float = 0.0
    inference: float = 0.0
    items: int = 0
    worker_restarts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_decode(self, decode: float, geometry: float) -> None:
        """Add one item's decode and geometry time (thread-safe: decode threads call it)."""
        with self._lock:
            self.decode += decode
            self.geometry += geometry


@dataclass(frozen=True)
class ThreadPlan:
    """How the CPUs are shared: decode workers and ONNX Runtime intra-op threads."""

    workers: int
    threads: int
    cpus: int


def plan_threads(
    workers: int | None = None, threads: int | None = None, cpus: int | None = None
) -> ThreadPlan:
    """Share the CPUs this process may use between decoding and inference.

    Default: ONNX Runtime gets every CPU, and as many decode workers run beside it; ONNX
    Runtime's idle threads do not spin (``spin=False``), so whichever side has work gets the
    CPUs and neither busy-waits. On 2 CPUs this measured fastest of the plans tried (README,
    "Thread planning"). ``workers=0`` decodes in a thread of this process instead.
    """
    cpus = cpus or settings.available_cpus()
    if workers is None:
        workers = cpus
    if threads is None:
        threads = cpus
    return ThreadPlan(workers=max(0, workers), threads=max(1, threads), cpus=cpus)


# --- decoding (runs in decode threads and worker processes) -----------------------------------


def _decode(pre: Preprocessor, index: int, item: Any) -> tuple:
    """Decode one item to its uint8 (S, S, 3) geometry: ``("ok", index, array, decode_s,
    geometry_s)`` or ``("err", index, Failure)``. Never raises."""
    t0 = time.perf_counter()
    try:
        img = pre.load(item, index)
        t1 = time.perf_counter()
        arr = np.asarray(pre.geometry(img), dtype=np.uint8)
        return ("ok", index, arr, t1 - t0, time.perf_counter() - t1)
    except InputError as exc:
        return ("err", index, Failure.from_error(exc, index))
    except Exception as exc:  # a bug or an unexpected decoder error: report it, keep going
        return (
            "err",
            index,
            Failure(index, describe(item), "ImageDecodeError", f"{type(exc).__name__}: {exc}"),
        )


def _worker_main(conn: Connection, spec: PreprocessSpec, mode: str, max_pixels: int | None) -> None:
    """Decode loop of one worker process: receive (index, item), send back :func:`_decode`'s answer."""
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


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start worker processes without re-running the caller's script in them.

    ``spawn`` and ``forkserver`` children import the parent's ``__main__`` again, so a plain
    script without ``if __name__ == "__main__":`` would run itself (and start workers) in every
    worker. Our workers need nothing from ``__main__``: while a worker starts, multiprocessing
    is shown an empty ``__main__`` (no file, no module name), so the child imports nothing.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _picklable(item: Any) -> bool:
    """Items sent to worker processes: paths only (small messages; no pipe can fill up)."""
    return isinstance(item, (str, os.PathLike))


# --- feeders: take items from the input iterator, hand back decode results ------------------------


class _Feeder(threading.Thread):
    """Reads the input iterator (at most ``window`` items ahead, via ``slots``), decodes, and
    puts ``(index, item, ok, payload)`` on ``out`` (payload: a uint8 image or a Failure), then
    ``("end", count)``, or ``("error", exception)`` if the input iterator itself raised."""

    def __init__(
        self,
        items: Iterator[tuple[int, Any]],
        pre: Preprocessor,
        workers: int,
        slots: threading.Semaphore,
        out: queue.Queue,
        timings: Timings,
    ) -> None:
        super().__init__(name="imgbeddings-feeder", daemon=True)
        self.items = items
        self.pre = pre
        self.n_workers = workers
        self.slots = slots
        self.out = out
        self.timings = timings
        self.stop_event = threading.Event()
        self._exhausted = False

    def _next_item(self, block: bool) -> tuple[int, Any] | None:
        """The next (index, item), if a slot in the window is free."""
        if self._exhausted or not self.slots.acquire(timeout=_POLL if block else 0):
            return None
        try:
            return next(self.items)
        except StopIteration:
            self._exhausted = True
            self.slots.release()
            return None

    def _result(self, item: Any, msg: tuple) -> None:
        """Pass a :func:`_decode` answer on to the consuming thread."""
        index = msg[1]
        if msg[0] == "ok":
            _, _, arr, t_decode, t_geom = msg
            self.timings.add_decode(t_decode, t_geom)
            self.out.put((index, item, True, arr))
        else:
            self.out.put((index, item, False, msg[2]))

    def _decode_here(self, index: int, item: Any) -> None:
        self._result(item, _decode(self.pre, index, item))


class _ThreadFeeder(_Feeder):
    """Decodes in a pool of ``workers`` threads of this process (any kind of input)."""

    def run(self) -> None:
        count = 0
        pool = ThreadPoolExecutor(max_workers=max(1, self.n_workers), thread_name_prefix="imgbeddings-decode")
        try:
            while not self.stop_event.is_set() and not self._exhausted:
                nxt = self._next_item(block=True)
                if nxt is not None:
                    count = max(count, nxt[0] + 1)
                    pool.submit(self._decode_here, *nxt)
            pool.shutdown(wait=True, cancel_futures=self.stop_event.is_set())
            self.out.put(("end", count))
        except BaseException as exc:  # the caller's iterator raised: hand it to the caller
            pool.shutdown(wait=False, cancel_futures=True)
            self.out.put(("error", exc))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    queue: deque = field(default_factory=deque)  # (index, item) sent, not answered; [0] is in work
    busy_since: float = 0.0
    ready: bool = False


class _ProcessFeeder(_Feeder):
    """Decodes paths in ``workers`` worker processes (in-memory items in this thread); replaces a
    worker that dies or hangs, reporting its file as ``WorkerCrashed``."""

    #: The worker process's main function (tests substitute one that crashes or hangs on cue).
    worker_target = staticmethod(_worker_main)

    def __init__(self, *args: Any, item_timeout: float, per_worker: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item_timeout = item_timeout
        self.per_worker = per_worker
        self.workers: list[_Worker] = []
        self.retry: deque = deque()  # (index, item) to send again after a worker died
        self.ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")

    # -- worker management --
    def _start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=self.worker_target,
            args=(child, self.pre.spec, self.pre.mode, self.pre.max_pixels),
            name="imgbeddings-decode",
            daemon=True,
        )
        with _main_module_hidden():
            proc.start()
        child.close()
        return _Worker(proc, parent)

    def _stop_worker(self, w: _Worker, kill: bool = False) -> None:
        if kill:
            w.process.kill()
        else:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()

    def _replace(self, w: _Worker, reason: str) -> None:
        """A worker died or hung: fail the item it was on, re-send the rest, start a new one."""
        if not w.ready:
            raise ImgbeddingsError(f"a decode worker failed to start ({reason}); try workers=0 (--workers 0)")
        if w.queue:
            index, item = w.queue.popleft()
            self.out.put((index, item, False, Failure(index, describe(item), "WorkerCrashed", reason)))
        self.retry.extendleft(reversed(w.queue))
        self._stop_worker(w, kill=True)
        self.workers[self.workers.index(w)] = self._start_worker()
        self.timings.worker_restarts += 1

    # -- main loop --
    def _next_item(self, block: bool) -> tuple[int, Any] | None:
        if self.retry:
            return self.retry.popleft()
        return super()._next_item(block)

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
                self._decode_here(index, item)  # no workers, or an in-memory object
                continue
            if not target.queue:
                target.busy_since = time.monotonic()
            target.queue.append((index, item))
            with contextlib.suppress(OSError):  # the worker is gone: its death is handled in _collect
                target.conn.send((index, item))

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

    def _handle(self, w: _Worker, msg: tuple) -> None:
        if msg[0] == "ready":
            w.ready = True
            return
        if not w.queue or w.queue[0][0] != msg[1]:  # cannot happen: pipes are ordered
            return
        _, item = w.queue.popleft()
        w.busy_since = time.monotonic()
        self._result(item, msg)

    def run(self) -> None:
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


# --- the engine ------------------------------------------------------------------------------------


def stream(
    embedder: Embedder,
    inputs: Iterable[Any],
    *,
    backend: Backend = "threads",
    workers: int | None = None,
    batch_size: int | None = None,
    window: int | None = None,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    timings: Timings | None = None,
) -> Iterator[Batch]:
    """Embed ``inputs`` (any iterable, read lazily) with ``embedder``; yields :class:`Batch`
    objects in input order as soon as each is ready. Bad inputs never stop the stream.

    Args:
        backend: ``threads`` (decode threads in this process) or ``processes`` (decode worker
            processes for paths; a crash or hang costs one file).
        workers: decode threads or processes (default: the embedder's ``decode_workers``;
            ``0`` with ``processes`` decodes in one thread of this process).
        batch_size: inputs per batch (default: the embedder's). Batches are consecutive chunks
            of exactly ``batch_size`` inputs (the last may be shorter), whatever the backend.
        window: most inputs in flight at once (default ``3 * batch_size``): bounds memory.
        item_timeout: seconds before a hung decode worker is replaced (``processes`` only).
        timings: a :class:`Timings` to accumulate the time split into.
    """
    size = batch_size or embedder.batch_size
    if size < 1:
        raise OptionError(f"batch_size must be >= 1, got {size}")
    window = max(window or 3 * size, size)
    workers = embedder.decode_workers if workers is None else workers
    timings = timings if timings is not None else Timings()
    slots = threading.Semaphore(window)
    out: queue.Queue = queue.Queue()
    common = (enumerate(inputs), embedder.preprocessor, workers, slots, out, timings)
    feeder: _Feeder
    if backend == "processes":
        per_worker = max(2, math.ceil(window / max(1, workers)))
        feeder = _ProcessFeeder(*common, item_timeout=item_timeout, per_worker=per_worker)
    elif backend == "threads":
        feeder = _ThreadFeeder(*common)
    else:
        raise ValueError(f"backend must be 'threads' or 'processes', got {backend!r}")
    spec = embedder.card.preprocess
    lut = ops.standardize_lut(spec.rescale, spec.mean, spec.std)
    pending: dict[int, tuple[Any, bool, Any]] = {}
    next_index, total = 0, None
    feeder.start()
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
                yield batch
    finally:
        feeder.stop_event.set()
        feeder.join(timeout=30)


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
