"""Embed files on a Ray cluster (Ray Data batch inference) into the same resumable output folder
as :func:`imgbeddings.job.embed_files`, so ``imgbeddings.load``, ``info`` and ``search`` read it
unchanged::

    from imgbeddings.ray_engine import embed_files_ray
    result = embed_files_ray(["s3://bucket/photos/"], "out/", recursive=True, actors=4, cpus_per_actor=2)

Inputs are what the local job takes (files, folders, ``.txt`` lists, ``-``) plus URIs
(``s3://``, ``gs://``, ... through fsspec: :mod:`imgbeddings.uris`), or a Ray Dataset with a
``path`` column and, optionally, a ``bytes`` column (``ray.data.read_binary_files(...,
include_paths=True)``).

The driver (this process) does what the local job does before and after: it opens the output
(taking its lock), skips the inputs already done (same path, size and mtime) and is the single
writer of every row. The work in between is a Ray Data ``map_batches`` over an actor pool: each
actor builds the :class:`~imgbeddings.embedder.Embedder` once (ONNX Runtime threads = the actor's
CPUs), reads (remote objects concurrently) and decodes its batch's inputs where it runs, and
returns the vectors. Bad files come back as failure rows with the same error classes as a local
run; a decode that hangs past ``item_timeout`` is abandoned as ``WorkerCrashed``.

A killed actor is restarted and its batch retried, one input at a time, each noted in a small
ledger actor first: an input that kills its actor again is recorded as ``WorkerCrashed`` instead
of being retried for ever. The driver writes each input exactly once (it ignores a row for an
input it already wrote). Local paths must be readable at the same paths on every node (a shared
file system); URIs are read by each actor itself.

Needs ``pip install 'imgbeddings[ray]'``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import uris
from .embedder import Embedder
from .errors import Failure, MissingExtra, OptionError, describe
from .images.preprocess import DEFAULT_MODE, EXTREME_ASPECT
from .inputs import named_entries
from .job import JobResult, open_output, plan_work
from .models.registry import DEFAULT_MODEL
from .pipeline import DEFAULT_ITEM_TIMEOUT, Timings, decode_item, run_decoded
from .store import OutputStore


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtra(f"the Ray engine needs Ray Data ({exc}): pip install 'imgbeddings[ray]'") from exc
    return ray


class _Ledger:
    """Which batches and inputs are being embedded right now (a Ray actor, no CPU): ``begin``
    counts the attempts at each key that have not ended, so an actor that finds its batch begun
    before knows the last attempt died with its actor."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def begin(self, key: str) -> int:
        self.open[key] = self.open.get(key, 0) + 1
        return self.open[key]

    def end(self, key: str) -> None:
        self.open.pop(key, None)


