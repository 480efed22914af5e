"""Jobs over collections: ``embed_stream`` (any iterable, lazily) and ``embed_files`` (files ->
resumable Parquet output). Both run the streaming engine with decode worker processes.

``embed_files`` is ``imgbeddings embed`` as a function (the CLI adds progress and a summary)::

    from imgbeddings import embed_files
    result = embed_files(["photos/"], "out/", recursive=True)
    result.counts.embedded, result.counts.failed, result.counts.skipped
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embedder import Embedder
from .errors import Failure, OptionError
from .images.preprocess import DEFAULT_MODE
from .inputs import entries
from .models.registry import DEFAULT_MODEL
from .pipeline import DEFAULT_ITEM_TIMEOUT, Batch, ThreadPlan, Timings, plan_threads, stream
from .store import OutputStore, RunCounts


def embed_stream(
    model: Embedder | str | os.PathLike[str],
    inputs: Iterable[Any],
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    window: int | None = None,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    timings: Timings | None = None,
    decode_budget: float | None = None,
    **embedder_options: Any,
) -> Iterator[Batch]:
    """Embed a (possibly huge, possibly lazy) iterable of images; yields
    :class:`~imgbeddings.pipeline.Batch` objects in input order as soon as each is ready.

    Args:
        model: an :class:`Embedder`, or a model name/repo/path to build one (then
            ``embedder_options`` go to it and its threads follow :func:`plan_threads`).
        inputs: paths (decoded in worker processes) or any other accepted input (decoded in a
            thread of this process).
        batch_size: inputs per batch (default: the embedder's).
        workers: decode worker processes (default from :func:`plan_threads`; 0 = no processes).
        window: most inputs in flight at once (default ``3 * batch_size``): bounds memory.
        item_timeout: seconds before a hung decode is abandoned (its worker is replaced).
        timings: a :class:`~imgbeddings.pipeline.Timings` to accumulate the time split into.
        decode_budget: megapixels being decoded at once across the workers (default:
            :func:`~imgbeddings.budget.default_decode_budget`).

    Bad inputs never stop the stream: they come back as failures in their batch.
    """
    plan, embedder = _planned_embedder(
        model, workers, embedder_options.pop("threads", None), embedder_options
    )
    return stream(
        embedder,
        inputs,
        backend="processes",
        workers=plan.workers,
        batch_size=batch_size,
        window=window,
        item_timeout=item_timeout,
        timings=timings,
        decode_budget=decode_budget,
    )


def _planned_embedder(
    model: Embedder | str | os.PathLike[str],
    workers: int | None,
    threads: int | None,
    options: dict[str, Any],
) -> tuple[ThreadPlan, Embedder]:
    """The CPU plan (:func:`plan_threads`) and the Embedder that follows it (``model`` as it is
    when it is one already; else built with ``options``, not spinning when nothing decodes beside it)."""
    plan = plan_threads(workers, threads)
    if isinstance(model, Embedder):
        return plan, model
    options.setdefault("spin", plan.workers == 0)
    return plan, Embedder(model, threads=plan.threads, **options)


def open_output(
    out: Path, embedder: Embedder, model: Any, pca: Any, *, shard_size: int, wait: float | None
) -> OutputStore:
    """``out`` opened (and locked) for ``embedder``'s vectors, recording where the model and the
    PCA came from (``model``/``pca`` as the caller gave them), so that a query can later be
    embedded the same way (:func:`imgbeddings.analysis.query.embedder_for`)."""
    sources = {
        "model": str(model) if not isinstance(model, Embedder) else str(embedder.model_path),
        "model_path": str(Path(embedder.model_path).resolve()),
        "pca": str(Path(pca).resolve()) if isinstance(pca, (str, os.PathLike)) else None,
    }
    return OutputStore(
        out, embedder.identity(), embedder.card, shard_size=shard_size, wait=wait, sources=sources
    )


@dataclass
class JobResult:
    """What a run did: counts, the time split, and this run's failures."""

    output: Path
    counts: RunCounts
    seconds: float
    timings: Timings
    failures: list[Failure] = field(default_factory=list)
    workers: int = 0
    threads: int = 0
    #: Inputs skipped because they failed in an earlier run and are unchanged (not retried
    #: without ``retry_failed``); they are among ``counts.skipped``.
    failed_before: int = 0
    #: (path, long side / short side) of the images of this run more than
    #: :data:`~imgbeddings.images.preprocess.EXTREME_ASPECT`: 1, whose vectors are less reliable
    #: (README, "Design notes").
    extreme_aspect: list[tuple[str, float]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every input of this run has a vector in the output (none failed, now or
        before): the CLI exits 0 exactly then, else 6."""
        return not (self.counts.failed or self.failed_before)

    @property
    def images_per_second(self) -> float | None:
        """Inputs processed (embedded or failed) per second; None when nothing was processed."""
        done = self.counts.embedded + self.counts.failed
        return done / self.seconds if done and self.seconds > 0 else None


def plan_work(
    paths: Iterable[str],
    store: OutputStore,
    *,
    recursive: bool,
    retry_failed: bool,
    stdin: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[tuple[str, int | None, int | None]], int, int]:
    """The files still to embed (path, size, mtime_ns) in input order, how many are skipped, and
    how many of those are earlier failures (unchanged, not retried).

    A path listed twice is embedded once. Files already in the output with the same size and
    mtime are skipped; so are earlier failures unless ``retry_failed``; changed files are redone.
    """
    todo: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    skipped = failed_before = 0
    for path, size, mtime in entries(
        paths, recursive=recursive, stdin=stdin, storage_options=storage_options
    ):
        if path in seen:
            continue
        seen.add(path)
        # a missing or dangling input (-1) is recorded as such, retried once it exists
        status = store.status(path, size, mtime)
        if status == "done" or (status == "failed" and not retry_failed):
            skipped += 1
            failed_before += status == "failed"
            continue
        todo.append((path, size, mtime))
    return todo, skipped, failed_before


def embed_files(
    paths: Iterable[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Embedder = DEFAULT_MODEL,
    mode: str = DEFAULT_MODE,
    batch_size: int = 32,
    workers: int | None = None,
    threads: int | None = None,
    recursive: bool = False,
    strict: bool = False,
    retry_failed: bool = False,
    shard_size: int = 4096,
    npy: bool = False,
    wait: float | None = None,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    decode_budget: float | None = None,
    stdin: Any = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, list[Failure]], None] | None = None,
    **embedder_options: Any,
) -> JobResult:
    """Embed files into a resumable Parquet output folder (see :mod:`imgbeddings.store`).

    Args:
        paths: files, folders, ``.txt`` lists of paths, or ``-`` for standard input.
        output: the output folder (created; an existing one is resumed/extended).
        model: model name, hub repo, local file, or a ready :class:`Embedder`.
        mode: ``fast`` (default) or ``exact`` preprocessing (ignored for a ready Embedder).
        workers, threads: decode worker processes and ONNX Runtime threads
            (default: :func:`~imgbeddings.pipeline.plan_threads`).
        strict: stop at the first bad input (rows of the inputs before it are written) by
            raising its :class:`~imgbeddings.errors.InputError`.
        retry_failed: embed again files that failed in an earlier run, though unchanged.
        shard_size: rows per Parquet shard (the most work a kill can lose).
        npy: also write ``embeddings.npy`` + ``paths.txt`` at the end.
        wait: when another run is writing ``output``, wait this many seconds for it to finish
            (``math.inf`` or a negative number: as long as it takes) instead of raising
            :class:`~imgbeddings.errors.OutputLocked` at once (None).
        on_start(total_to_embed, skipped), on_batch(inputs_done, failures_in_batch): progress hooks.
        embedder_options: more :class:`Embedder` options (``normalize``, ``pca``, ``preprocess``, ...).

    An output records everything that changes its vectors (:meth:`Embedder.identity`) and
    refuses a run that would make them otherwise (:class:`~imgbeddings.errors.ModelMismatch`).
    A run that fails before writing anything leaves no output folder behind.
    """
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise OptionError(f"shard_size must be >= 1, got {shard_size}")
    started = time.perf_counter()
    if not isinstance(model, Embedder):
        embedder_options.update(mode=mode, batch_size=batch_size)
    plan, embedder = _planned_embedder(model, workers, threads, embedder_options)
    out = Path(output)
    store = open_output(out, embedder, model, embedder_options.get("pca"), shard_size=shard_size, wait=wait)
    timings = Timings()
    failures: list[Failure] = []
    extreme: list[tuple[str, float]] = []
    try:
        todo, skipped, failed_before = plan_work(
            paths, store, recursive=recursive, retry_failed=retry_failed, stdin=stdin
        )
        store.counts.skipped = skipped
        if on_start:
            on_start(len(todo), skipped)
        batches = embed_stream(
            embedder,
            (p for p, _, _ in todo),
            workers=plan.workers,
            batch_size=batch_size,
            item_timeout=item_timeout,
            timings=timings,
            decode_budget=decode_budget,
        )
        for batch in batches:
            bad = {f.index: f for f in batch.failures}
            for offset in range(len(batch)):
                index = batch.start + offset
                path, size, mtime = todo[index]
                failure = bad.get(index)
                if failure is None:
                    store.add(path, size, mtime, batch.vectors[offset])
                elif strict:
                    batches.close()
                    raise failure.to_error()
                else:
                    failures.append(failure)
                    store.add(path, size, mtime, None, failure.error, failure.message)
            extreme.extend(batch.extreme())
            if on_batch:
                on_batch(len(batch), list(bad.values()))
    except BaseException:
        store.abort()  # keeps the rows done so far; a folder it made that holds nothing goes; unlocks
        raise
    counts = store.close(npy=npy)
    seconds = time.perf_counter() - started
    return JobResult(
        out, counts, seconds, timings, failures, plan.workers, plan.threads, failed_before, extreme
    )
