"""The decode budget: pixels being decoded at once, across decode threads and worker processes.

A small file can hold a huge image (a 490 KB PNG of 13000 x 13000 decodes to 676 MB), so the
streaming engine (:mod:`imgbeddings.pipeline`) bounds what is decoded at once, not only how
many items are in flight: each decoder reads an image's header, takes that many pixels from
one :class:`DecodeBudget`, decodes and shrinks the image, and gives them back.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import settings

if TYPE_CHECKING:
    from .pipeline import Timings

#: Bytes one decoded pixel may take while its image is decoded and shrunk: Pillow holds RGB (and
#: RGBA, CMYK) as 4 bytes a pixel, and up to two more full-size images of 4 bytes a pixel may
#: exist on the way (EXIF rotation, grey/palette -> RGB conversion, alpha compositing).
BYTES_PER_DECODED_PIXEL = 12
#: Share of the memory still available (cgroup-aware) that images being decoded may use together.
DECODE_MEMORY_FRACTION = 1 / 8
#: The default budget never goes below this (pixels), so ordinary photos still decode in parallel.
MIN_DECODE_BUDGET = 16_000_000
#: The default budget when the available memory cannot be read (pixels).
FALLBACK_DECODE_BUDGET = 256_000_000


def default_decode_budget() -> int:
    """The decode budget in pixels: ``IMGBEDDINGS_DECODE_BUDGET_MP`` if set, else::

        available memory (cgroup-aware) x DECODE_MEMORY_FRACTION (1/8) / BYTES_PER_DECODED_PIXEL (12)

    at least :data:`MIN_DECODE_BUDGET` (16 MP). 24 GB available -> 250 MP: one 169 MP image at a
    time, beside up to ~80 MP of others.
    """
    mp_ = settings.decode_budget_mp()
    if mp_ is not None:
        return max(1, round(mp_ * 1e6))
    memory = settings.available_memory()
    if memory is None:
        return FALLBACK_DECODE_BUDGET
    return max(MIN_DECODE_BUDGET, int(memory * DECODE_MEMORY_FRACTION / BYTES_PER_DECODED_PIXEL))


# fields of DecodeBudget._state
_TOTAL, _HOLDERS, _NEXT_TICKET, _LOCK_OWNER, _PEAK_HOLDERS, _PEAK_PIXELS, _WAIT_NS = range(7)
_STATE_FIELDS = 7


class DecodeBudget:
    """Pixels being decoded at once, shared by the decode threads and worker processes of a stream.

    A decoder calls :meth:`acquire` with an image's pixel count once its header is read, and
    :meth:`release` once it holds only the small output. Requests are served first come, first
    served, so a large image is not starved by a stream of small ones; an image larger than the
    whole budget waits until nobody holds any and is then decoded alone, so nothing deadlocks.

    The counts live in shared memory with one slot per decoder: worker processes get slots
    ``0 .. workers - 1`` when they are started (passed at creation), threads of this process take
    the next free slot on first use. The parent calls :meth:`reclaim` for a worker it killed or
    found dead, taking back what that worker held or was queued for, even if it died holding the
    lock. Waiting is a poll (sleep and retry, or ``on_wait``), not a ``Condition``: a
    multiprocessing Condition is left broken when a process waiting on it is killed.

    ``ctx``: a multiprocessing context when worker processes share the budget; None for threads
    of this process only (no named semaphore, no resource tracker).
    """

    def __init__(self, pixels: int, slots: int, ctx: Any = None, first_local_slot: int = 0) -> None:
        self.pixels = max(1, int(pixels))
        self.slots = slots
        self.first_local_slot = first_local_slot
        if ctx is None:
            self._lock: Any = threading.Lock()
            self._held: Any = (ctypes.c_int64 * slots)()
            self._ticket: Any = (ctypes.c_int64 * slots)()
            self._state: Any = (ctypes.c_int64 * _STATE_FIELDS)()
        else:
            self._lock = ctx.Lock()
            self._held = ctx.RawArray("q", slots)
            self._ticket = ctx.RawArray("q", slots)
            self._state = ctx.RawArray("q", _STATE_FIELDS)
        self._init_local()

    def _init_local(self) -> None:
        self._local = threading.local()
        self._slot_lock = threading.Lock()
        self._next_local = self.first_local_slot

    def __getstate__(self) -> dict[str, Any]:  # sent to a worker process when it is started
        state = dict(self.__dict__)
        for name in ("_local", "_slot_lock", "_next_local"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    def _local_slot(self) -> int:
        slot = getattr(self._local, "slot", None)
        if slot is None:
            with self._slot_lock:
                slot = self._next_local
                if slot >= self.slots:
                    raise RuntimeError(f"decode budget: more than {self.slots} decoders")
                self._next_local += 1
            self._local.slot = slot
        return slot

    @contextlib.contextmanager
    def _locked(self, slot: int) -> Iterator[None]:
        self._lock.acquire()
        self._state[_LOCK_OWNER] = slot + 1
        try:
            yield
        finally:
            self._state[_LOCK_OWNER] = 0
            self._lock.release()

    def _try_grant(self, slot: int, pixels: int) -> bool:
        """Under the lock: queue ``slot`` (first call) and give it ``pixels`` if it is first in
        line and they fit (or nobody holds any)."""
        st, tickets = self._state, self._ticket
        if not tickets[slot]:
            st[_NEXT_TICKET] += 1
            tickets[slot] = st[_NEXT_TICKET]
        mine = tickets[slot]
        if any(0 < tickets[i] < mine for i in range(self.slots)):
            return False
        total = st[_TOTAL]
        if total and total + pixels > self.pixels:
            return False
        tickets[slot] = 0
        if not self._held[slot]:
            st[_HOLDERS] += 1
        self._held[slot] += pixels
        st[_TOTAL] = total + pixels
        st[_PEAK_HOLDERS] = max(st[_PEAK_HOLDERS], st[_HOLDERS])
        st[_PEAK_PIXELS] = max(st[_PEAK_PIXELS], st[_TOTAL])
        return True

    def acquire(
        self, pixels: int, slot: int | None = None, on_wait: Callable[[], Any] | None = None
    ) -> float:
        """Block until ``pixels`` may be decoded; returns the seconds waited. ``slot``: a worker
        process's own slot (None: this thread's). ``on_wait`` is called between tries instead of
        sleeping (it should block for a moment)."""
        slot = self._local_slot() if slot is None else slot
        pixels = max(1, int(pixels))
        start = time.perf_counter()
        delay = 0.001
        try:
            while True:
                with self._locked(slot):
                    if self._try_grant(slot, pixels):
                        waited = time.perf_counter() - start
                        self._state[_WAIT_NS] += int(waited * 1e9)
                        return waited
                if on_wait is not None:
                    on_wait()
                else:
                    time.sleep(delay)
                    delay = min(2 * delay, 0.02)
        except BaseException:
            with self._locked(slot):
                self._ticket[slot] = 0  # leave the queue, or everyone behind would wait forever
            raise

    def release(self, slot: int | None = None) -> None:
        """Give back everything ``slot`` (None: this thread's) holds."""
        slot = self._local_slot() if slot is None else slot
        with self._locked(slot):
            self._drop(slot)

    def _drop(self, slot: int) -> int:
        held = self._held[slot]
        if held:
            self._held[slot] = 0
            self._state[_TOTAL] -= held
            self._state[_HOLDERS] -= 1
        self._ticket[slot] = 0
        return held

    def reclaim(self, slot: int) -> int:
        """Take back what the worker in ``slot`` held (call once it is dead); returns the pixels."""
        while not self._lock.acquire(True, 0.5):
            if self._state[_LOCK_OWNER] == slot + 1:  # it died holding the lock: take it over
                break
        self._state[_LOCK_OWNER] = slot + 1
        try:
            return self._drop(slot)
        finally:
            self._state[_LOCK_OWNER] = 0
            self._lock.release()

    def waiting(self, slot: int) -> bool:
        """Whether ``slot`` is queued for pixels (its decoding has not started)."""
        return bool(self._ticket[slot])

    def held(self, slot: int | None = None) -> int:
        """Pixels held by ``slot``, or by everyone (None)."""
        return self._state[_TOTAL] if slot is None else self._held[slot]

    def record(self, timings: Timings) -> None:
        """Copy what the budget did into ``timings``."""
        st = self._state
        timings.budget_mp = self.pixels / 1e6
        timings.budget_wait += st[_WAIT_NS] / 1e9
        timings.peak_decoding = max(timings.peak_decoding, st[_PEAK_HOLDERS])
        timings.peak_decoding_mp = max(timings.peak_decoding_mp, st[_PEAK_PIXELS] / 1e6)