#: The columns every actor call returns (one row per input row).
_COLUMNS = ("path", "size", "mtime_ns", "skipped", "vector", "ok", "error", "message", "aspect")


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
        *,
        ledger: Any,
        storage_options: dict[str, Any] | None = None,
        item_timeout: float = DEFAULT_ITEM_TIMEOUT,
        skip: list[Any] | None = None,
        faults: dict[str, str] | None = None,
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
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="imgbeddings-decode")
        self.ledger = ledger
        self.storage_options = storage_options
        self.item_timeout = item_timeout
        # a Ray Dataset's rows already in the output (their paths), shared through the object store
        self.skip: frozenset[str] = _ray().get(skip[0]) if skip else frozenset()
        #: testing hooks: ``kill_once`` (a marker file: the first call that finds none makes it and
        #: kills the actor), ``poison`` (the actor dies whenever it decodes a path ending so),
        #: ``hang`` (decoding a path ending so takes 4 x ``item_timeout``)
        self.faults = faults or {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        marker = self.faults.get("kill_once")
        if marker and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
        rows = _Rows.of(batch, self.skip, self.embedder.dim, self.storage_options)
        work = [i for i in range(len(rows.paths)) if not rows.skipped[i]]
        key = "batch:" + hashlib.sha1("\0".join(rows.paths).encode("utf-8", "surrogatepass")).hexdigest()
        if self._attempts(key) == 1:
            self._embed(rows, work)
        else:  # this batch's last attempt died with its actor: one input at a time, each noted
            for i in work:
                item_key = "input:" + rows.paths[i]
                if self._attempts(item_key) > 1:
                    rows.fail(i, "WorkerCrashed", "its Ray actor died while embedding it, twice")
                else:
                    self._embed(rows, [i])
                self.ledger.end.remote(item_key)
        self.ledger.end.remote(key)
        return rows.columns()

    def _attempts(self, key: str) -> int:
        """Note an attempt at ``key`` in the ledger; the attempts not ended, this one included.
        While the ledger's process is still starting (the job's first second or so) the
        attempt is noted without waiting and counted as the first, so that start-up costs the
        job nothing; a batch that kills its actor then is caught at its next attempt."""
        answer = self.ledger.begin.remote(key)
        ready, _ = _ray().wait([answer], timeout=0.05)
        return _ray().get(answer) if ready else 1

    def _embed(self, rows: _Rows, work: list[int]) -> None:
        """Read, decode and embed rows ``work`` of ``rows`` (filled in place)."""
        if not work:
            return
        items: list[Any] = [rows.data[i] if rows.data is not None else rows.paths[i] for i in work]
        remote = [k for k, item in enumerate(items) if isinstance(item, str) and uris.is_uri(item)]
        for k, got in zip(
            remote, uris.read_many([items[k] for k in remote], self.storage_options), strict=True
        ):
            items[k] = got  # bytes, or the InputError that failed the read
        for k, item in enumerate(items):
            if isinstance(item, (bytes, bytearray)) and rows.sizes[work[k]] < 0:
                rows.sizes[work[k]] = len(item)
        answers = self._decode(items)
        done = run_decoded(self.embedder, items, answers)
        bad = {f.index: f for f in done.failures}
        for k, i in enumerate(work):
            failure = bad.get(k)
            if failure is not None:
                rows.fail(i, failure.error, failure.message)
            else:
                rows.ok[i], rows.vectors[i], rows.aspect[i] = True, done.vectors[k], done.aspect[k]

    def _decode(self, items: list[Any]) -> list[tuple]:
        """:func:`decode_item` of each item in the actor's thread pool; a decode still running
        ``item_timeout`` s after the last one finished is abandoned as ``WorkerCrashed`` (its
        thread cannot be stopped: the pool is replaced)."""
        answers: list[tuple] = []
        pending: dict[Future, int] = {}
        for k, item in enumerate(items):
            if isinstance(item, Exception):  # the read failed
                answers.append(("err", k, Failure.from_error(item, k)))
            else:
                pending[self._pool.submit(self._decode_one, item, k)] = k
        while pending:
            finished, _ = wait(pending, timeout=self.item_timeout, return_when=FIRST_COMPLETED)
            for fut in finished:
                answers.append(fut.result())
                del pending[fut]
            if finished:
                continue
            old, self._pool = (
                self._pool,
                ThreadPoolExecutor(self.threads, thread_name_prefix="imgbeddings-decode"),
            )
            for fut, k in list(pending.items()):
                if fut.cancel():  # not started: to the new pool
                    del pending[fut]
                    pending[self._pool.submit(self._decode_one, items[k], k)] = k
                elif fut.running():
                    del pending[fut]
                    reason = f"decoding took over {self.item_timeout:g} s; the input was abandoned"
                    answers.append(("err", k, Failure(k, describe(items[k]), "WorkerCrashed", reason)))
            old.shutdown(wait=False)
        return answers

    def _decode_one(self, item: Any, index: int) -> tuple:
        if isinstance(item, str) and self.faults:
            if item.endswith(self.faults.get("poison", "\0")):
                os._exit(1)
            if item.endswith(self.faults.get("hang", "\0")):
                time.sleep(4 * self.item_timeout)
        return decode_item(self.embedder.preprocessor, item, index)


@dataclass
class _Rows:
    """One actor call's rows: what came in (paths, optional bytes, sizes) and what goes out."""

    paths: list[str]
    data: list[Any] | None
    sizes: np.ndarray
    mtimes: np.ndarray
    skipped: np.ndarray
    dim: int
    vectors: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)
    aspect: np.ndarray = field(init=False)
    error: np.ndarray = field(init=False)
    message: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.vectors = np.zeros((n, self.dim), dtype=np.float32)
        self.ok = np.zeros(n, dtype=bool)
        self.aspect = np.ones(n, dtype=np.float64)
        self.error = np.full(n, "", dtype=object)
        self.message = np.full(n, "", dtype=object)

    @classmethod
    def of(
        cls,
        batch: dict[str, np.ndarray],
        skip: frozenset[str],
        dim: int,
        storage_options: dict[str, Any] | None = None,
    ) -> _Rows:
        """The rows of a batch: a planned one (path, size, mtime_ns) or a Ray Dataset's (path,
        optional bytes). A Dataset row's input is its bytes when it has them (its path then only
        names it), else its path, which is read and stored like a command-line input; its size
        and mtime are found here (URIs with ``storage_options``)."""
        n = len(batch["path"])
        data = list(batch["bytes"]) if "bytes" in batch else None
        paths = [_text(p) for p in batch["path"]]
        if "size" in batch:
            sizes = np.asarray(batch["size"], dtype=np.int64).copy()
            mtimes = np.asarray(batch["mtime_ns"], dtype=np.int64).copy()
        else:
            sizes, mtimes = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
            if data is None:
                found = named_entries(paths, storage_options)
                paths = [name for name, _, _ in found]
                sizes[:] = [size for _, size, _ in found]
                mtimes[:] = [mtime for _, _, mtime in found]
        skipped = np.array([p in skip for p in paths], dtype=bool)
        return cls(paths, data, sizes, mtimes, skipped, dim)

    def fail(self, i: int, error: str, message: str) -> None:
        self.ok[i], self.error[i], self.message[i] = False, error, message

    def columns(self) -> dict[str, np.ndarray]:
        return {
            "path": np.asarray(self.paths, dtype=object),
            "size": self.sizes,
            "mtime_ns": self.mtimes,
            "skipped": self.skipped,
            "vector": self.vectors,
            "ok": self.ok,
            "error": self.error,
            "message": self.message,
            "aspect": self.aspect,
        }


