"""Dynamic micro-batching for the HTTP service: requests' images share ONNX Runtime calls.

Each image is decoded in a thread pool (the engine's own decoder, :func:`~imgbeddings.pipeline.
decode_item`: header checked against the pixel limit before decoding, EXIF, modes), with a
per-image timeout. Decoded images wait in one queue; a single batching task takes up to
``max_batch`` of them, waiting at most ``max_wait_ms`` after the first for more (and not at all
when no other image is being decoded or waiting: a lone request is not delayed), and runs the
model in one inference thread, so the event loop never blocks. A bad image is that image's
:class:`~imgbeddings.errors.Failure`; the batch and the server go on.

Admission is bounded: at most ``max_queue`` images are in the service at once (decoding,
waiting or in inference); more raise :class:`Busy` (the app answers 503 with ``Retry-After``)
instead of growing memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Failure
from ..pipeline import Batch, decode_item, run_decoded


class Busy(Exception):
    """The service holds ``max_queue`` images already: try again later."""


@dataclass
class _Waiting:
    array: np.ndarray
    future: asyncio.Future


class Batcher:
    """Embeds images (bytes) for many concurrent requests in shared batches (module docstring).

    Args:
        embedder: the :class:`~imgbeddings.Embedder` (its preprocessing, model, PCA, normalisation).
        max_batch: most images per ONNX Runtime call.
        max_wait_ms: longest wait, after the first image of a batch, for more to join it.
        max_queue: most images in the service at once (beyond: :class:`Busy`).
        decode_timeout: seconds one image may take to decode (beyond: its ``DecodeTimeout`` failure).
        decode_threads: decoding threads.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(
        self,
        embedder: Any,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        decode_timeout: float = 10.0,
        decode_threads: int = 2,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.decode_timeout = decode_timeout
        self.on_batch = on_batch
        self.decoders = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="imgbeddings-decode")
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="imgbeddings-infer")
        self.admitted = 0
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task | None = None
        self.last_batch_at = time.monotonic()

    @property
    def depth(self) -> int:
        """Images in the service now (decoding, waiting or in inference)."""
        return self.admitted

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.inference.shutdown(wait=False, cancel_futures=True)

    def admit(self, n: int) -> None:
        """Reserve room for ``n`` images, or raise :class:`Busy`."""
        if self.admitted + n > self.max_queue:
            raise Busy(f"{self.admitted} image(s) in the service already (limit {self.max_queue})")
        self.admitted += n

    async def embed(self, blobs: list[bytes]) -> list[np.ndarray | Failure]:
        """A vector or a :class:`Failure` for each image (in order); :class:`Busy` when full."""
        self.admit(len(blobs))
        try:
            return list(await asyncio.gather(*(self._one(i, b) for i, b in enumerate(blobs))))
        finally:
            self.admitted -= len(blobs)

    async def _one(self, index: int, blob: bytes) -> np.ndarray | Failure:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.decoders, decode_item, self.embedder.preprocessor, blob, index)
        try:
            answer = await asyncio.wait_for(work, self.decode_timeout)
        except asyncio.TimeoutError:
            return Failure(
                index, f"<image {index}>", "DecodeTimeout", f"decoding took over {self.decode_timeout:g} s"
            )
        if answer[0] != "ok":
            failure: Failure = answer[2]
            return Failure(index, f"<image {index}>", failure.error, failure.message)
        future = loop.create_future()
        assert self._queue is not None, "Batcher.start() was not called"
        await self._queue.put(_Waiting(answer[2], future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if self.admitted <= len(batch):  # nothing else decoding or waiting: no one to wait for
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [w for w in batch if not w.future.cancelled()]
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                done = await loop.run_in_executor(self.inference, self._infer, [w.array for w in live])
            except Exception as exc:  # the model failed on this batch: its requests learn why
                for w in live:
                    if not w.future.done():
                        w.future.set_result(Failure(None, "<image>", "InferenceError", str(exc)))
                continue
            self.last_batch_at = time.monotonic()
            failed = {f.index: f for f in done.failures}  # NaN or inf outputs
            for i, w in enumerate(live):
                if not w.future.done():
                    w.future.set_result(failed[i] if i in failed else done.vectors[i])

    def _infer(self, arrays: list[np.ndarray]) -> Batch:
        answers = [("ok", i, arr, 0.0, 0.0, float("nan")) for i, arr in enumerate(arrays)]
        return run_decoded(self.embedder, ["<image>"] * len(arrays), answers)

    async def run_text(self, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Run a text-model call on the inference thread (never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.inference, fn)
