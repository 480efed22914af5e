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
- **Decode budget.** At most ``window`` items are in flight, but one image's decoded pixels can
  be ~100x its file (a 490 KB PNG of 13000 x 13000 decodes to 676 MB). So every decoder (a
  decode thread, a worker process, the feeder thread) reads the image's header first (size
  known, nothing decoded; JPEG draft scaling already applied), takes that many pixels from one
  :class:`~imgbeddings.budget.DecodeBudget` shared by all of them, decodes and shrinks the
  image, and gives the pixels back once only the small ``size x size`` output remains. Requests are served in
  arrival order; an image larger than the whole budget is decoded alone. The parent takes
  back what a crashed or hung worker held when it replaces the worker. Default budget:
  :func:`~imgbeddings.budget.default_decode_budget`.
- Failures are values (:class:`~imgbeddings.errors.Failure`), never exceptions that abort the
  stream; callers decide (``Embedder.embed`` and ``--strict`` stop at the first). So is a model
  output with NaN or inf in it: that input becomes a ``NonFiniteOutput`` failure.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import settings
from .budget import DecodeBudget, default_decode_budget
from .errors import Failure, ImgbeddingsError, InputError, OptionError, describe
from .images import ops
from .images.preprocess import EXTREME_ASPECT, Preprocessor
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
    #: Long side / short side of each decoded image (NaN where it failed); above
    #: :data:`~imgbeddings.images.preprocess.EXTREME_ASPECT`, its vector is less reliable.
    aspect: np.ndarray | None = None

    def extreme(self) -> list[tuple[Any, float]]:
        """``(item, aspect)`` of the inputs more than :data:`EXTREME_ASPECT`: 1 (long side to short)."""
        if self.aspect is None:
            return []
        rows = np.flatnonzero(self.aspect > EXTREME_ASPECT)
        return [(self.items[i], float(self.aspect[i])) for i in rows]

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
            empty = np.empty(0, dtype=np.float32)
            return cls(0, [], np.empty((0, dim), dtype=np.float32), np.empty(0, dtype=bool), [], empty)
        return cls(
            batches[0].start,
            [x for b in batches for x in b.items],
            np.concatenate([b.vectors for b in batches]),
            np.concatenate([b.ok for b in batches]),
            [f for b in batches for f in b.failures],
            np.concatenate(
                [b.aspect if b.aspect is not None else np.full(len(b), np.nan, np.float32) for b in batches]
            ),
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
    #: the decode budget of the run (megapixels), and what it did: seconds decoders waited for
    #: it (summed), the most images and megapixels being decoded at the same time.
    budget_mp: float = 0.0
    budget_wait: float = 0.0
    peak_decoding: int = 0
    peak_decoding_mp: float = 0.0
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


def _decode(
    pre: Preprocessor,
    index: int,
    item: Any,
    budget: DecodeBudget | None = None,
    slot: int | None = None,
    on_wait: Callable[[], Any] | None = None,
) -> tuple:
    """Decode one item to its uint8 (S, S, 3) geometry: ``("ok", index, array, decode_s,
    geometry_s, aspect)`` (``aspect``: long side / short side of the decoded image) or
    ``("err", index, Failure)``. Never raises for a bad item.

    With a ``budget``, the image's pixels are taken from it between reading the header and
    decoding, and given back once the full-size image is dropped (``slot``, ``on_wait``: see
    :meth:`DecodeBudget.acquire`; an error raised while waiting is re-raised, not reported as
    the item's failure). ``decode_s`` leaves out the time spent waiting for the budget.
    """
    waited = 0.0
    abort: BaseException | None = None

    def reserve(pixels: int) -> None:
        nonlocal waited, abort
        try:
            waited += budget.acquire(pixels, slot, on_wait)  # type: ignore[union-attr]
        except BaseException as exc:
            abort = exc
            raise

    t0 = time.perf_counter()
    try:
        img = pre.load(item, index, reserve if budget is not None else None)
        t1 = time.perf_counter()
        aspect = max(img.size) / max(1, min(img.size))
        arr = np.asarray(pre.geometry(img), dtype=np.uint8)
        del img  # the full-size image goes before its pixels go back to the budget
        return ("ok", index, arr, t1 - t0 - waited, time.perf_counter() - t1, aspect)
    except Exception as exc:
        if abort is not None:
            raise abort from None
        if isinstance(exc, InputError):
            return ("err", index, Failure.from_error(exc, index))
        # a bug or an unexpected decoder error: report it, keep going
        return (
            "err",
            index,
            Failure(index, describe(item), "ImageDecodeError", f"{type(exc).__name__}: {exc}"),
        )
    finally:
        if budget is not None:
            budget.release(slot)


def decode_item(pre: Preprocessor, item: Any, index: int = 0) -> tuple:
    """Decode one input to its uint8 (S, S, 3) geometry, as the engine's decoders do:
    ``("ok", index, array, decode_s, geometry_s, aspect)`` or ``("err", index, Failure)``; never
    raises for a bad item. For callers that batch on their own (the HTTP service)."""
    return _decode(pre, index, item)


def run_decoded(embedder: Embedder, items: Sequence[Any], answers: Sequence[tuple]) -> Batch:
    """Embed inputs already decoded by :func:`decode_item` (one answer per item, its index the
    item's position in ``items``, in any order), as the engine embeds a batch: one
    :class:`Batch` whose failures are the decode failures and any NaN/inf output
    (``NonFiniteOutput``). For callers that decode and batch on their own (the HTTP service,
    the Ray engine's actors)."""
    pending = {
        a[1]: (items[a[1]], True, (a[2], a[5])) if a[0] == "ok" else (items[a[1]], False, a[2])
        for a in answers
    }
    spec = embedder.card.preprocess
    lut = ops.standardize_lut(spec.rescale, spec.mean, spec.std)
    return _run_batch(embedder, pending, 0, len(items), lut, Timings())


#: In a worker process: the stream's decode budget and this worker's slot in it.
_WORKER_BUDGET: tuple[DecodeBudget, int] | None = None


def _worker_entry(
    target: Callable[..., None],
    budget: DecodeBudget | None,
    slot: int,
    conn: Connection,
    spec: PreprocessSpec,
    mode: str,
    max_pixels: int | None,
    environ: dict[str, str] | None = None,
) -> None:
    """What a worker process runs: take the parent's environment as it is now (a forkserver
    started earlier holds an older one: a store's credentials set since then, say), note its
    budget slot, then run ``target`` (the decode loop)."""
    global _WORKER_BUDGET
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _WORKER_BUDGET = (budget, slot) if budget is not None else None
    target(conn, spec, mode, max_pixels)


def _worker_main(conn: Connection, spec: PreprocessSpec, mode: str, max_pixels: int | None) -> None:
    """Decode loop of one worker process: receive (index, item), send back :func:`_decode`'s answer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    pre = Preprocessor(spec, mode, max_pixels)  # type: ignore[arg-type]
    budget, slot = _WORKER_BUDGET or (None, None)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, item = msg
        conn.send(_decode(pre, index, item, budget, slot))


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


def worker_context() -> Any:
    """The multiprocessing context of decode worker processes (never ``fork``: the parent has
    threads, ONNX Runtime's among them)."""
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


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
        budget: DecodeBudget | None = None,
    ) -> None:
        super().__init__(name="imgbeddings-feeder", daemon=True)
        self.items = items
        self.pre = pre
        self.n_workers = workers
        self.slots = slots
        self.out = out
        self.timings = timings
        self.budget = budget
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
            _, _, arr, t_decode, t_geom, aspect = msg
            self.timings.add_decode(t_decode, t_geom)
            self.out.put((index, item, True, (arr, aspect)))
        else:
            self.out.put((index, item, False, msg[2]))

    def _decode_here(self, index: int, item: Any) -> None:
        self._result(item, _decode(self.pre, index, item, self.budget, None, self._budget_wait))

    #: What a thread of this process does while it waits for decode budget (None: sleep).
    _budget_wait: Callable[[], Any] | None = None


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
    slot: int
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
        self.ctx = worker_context()
        # While this thread waits for decode budget (an in-memory item), it keeps collecting
        # results and replacing dead workers: a dead worker's budget comes back only that way.
        self._budget_wait = self._collect

    # -- worker management --
    def _start_worker(self, slot: int) -> _Worker:
        parent, child = self.ctx.Pipe()
        spec = (child, self.pre.spec, self.pre.mode, self.pre.max_pixels)
        proc = self.ctx.Process(
            target=_worker_entry,
            args=(self.worker_target, self.budget, slot, *spec, dict(os.environ)),
            name="imgbeddings-decode",
            daemon=True,
        )
        with _main_module_hidden():
            proc.start()
        child.close()
        return _Worker(proc, parent, slot)

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
        if self.budget is not None:
            self.budget.reclaim(w.slot)  # what it held while decoding goes back to the others
        self.workers[self.workers.index(w)] = self._start_worker(w.slot)
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
            elif w.queue and self.budget is not None and self.budget.waiting(w.slot):
                w.busy_since = time.monotonic()  # waiting for decode budget is not hanging
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
            self.workers = [self._start_worker(slot) for slot in range(self.n_workers)]
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
    decode_budget: float | None = None,
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
        timings: a :class:`Timings` to accumulate the time split into (and what the decode
            budget did).
        decode_budget: megapixels being decoded at once, across all decode threads or worker
            processes of this stream (default: :func:`~imgbeddings.budget.default_decode_budget`,
            which reads ``IMGBEDDINGS_DECODE_BUDGET_MP``). An image larger than the budget is
            decoded alone.
    """
    size = batch_size or embedder.batch_size
    if size < 1:
        raise OptionError(f"batch_size must be >= 1, got {size}")
    if decode_budget is not None and not decode_budget > 0:
        raise OptionError(f"decode_budget must be > 0 megapixels, got {decode_budget}")
    if backend not in ("threads", "processes"):
        raise ValueError(f"backend must be 'threads' or 'processes', got {backend!r}")
    window = max(window or 3 * size, size)
    workers = embedder.decode_workers if workers is None else workers
    timings = timings if timings is not None else Timings()
    pixels = round(decode_budget * 1e6) if decode_budget is not None else default_decode_budget()
    slots = threading.Semaphore(window)
    out: queue.Queue = queue.Queue()
    feeder: _Feeder
    if backend == "processes":
        # slots: one per worker process, then the feeder thread (in-memory items; workers=0)
        ctx = worker_context() if workers else None  # no worker processes: no shared memory needed
        budget = DecodeBudget(pixels, workers + 2, ctx, first_local_slot=workers)
        common = (enumerate(inputs), embedder.preprocessor, workers, slots, out, timings, budget)
        per_worker = max(2, math.ceil(window / max(1, workers)))
        feeder = _ProcessFeeder(*common, item_timeout=item_timeout, per_worker=per_worker)
    else:
        budget = DecodeBudget(pixels, max(1, workers) + 2)  # one slot per decode thread
        feeder = _ThreadFeeder(enumerate(inputs), embedder.preprocessor, workers, slots, out, timings, budget)
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
        budget.record(timings)


_NON_FINITE = "the model returned NaN or inf for this input"


def _run_batch(
    embedder: Embedder, pending: dict, start: int, count: int, lut: np.ndarray, timings: Timings
) -> Batch:
    entries = [pending.pop(i) for i in range(start, start + count)]
    ok = np.array([e[1] for e in entries], dtype=bool)
    size = embedder.preprocessor.size
    t0 = time.perf_counter()
    pixels = np.empty((int(ok.sum()), 3, size, size), dtype=np.float32)
    aspect = np.full(count, np.nan, dtype=np.float32)
    for slot, (offset, (_, _, (arr, ratio))) in enumerate((i, e) for i, e in enumerate(entries) if e[1]):
        ops.to_chw_float(arr, lut, pixels[slot])
        aspect[offset] = ratio
    t1 = time.perf_counter()
    vectors = np.full((count, embedder.dim), np.nan, dtype=np.float32)
    if len(pixels):
        vectors[ok] = embedder.run(pixels)
    timings.tensor += t1 - t0
    timings.inference += time.perf_counter() - t1
    # A row with NaN or inf (a broken model, or a card whose values the model cannot take) is
    # that input's failure, never a stored vector.
    bad = ok & ~np.isfinite(vectors).all(axis=1)
    failures = {}
    for offset, (item, good, payload) in enumerate(entries):
        if bad[offset]:
            failures[offset] = Failure(start + offset, describe(item), "NonFiniteOutput", _NON_FINITE)
        elif not good:
            failures[offset] = payload
    vectors[bad] = np.nan
    ok &= ~bad
    failed = [failures[k] for k in sorted(failures)]
    return Batch(start, [e[0] for e in entries], vectors, ok, failed, aspect)
