"""Embed files on a Ray cluster (Ray Data batch inference) into the same resumable output folder
as :func:`imgbeddings.job.embed_files`, so ``imgbeddings.load``, ``info`` and ``search`` read it
unchanged::

    from imgbeddings.ray_engine import embed_files_ray
    result = embed_files_ray(["photos/"], "out/", recursive=True, actors=4, cpus_per_actor=2)

The driver (this process) does what the local job does before and after: it opens the output
(taking its lock), skips the inputs already done (same path, size and mtime) and is the single
writer of every row. The work in between is a Ray Data ``map_batches`` over an actor pool: each
actor builds the :class:`~imgbeddings.embedder.Embedder` once (ONNX Runtime threads = the actor's
CPUs), reads and decodes its batch's files where it runs, and returns the vectors. Bad files come
back as failure rows with the same error classes as a local run.

A killed actor is restarted and its batches retried; the driver writes each input exactly once
(it ignores a row for an input it already wrote). The files must be readable at the same paths
on every node (a shared file system).

Needs ``pip install 'imgbeddings[ray]'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .embedder import Embedder
from .errors import Failure, MissingExtra, OptionError, describe
from .images.preprocess import DEFAULT_MODE, EXTREME_ASPECT
from .job import JobResult, open_output, plan_work
from .models.registry import DEFAULT_MODEL
from .pipeline import Timings, decode_item, run_decoded


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtra(f"the Ray engine needs Ray Data ({exc}): pip install 'imgbeddings[ray]'") from exc
    return ray


class _EmbedActor:
    """The batch callable of the actor pool: one Embedder per actor, built once."""

    def __init__(
        self,
        model: str,
        mode: str,
        normalize: bool,
        pca: Any,
        threads: int,
        embedder_options: dict[str, Any],
        crash_marker: str | None = None,
    ) -> None:
        self.embedder = Embedder(
            model,
            mode=mode,  # type: ignore[arg-type]
            normalize=normalize,
            pca=pca,
            threads=threads,
            spin=False,  # decoding shares the actor's CPUs with inference
            **embedder_options,
        )
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        #: testing hook: the first call that finds no file at this path makes it and kills the actor
        self._crash_marker = crash_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._crash_marker and not os.path.exists(self._crash_marker):
            Path(self._crash_marker).touch()
            os._exit(1)
        paths = [str(p) for p in batch["path"]]
        n = len(paths)
        pre = self.embedder.preprocessor
        jobs = [(pre, p, i) for i, p in enumerate(paths)]
        if self._pool is not None:
            decoded = list(self._pool.map(lambda a: decode_item(*a), jobs))
        else:
            decoded = [decode_item(*a) for a in jobs]
        done = run_decoded(self.embedder, paths, decoded)
        error = np.full(n, "", dtype=object)
        message = np.full(n, "", dtype=object)
        for failure in done.failures:
            error[failure.index], message[failure.index] = failure.error, failure.message
        vectors = np.where(done.ok[:, None], done.vectors, 0.0).astype(np.float32)
        ok, aspect = done.ok, done.aspect
        return {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "vector": vectors,
            "ok": ok,
            "error": error,
            "message": message,
            "aspect": aspect,
        }


def embed_files_ray(
    paths: Iterable[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    mode: str = DEFAULT_MODE,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    batch_size: int = 32,
    address: str | None = None,
    recursive: bool = False,
    retry_failed: bool = False,
    shard_size: int = 4096,
    normalize: bool = False,
    pca: Any = None,
    wait: float | None = None,
    npy: bool = False,
    stdin: Any = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, list[Failure]], None] | None = None,
    _crash_marker: str | None = None,
    **embedder_options: Any,
) -> JobResult:
    """Embed files on a Ray cluster into a resumable Parquet output folder; the same folder, rows
    and vectors as :func:`imgbeddings.job.embed_files` on the same files.

    Args:
        paths, output, model, mode, recursive, retry_failed, shard_size, wait, npy, stdin,
            on_start, on_batch: as for :func:`~imgbeddings.job.embed_files`.
        actors: embedding actors (default: the cluster's CPUs // ``cpus_per_actor``).
        cpus_per_actor: CPUs each actor reserves: its ONNX Runtime threads and decode threads.
        batch_size: inputs per actor call (and per ONNX Runtime run).
        address: the Ray cluster to join (``ray.init(address=...)``; None: a local one with this
            machine's CPUs). When Ray is already initialised, that session is used as it is.
        normalize, pca, embedder_options: :class:`Embedder` options (built on every actor; the
            model and a PCA file must be reachable there at the same path or name).

    The result's ``workers`` is the number of actors, ``threads`` the CPUs of each.
    """
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise OptionError(f"shard_size must be >= 1, got {shard_size}")
    if cpus_per_actor < 1:
        raise OptionError(f"cpus_per_actor must be >= 1, got {cpus_per_actor}")
    if actors is not None and actors < 1:
        raise OptionError(f"actors must be >= 1, got {actors}")
    ray = _ray()
    started = time.perf_counter()
    # the driver's Embedder only gives the identity, card and sources the output records
    # (the INT8 rewrite changes how fast it runs, never its identity: not worth its time here)
    local = Embedder(
        model,
        mode=mode,  # type: ignore[arg-type]
        normalize=normalize,
        pca=pca,
        threads=1,
        **{"int8_fastpath": False, **embedder_options},
    )
    out = Path(output)
    store = open_output(out, local, model, pca, shard_size=shard_size, wait=wait)
    timings = Timings()
    failures: list[Failure] = []
    extreme: list[tuple[str, float]] = []
    pool = actors or 1
    try:
        todo, skipped, failed_before = plan_work(
            paths, store, recursive=recursive, retry_failed=retry_failed, stdin=stdin
        )
        store.counts.skipped = skipped
        if on_start:
            on_start(len(todo), skipped)
        if todo:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False)
            if actors is None:
                cpus = int(ray.cluster_resources().get("CPU", 1))
                pool = max(1, cpus // cpus_per_actor)
            # the model as a path when it is a local file, so every actor on this machine finds it
            model_arg = str(model)
            if os.path.exists(model_arg):
                model_arg = str(Path(model_arg).resolve())
            pca_arg = store.sources["pca"] or pca
            ds = ray.data.from_items(
                [{"path": p, "index": i} for i, (p, _, _) in enumerate(todo)],
                override_num_blocks=min(-(-len(todo) // batch_size), 4096),  # a block per batch
            )
            ds = ds.map_batches(
                _EmbedActor,
                fn_constructor_kwargs={
                    "model": model_arg,
                    "mode": mode,
                    "normalize": normalize,
                    "pca": pca_arg,
                    "threads": cpus_per_actor,
                    "embedder_options": embedder_options,
                    "crash_marker": _crash_marker,
                },
                batch_size=batch_size,
                batch_format="numpy",
                concurrency=pool,
                num_cpus=cpus_per_actor,
                # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a
                # killed actor is replaced and its batches run again (naming them here is
                # deprecated since Ray 2.60)
            )
            written: set[int] = set()
            t0 = time.perf_counter()
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                new_failures: list[Failure] = []
                done = 0
                for row, index in enumerate(batch["index"].tolist()):
                    if index in written:  # a retried batch's second answer
                        continue
                    written.add(index)
                    done += 1
                    path, size, mtime = todo[index]
                    if batch["ok"][row]:
                        store.add(path, size, mtime, batch["vector"][row])
                        if batch["aspect"][row] > EXTREME_ASPECT:
                            extreme.append((path, float(batch["aspect"][row])))
                    else:
                        failure = Failure(
                            index, describe(path), str(batch["error"][row]), str(batch["message"][row])
                        )
                        failures.append(failure)
                        new_failures.append(failure)
                        store.add(path, size, mtime, None, failure.error, failure.message)
                if on_batch and done:
                    on_batch(done, new_failures)
            timings.inference += time.perf_counter() - t0  # wall time of the distributed part
            timings.items = len(written)
            missing = len(todo) - len(written)
            if missing:
                raise RuntimeError(f"the Ray job returned no row for {missing} of {len(todo)} inputs")
    except BaseException:
        store.abort()  # keeps the rows done so far; a folder it made that holds nothing goes; unlocks
        raise
    counts = store.close(npy=npy)
    failures.sort(key=lambda f: f.index or 0)
    seconds = time.perf_counter() - started
    return JobResult(out, counts, seconds, timings, failures, pool, cpus_per_actor, failed_before, extreme)
