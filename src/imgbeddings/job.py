"""An embedding job over files: list -> skip what is done -> stream -> resumable Parquet output.

This is ``imgbeddings embed`` as a function (the CLI adds a progress bar and a summary)::

    from imgbeddings.job import embed_files
    result = embed_files(["photos/"], "out/", recursive=True)
    result.counts.embedded, result.counts.failed, result.counts.skipped
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import errors
from .embedder import Embedder, Failure
from .inputs import canonical_path, expand, file_stat
from .models.registry import DEFAULT_MODEL
from .pipeline import DEFAULT_ITEM_TIMEOUT, Timings, embed_stream, plan_threads
from .store import OutputStore, RunCounts


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

    @property
    def images_per_second(self) -> float:
        done = self.counts.embedded + self.counts.failed
        return done / self.seconds if self.seconds > 0 else 0.0


def plan_work(
    paths: Iterable[str], store: OutputStore, *, recursive: bool, retry_failed: bool, stdin: Any = None
) -> tuple[list[tuple[str, int | None, int | None]], int]:
    """The files still to embed (path, size, mtime_ns) in input order, and how many are skipped.

    A path listed twice is embedded once. Files already in the output with the same size and
    mtime are skipped; so are earlier failures unless ``retry_failed``; changed files are redone.
    """
    todo: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    skipped = 0
    for raw in expand(paths, recursive=recursive, stdin=stdin):
        path = canonical_path(raw)
        if path in seen:
            continue
        seen.add(path)
        st = file_stat(path)
        size, mtime = st if st else (-1, -1)  # missing or dangling: recorded as such, retried once it exists
        status = store.status(path, size, mtime)
        if status == "done" or (status == "failed" and not retry_failed):
            skipped += 1
            continue
        todo.append((path, size, mtime))
    return todo, skipped


def embed_files(
    paths: Iterable[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Embedder = DEFAULT_MODEL,
    mode: str = "fast",
    batch_size: int = 32,
    workers: int | None = None,
    threads: int | None = None,
    recursive: bool = False,
    strict: bool = False,
    retry_failed: bool = False,
    shard_size: int = 4096,
    npy: bool = False,
    item_timeout: float = DEFAULT_ITEM_TIMEOUT,
    stdin: Any = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    **embedder_options: Any,
) -> JobResult:
    """Embed files into a resumable Parquet output folder (see :mod:`imgbeddings.store`).

    Args:
        paths: files, folders, ``.txt`` lists of paths, or ``-`` for standard input.
        output: the output folder (created; an existing one is resumed/extended).
        model: model name, hub repo, local file, or a ready :class:`Embedder`.
        mode: ``fast`` (default for collections: reduced-scale JPEG decoding) or ``exact``.
        workers, threads: decode worker processes and ONNX Runtime threads
            (default: :func:`~imgbeddings.pipeline.plan_threads`).
        strict: stop at the first bad input (rows of the inputs before it are written) by
            raising its :class:`~imgbeddings.errors.InputError`.
        retry_failed: embed again files that failed in an earlier run, though unchanged.
        shard_size: rows per Parquet shard (the most work a kill can lose).
        npy: also write ``embeddings.npy`` + ``paths.txt`` at the end.
        on_start(total_to_embed, skipped), on_batch(done, failed_in_batch): progress hooks.
    """
    started = time.perf_counter()
    plan = plan_threads(workers, threads)
    if isinstance(model, Embedder):
        embedder = model
    else:
        embedder_options.setdefault("spin", plan.workers == 0)
        embedder = Embedder(model, mode=mode, batch_size=batch_size, threads=plan.threads, **embedder_options)
    store = OutputStore(output, embedder.card, embedder.mode, shard_size=shard_size)
    todo, skipped = plan_work(paths, store, recursive=recursive, retry_failed=retry_failed, stdin=stdin)
    store.counts.skipped = skipped
    if on_start:
        on_start(len(todo), skipped)
    timings = Timings()
    failures: list[Failure] = []
    try:
        stream = embed_stream(
            embedder,
            (p for p, _, _ in todo),
            batch_size=batch_size,
            workers=plan.workers,
            item_timeout=item_timeout,
            timings=timings,
        )
        for batch in stream:
            bad = {f.index: f for f in batch.failures}
            for offset in range(len(batch)):
                index = batch.start + offset
                path, size, mtime = todo[index]
                if index in bad:
                    failure = bad[index]
                    if strict:
                        stream.close()
                        cls = getattr(errors, failure.error, errors.InputError)
                        if not (isinstance(cls, type) and issubclass(cls, errors.InputError)):
                            cls = errors.InputError
                        raise cls(path, failure.message, index)
                    failures.append(failure)
                    store.add(path, size, mtime, None, failure.error, failure.message)
                else:
                    store.add(path, size, mtime, batch.vectors[offset])
            if on_batch:
                on_batch(len(batch), len(bad))
    finally:
        counts = store.close(npy=npy)
    return JobResult(
        Path(output), counts, time.perf_counter() - started, timings, failures, plan.workers, plan.threads
    )