def _text(value: Any) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


@dataclass
class _Writes:
    """The driver's side: each returned row written once, counted and reported."""

    store: OutputStore
    on_batch: Callable[[int, list[Failure]], None] | None = None
    written: set[str] = field(default_factory=set)
    failures: list[Failure] = field(default_factory=list)
    extreme: list[tuple[str, float]] = field(default_factory=list)
    skipped: int = 0

    def take(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        """Write every row of ``batches`` (column dicts, as the actors return them); a row for a
        path already written (a retried batch's second answer) is ignored."""
        for batch in batches:
            new_failures: list[Failure] = []
            done = 0
            for row, path in enumerate(batch["path"].tolist()):
                if path in self.written:
                    continue
                self.written.add(path)
                if batch["skipped"][row]:
                    self.skipped += 1
                    continue
                done += 1
                size, mtime = int(batch["size"][row]), int(batch["mtime_ns"][row])
                if batch["ok"][row]:
                    self.store.add(path, size, mtime, batch["vector"][row])
                    if batch["aspect"][row] > EXTREME_ASPECT:
                        self.extreme.append((path, float(batch["aspect"][row])))
                else:
                    index = len(self.written) - 1
                    failure = Failure(
                        index, describe(path), str(batch["error"][row]), str(batch["message"][row])
                    )
                    self.failures.append(failure)
                    new_failures.append(failure)
                    self.store.add(path, size, mtime, None, failure.error, failure.message)
            if self.on_batch and done:
                self.on_batch(done, new_failures)


def _is_dataset(obj: Any) -> bool:
    ray_data = __import__("sys").modules.get("ray.data")
    return ray_data is not None and isinstance(obj, ray_data.Dataset)


def embed_files_ray(
    paths: Iterable[str] | Any,
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
    storage_options: dict[str, Any] | None = None,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, list[Failure]], None] | None = None,
    quiet: bool = False,
    _faults: dict[str, str] | None = None,
    **embedder_options: Any,
) -> JobResult:
    """Embed files on a Ray cluster into a resumable Parquet output folder; the same folder, rows
    and vectors as :func:`imgbeddings.job.embed_files` on the same files.

    Args:
        paths: files, folders, ``.txt`` lists, ``-`` and URIs (``s3://bucket/prefix/`` is listed
            like a folder), as for :func:`~imgbeddings.job.embed_files`; or a Ray Dataset with a
            ``path`` column (strings) and optionally a ``bytes`` column (the encoded image; then
            ``path`` only names the row). A Dataset's row is skipped when its path is in the
            output already (it carries no size or mtime to compare).
        output, model, mode, recursive, retry_failed, shard_size, wait, npy, stdin,
            on_start, on_batch: as for :func:`~imgbeddings.job.embed_files` (``on_start`` is not
            called for a Dataset, whose length is not known before it runs).
        actors: embedding actors (default: the cluster's CPUs // ``cpus_per_actor``).
        cpus_per_actor: CPUs each actor reserves: its ONNX Runtime threads and decode threads.
        batch_size: inputs per actor call (and per ONNX Runtime run).
        address: the Ray cluster to join (``ray.init(address=...)``; None: a local one with this
            machine's CPUs). When Ray is already initialised, that session is used as it is.
        storage_options: fsspec options for URIs (credentials, ``endpoint_url``, ...), used by
            the driver's listing and every actor's reads; default: the store's own configuration.
        item_timeout: seconds a decode may run before its input is abandoned (``WorkerCrashed``).
        quiet: keep Ray's and Ray Data's INFO logs and Ray Data's progress off stderr (the CLI
            shows its own progress); warnings and errors still show.
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
    if not item_timeout > 0:
        raise OptionError(f"item_timeout must be > 0 seconds, got {item_timeout}")
    ray = _ray()
    dataset = paths if _is_dataset(paths) else None
    if dataset is not None:
        columns = dataset.columns()
        if "path" not in columns:
            raise OptionError(f"a Ray Dataset to embed needs a 'path' column; it has {columns}")
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
    writes = _Writes(store, on_batch)
    failed_before = 0
    pool = actors or 1
    ledger = None
    try:
        if dataset is None:
            todo, skipped, failed_before = plan_work(
                paths,
                store,
                recursive=recursive,
                retry_failed=retry_failed,
                stdin=stdin,
                storage_options=storage_options,
            )
            store.counts.skipped = skipped
            if on_start:
                on_start(len(todo), skipped)
        if dataset is not None or todo:
            if not ray.is_initialized():
                ray.init(
                    address=address,
                    include_dashboard=False,
                    **({"logging_level": logging.WARNING} if quiet else {}),
                )
            if actors is None:
                cpus = int(ray.cluster_resources().get("CPU", 1))
                pool = max(1, cpus // cpus_per_actor)
            if dataset is not None:
                done = [p for p, row in store.rows.items() if not (row.failed and retry_failed)]
                skip = [ray.put(frozenset(done))] if done else None
                ds = dataset.select_columns(["path", *(["bytes"] if "bytes" in columns else [])])
            else:
                skip = None
                ds = ray.data.from_items(
                    [{"path": p, "size": size, "mtime_ns": mtime} for p, size, mtime in todo],
                    override_num_blocks=min(-(-len(todo) // batch_size), 4096),  # a block per batch
                )
            if quiet:
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                ray.data.DataContext.get_current().enable_progress_bars = False
            ledger = ray.remote(num_cpus=0)(_Ledger).remote()
            ds = ds.map_batches(
                _EmbedActor,
                fn_constructor_args=_actor_args(
                    model, mode, normalize, store.sources["pca"] or pca, cpus_per_actor, embedder_options
                ),
                fn_constructor_kwargs={
                    "ledger": ledger,
                    "storage_options": storage_options,
                    "item_timeout": item_timeout,
                    "skip": skip,
                    "faults": _faults,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(
                    min_size=1 if dataset is not None else pool, max_size=pool
                ),
                num_cpus=cpus_per_actor,
                # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a
                # killed actor is replaced and its batches run again (naming them here is
                # deprecated since Ray 2.60)
            )
            t0 = time.perf_counter()
            writes.take(ds.iter_batches(batch_format="numpy", batch_size=None))
            timings.inference += time.perf_counter() - t0  # wall time of the distributed part
            timings.items = len(writes.written) - writes.skipped
            store.counts.skipped += writes.skipped
            if dataset is None and len(writes.written) < len(todo):
                missing = len(todo) - len(writes.written)
                raise RuntimeError(f"the Ray job returned no row for {missing} of {len(todo)} inputs")
    except BaseException:
        store.abort()  # keeps the rows done so far; a folder it made that holds nothing goes; unlocks
        raise
    finally:
        if ledger is not None:
            ray.kill(ledger)
    counts = store.close(npy=npy)
    failures = sorted(writes.failures, key=lambda f: f.index or 0)
    seconds = time.perf_counter() - started
    return JobResult(
        out, counts, seconds, timings, failures, pool, cpus_per_actor, failed_before, writes.extreme
    )


def _actor_args(
    model: str | os.PathLike[str],
    mode: str,
    normalize: bool,
    pca: Any,
    threads: int,
    embedder_options: dict[str, Any],
) -> tuple[Any, ...]:
    """The Embedder arguments every actor is built with: the model as an absolute path when it is
    a local file (so every actor on this machine finds it), else its name or repo."""
    model_arg = str(model)
    if os.path.exists(model_arg):
        model_arg = str(Path(model_arg).resolve())
    return model_arg, mode, normalize, pca, threads, embedder_options


__all__ = ["embed_files_ray"]
