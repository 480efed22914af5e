"""Resumable, sharded Parquet output of embedding jobs, and loading it back.

An output folder::

    OUT/imgbeddings.json     manifest: what made the vectors (model card, mode, normalisation,
                             PCA: ``Embedder.identity()``), its fingerprint, dim
    OUT/imgbeddings.lock     locked (flock) by the one run writing the folder; records its PID,
                             host and start time while it runs
    OUT/part-000000.parquet  shards, each written to a temporary name and renamed atomically;
    OUT/part-000001.parquet  ... numbered on (part-999999, part-1000000, ...), ordered by number
    OUT/failures.parquet     all failures of the job (rebuilt at the end of each run)
    OUT/embeddings.npy       optional (--format npy): all good vectors, memory-mappable,
    OUT/paths.txt            their file names (raw bytes), one per line, in the same order,
    OUT/embeddings.json      and the set of shards both were built from
    OUT/quarantine/          shards a run found damaged or foreign (moved aside, never deleted)

Each shard row: ``path`` (absolute, readable UTF-8: bytes that are not UTF-8 appear as ``\\xNN``),
``size`` (bytes), ``mtime_ns``, ``embedding`` (``fixed_size_list<float32>[D]``, null for a
failure), ``error`` and ``message`` (null for a success), ``path_bytes`` (the exact file name
bytes; shards written before it existed lack it and are read by ``path``). Shard metadata
carries the output's fingerprint and a unique shard id. A path has at most one row: when a
file changed and is embedded again, the older shard is rewritten without its old row (and a run
that was killed in between repairs that on its next start; readers keep the newest row).

Guarantees, and why they hold:

- **One writer.** A writer holds an exclusive ``flock`` on ``imgbeddings.lock`` from opening
  the folder (before reading the manifest) to the end of its run; a second writer is refused
  (:class:`~imgbeddings.errors.OutputLocked`) or waits. The kernel drops the lock when the
  holder dies, even by ``kill -9``; the PID written in the file is only informational.
- **No half state.** Every file is written to ``.NAME.PID.tmp``, fsynced and renamed into
  place, so a killed run leaves complete files or none. Under the lock only dead writers'
  temporaries can exist; a run removes temporaries whose PID is not alive and keeps others.
  Readers take no lock: they list the shards once and read each shard only if it is still
  the file listed (same inode, size and mtime), otherwise they read again.
- **Nothing foreign or damaged is used.** A shard counts only if its Parquet footer reads,
  its fingerprint is the manifest's, its columns and vector width are the manifest's, and its
  pages read (Parquet page checksums are written and verified where pyarrow has them, 15+).
  A writer reads every shard through when it opens the folder and moves any other to
  ``quarantine/`` with a warning, so their inputs are embedded again; readers raise
  :class:`~imgbeddings.errors.OutputError` naming it (or skip it, when asked). A manifest whose
  fingerprint or width disagrees with its identity is refused.
- **Derived files are used only when current.** ``embeddings.json`` records a digest of the
  shard set (names, shard ids, row counts) the npy was built from; ``failures.parquet``
  carries the same digest in its metadata. ``load`` uses the npy only when the digest
  matches the current shards; failures are always derived from the shards. A run that
  closes normally rebuilds both (the npy whenever the folder has one).
- **Full disks fail cleanly.** A write that runs out of space removes its temporary file and
  raises one OutputError naming the output, the space needed and the space free; the previous
  complete state stays, and the same command resumes. The npy is preallocated and written with
  plain writes (never a memory map of a sparse file, which dies of SIGBUS when space runs out).
- **Any file name.** Names that are not valid UTF-8 are stored exactly (``path_bytes``) and
  read back as the str ``os.fsdecode`` gives, which opens the same file.

The lock lives in :mod:`imgbeddings.folderlock`, the file-level checks and writes in
:mod:`imgbeddings.shards`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .errors import Failure, ModelMismatch, OutputError
from .folderlock import LOCK, FolderLock, lock_holder, pid_alive
from .models.cards import ModelCard
from .shards import (
    FAILURES,
    MANIFEST,
    NPY,
    NPY_PATHS,
    NPY_RECORD,
    QUARANTINE,
    SHARD_GLOB,
    VERIFIED,
    Changed,
    Shard,
    Stat,
    atomic_write_bytes,
    atomic_write_table,
    damage_error,
    digest_of,
    fingerprint_of,
    fsync_dir,
    identity_of,
    iter_vectors,
    latest_rows,
    name_bytes,
    readable,
    shard_order,
    shard_schema,
    snapshot,
    survey,
    temp_for,
    trusted_manifest,
    write_error,
)

__all__ = [
    "FAILURES",
    "LOCK",
    "MANIFEST",
    "NPY",
    "NPY_PATHS",
    "NPY_RECORD",
    "QUARANTINE",
    "Embeddings",
    "OutputStore",
    "RunCounts",
    "atomic_write_table",
    "describe_mismatch",
    "iter_load",
    "load",
    "lock_holder",
    "read_manifest",
    "readable",
    "summarize",
]

FORMAT_VERSION = 2


#: How each part of an output's identity is named when a run's differs from the output's.
_IDENTITY_WORDS = {
    "card": "model",
    "model": "model",
    "mode": "preprocessing mode (--fast/--exact, mode=)",
    "normalize": "L2 normalisation (--normalize, normalize=)",
    "pca": "PCA (--pca, pca=)",
    "dim": "vector width",
}


_TEMP_NAME = re.compile(r"\.(.+?)(?:\.(\d+))?\.tmp")


T = TypeVar("T")


def _pa() -> Any:
    import pyarrow as pa

    return pa


def _or_missing(value: int | None) -> int:
    """Size/mtime as stored: -1 for a file that could not be stat'ed (missing, dangling link)."""
    return -1 if value is None else value


@dataclass
class _Row:
    shard: str
    size: int
    mtime_ns: int
    failed: bool


@dataclass
class RunCounts:
    """What a run did."""

    embedded: int = 0
    failed: int = 0
    skipped: int = 0
    shards_written: int = 0


def describe_mismatch(out_dir: Path, theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    """One message naming each way the output's vectors and this run's would differ."""

    def show(key: str, value: Any) -> str:
        if key == "card":
            return f"card {value}"
        if key == "pca":
            return f"PCA {value}" if value else "no PCA"
        if key == "normalize":
            return "L2-normalised" if value else "not normalised"
        return f"{value!r}" if key == "model" else f"{key} {value}"

    keys = [k for k in ("model", "card", "mode", "normalize", "pca", "dim") if theirs.get(k) != mine.get(k)]
    if "model" in keys and "card" in keys:
        keys.remove("card")
    parts = [
        f"{_IDENTITY_WORDS[k]}: the output has {show(k, theirs.get(k))}, this run {show(k, mine.get(k))}"
        for k in keys
    ]
    return (
        f"{out_dir} holds vectors made differently from this run's, so they are not comparable ("
        + "; ".join(parts)
        + "). Use another output folder, or the settings the output was made with."
    )


class OutputStore:
    """An output folder opened for a job whose vectors have one identity
    (:meth:`Embedder.identity`: model card, mode, normalisation, PCA, width).

    Opening locks the folder for this writer until :meth:`close` or :meth:`abort`: another
    writer holding it makes this raise :class:`~imgbeddings.errors.OutputLocked` at once, or
    after ``wait`` seconds (``math.inf`` or a negative number: wait as long as it takes).
    Raises :class:`ModelMismatch`, naming what differs, when the folder holds vectors made
    otherwise: appending would mix incomparable vectors. Shards that are damaged or belong to
    another output are moved to ``OUT/quarantine/`` (with a RuntimeWarning), so their inputs
    count as new and are embedded again.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        identity: dict[str, Any],
        card: ModelCard,
        *,
        shard_size: int = 4096,
        wait: float | None = None,
        sources: dict[str, str | None] | None = None,
    ) -> None:
        self.dir = Path(out_dir)
        #: where the model (and PCA) came from, recorded when the output is created so that a
        #: query can be embedded the same way later (``imgbeddings.analysis.query``).
        self.sources = dict(sources or {})
        self.identity = dict(identity)
        self.card = card
        self.dim = int(identity["dim"])
        self.shard_size = shard_size
        self.fingerprint = fingerprint_of(self.identity)
        if self.dir.exists() and not self.dir.is_dir():
            raise OutputError(f"{self.dir} exists and is not a folder: give a folder for the output")
        self._lock = FolderLock(self.dir)
        self._lock.acquire(wait)
        #: True when this store made the folder (:meth:`abort` then removes it if it holds nothing).
        self.created = self._lock.created
        self.rows: dict[str, _Row] = {}
        self._superseded: dict[str, set[str]] = {}
        self._next_number = 0
        # queued rows: (path, size, mtime_ns, ok, error, message); vectors in a preallocated block
        self._buffer: list[tuple[str, int, int, bool, str | None, str | None]] = []
        self._vectors: np.ndarray | None = None
        self.counts = RunCounts()
        try:
            self._check_manifest()
            self._remove_dead_temporaries()
            self._scan()
        except BaseException:
            self._release(discard=True)
            raise

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # --- manifest and scan -----------------------------------------------------------------
    def _check_manifest(self) -> None:
        path = self.dir / MANIFEST
        try:
            theirs = trusted_manifest(path)
        except FileNotFoundError:
            theirs = None
        if theirs is not None:
            if identity_of(theirs) != self.identity:
                raise ModelMismatch(describe_mismatch(self.dir, identity_of(theirs), self.identity))
            self.fingerprint = theirs["fingerprint"]  # what its shards carry (format 1: the card's)
            return
        if any(self.dir.glob(SHARD_GLOB)):
            raise OutputError(f"{self.dir} has shards but no {MANIFEST}: not written by this tool?")
        mine = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "model": self.card.name,
            "mode": self.identity.get("mode"),
            "dim": self.dim,
            "card": self.card.to_dict(),
            "sources": self.sources,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_bytes(path, (json.dumps(mine, indent=2) + "\n").encode())

    def _remove_dead_temporaries(self) -> None:
        """Remove temporaries of interrupted writes. With the lock held no other writer is at
        work, but a file whose name carries the PID of a live process (not this one) is kept."""
        for tmp in self.dir.glob(".*.tmp"):
            match = _TEMP_NAME.fullmatch(tmp.name)
            pid = int(match.group(2)) if match and match.group(2) else None
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                continue
            tmp.unlink(missing_ok=True)

    def shards(self) -> list[Path]:
        """Shard files in order (by number, oldest first)."""
        return [self.dir / name for name in sorted(snapshot(self.dir), key=shard_order)]

    def _scan(self) -> None:
        """Index existing rows by path; quarantine shards that do not belong or cannot be read;
        repair rows left duplicated by an interrupted run.

        Every shard's footer, fingerprint, schema and small columns are checked on every run.
        Its data pages (the vectors) are read and checked once: a shard whose file (inode, size,
        mtime) is recorded in ``.verified.json`` as checked, or as written by a run, is not read
        through again, so a resume costs what is new, not the whole output."""
        columns = ("size", "mtime_ns", "error")
        checked = self._verified_record()

        def unverified(name: str, listed: Stat) -> bool:
            return checked.get(name) != list(listed)

        def read() -> tuple[dict[str, Stat], list[Shard], list[tuple[str, str]]]:
            listed = snapshot(self.dir)
            return listed, *survey(self.dir, listed, self.fingerprint, self.dim, columns, verify=unverified)

        listed, sound, damaged = _retrying(self.dir, read)
        self._record_verified(sound, listed)
        for name, reason in damaged:
            self._quarantine(name, reason)
        numbers = [s.number for s in sound]
        if (self.dir / QUARANTINE).is_dir():
            for moved in (self.dir / QUARANTINE).iterdir():  # part-N.parquet or part-N.parquet.K
                match = re.match(r"part-(\d+)\.parquet", moved.name)
                numbers += [int(match.group(1))] if match else []
        self._next_number = max(numbers, default=-1) + 1  # never reuse a name, even a quarantined one
        stale: dict[str, set[str]] = {}
        for shard in sound:
            cols = shard.columns
            rows = zip(shard.paths, cols["size"], cols["mtime_ns"], cols["error"], strict=True)
            for path, size, mtime, error in rows:
                old = self.rows.get(path)
                if old is not None:
                    stale.setdefault(old.shard, set()).add(path)
                self.rows[path] = _Row(shard.name, size, mtime, error is not None)
        for shard_name, paths in stale.items():
            self._drop_rows(self.dir / shard_name, paths)

    def _verified_record(self) -> dict[str, list[int]]:
        """Shards whose data pages were checked (or written by a run): name -> [ino, size, mtime]."""
        try:
            record = json.loads((self.dir / VERIFIED).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _record_verified(self, sound: list[Shard], listed: dict[str, Stat]) -> None:
        """Remember the sound shards as checked (best effort: a lost record costs one re-read)."""
        record = {s.name: list(listed[s.name]) for s in sound if s.name in listed}
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.dir / VERIFIED, (json.dumps(record) + "\n").encode())

    def _quarantine(self, name: str, reason: str) -> None:
        folder = self.dir / QUARANTINE
        target, n = folder / name, 0
        try:
            folder.mkdir(exist_ok=True)
            while target.exists():
                n += 1
                target = folder / f"{name}.{n}"
            os.replace(self.dir / name, target)
        except OSError as exc:
            raise OutputError(f"cannot move {self.dir / name} ({reason}) to {folder}: {exc}") from exc
        fsync_dir(self.dir)
        warnings.warn(
            f"{self.dir / name} {reason}: moved to {target}; its inputs will be embedded again",
            RuntimeWarning,
            stacklevel=4,
        )

    def _drop_rows(self, shard: Path, paths: set[str]) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        pa = _pa()
        table = pq.read_table(shard)
        if "path_bytes" in table.column_names:
            column, values = "path_bytes", pa.array(sorted(name_bytes(p) for p in paths), pa.binary())
        else:
            column, values = "path", pa.array(sorted(paths), pa.string())
        kept = table.filter(pc.invert(pc.is_in(table.column(column), value_set=values)))
        if kept.num_rows:
            meta = dict(kept.schema.metadata or {})
            meta[b"imgbeddings.shard"] = uuid.uuid4().hex.encode()  # new content, new id
            atomic_write_table(kept.replace_schema_metadata(meta), shard)
        else:
            shard.unlink()
            fsync_dir(self.dir)

    # --- what to do with a file -------------------------------------------------------------
    def status(self, path: str, size: int | None, mtime_ns: int | None) -> str:
        """``new``, ``done`` (same size and mtime embedded), ``failed`` (same, but it failed),
        or ``changed`` (a row exists for an older version of the file)."""
        row = self.rows.get(path)
        if row is None:
            return "new"
        if (row.size, row.mtime_ns) == (_or_missing(size), _or_missing(mtime_ns)):
            return "failed" if row.failed else "done"
        return "changed"

    # --- writing -----------------------------------------------------------------------------
    def add(
        self,
        path: str,
        size: int | None,
        mtime_ns: int | None,
        vector: np.ndarray | None,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        """Queue one row (the vector is copied); a shard is written every ``shard_size`` rows."""
        if self._vectors is None:
            self._vectors = np.zeros((self.shard_size, self.dim), dtype=np.float32)
        if len(self._buffer) >= self.shard_size:  # the last flush failed (a full disk): try again
            self.flush()
        n = len(self._buffer)
        if vector is None:
            self._vectors[n] = 0.0
            self.counts.failed += 1
        else:
            self._vectors[n] = vector
            self.counts.embedded += 1
        self._buffer.append(
            (path, _or_missing(size), _or_missing(mtime_ns), vector is not None, error, message)
        )
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        """Write the queued rows as a new shard (atomically, under a name never used before);
        returns its path."""
        if not self._buffer or self._vectors is None:
            return None
        if not self._lock.held:
            raise OutputError(f"{self.dir} was closed by this store: open a new OutputStore to write to it")
        pa = _pa()
        n = len(self._buffer)
        paths, sizes, mtimes, valid, errors, messages = (list(c) for c in zip(*self._buffer, strict=True))
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(self._vectors[:n].reshape(-1)), self.dim, mask=pa.array([not v for v in valid])
        )
        metadata = {
            "imgbeddings.fingerprint": self.fingerprint,
            "imgbeddings.mode": str(self.identity.get("mode")),
            "imgbeddings.model": self.card.name,
            "imgbeddings.shard": uuid.uuid4().hex,
        }
        table = pa.table(
            [
                pa.array([readable(p) for p in paths], pa.string()),
                pa.array(sizes, pa.int64()),
                pa.array(mtimes, pa.int64()),
                embedding,
                pa.array([readable(e) for e in errors], pa.string()),
                pa.array([readable(m) for m in messages], pa.string()),
                pa.array([name_bytes(p) for p in paths], pa.binary()),
            ],
            schema=shard_schema(self.dim, metadata),
        )
        while True:
            shard = self.dir / f"part-{self._next_number:06d}.parquet"
            self._next_number += 1
            if shard.exists():
                continue
            try:
                atomic_write_table(table, shard, replace=False)
            except FileExistsError:
                continue
            break
        for path, size, mtime, ok, _, _ in self._buffer:
            old = self.rows.get(path)
            if old is not None:
                self._superseded.setdefault(old.shard, set()).add(path)
            self.rows[path] = _Row(shard.name, size, mtime, not ok)
        self._buffer.clear()
        self.counts.shards_written += 1
        return shard

    def close(self, npy: bool = False) -> RunCounts:
        """Flush, drop superseded rows, rebuild ``failures.parquet`` and, with ``npy`` or when
        the folder has one, ``embeddings.npy``; then release the folder's lock."""
        if self._lock.held:
            try:
                self._finish(npy or (self.dir / NPY).exists())
            finally:
                self._release(discard=False)
        return self.counts

    def abort(self) -> None:
        """End a failed run: keep the rows written so far (best effort), remove the folder if
        this store made it and it holds no shard, and release the lock."""
        if not self._lock.held:
            return
        try:
            with contextlib.suppress(Exception):
                self._finish(npy=False)
        finally:
            self._release(discard=True)

    def _release(self, discard: bool) -> None:
        """Release the lock; with ``discard``, first remove the folder if this store made it and
        nothing was stored in it (while still locked: a waiter notices and starts over)."""
        try:
            if discard and self.created and not self.shards() and not (self.dir / QUARANTINE).exists():
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            self._lock.release()

    def _finish(self, npy: bool) -> None:
        self.flush()
        for shard_name, paths in self._superseded.items():
            if (self.dir / shard_name).exists():
                self._drop_rows(self.dir / shard_name, paths)
        self._superseded.clear()

        def read() -> tuple[dict[str, Stat], list[Shard], list[tuple[str, str]]]:
            listed = snapshot(self.dir)
            return listed, *survey(self.dir, listed, self.fingerprint, self.dim, ("error", "message"))

        listed, sound, damaged = _retrying(self.dir, read)
        if damaged:  # damaged during this run (the disk, or another program): never built upon
            raise damage_error(self.dir, damaged)
        self._record_verified(sound, listed)  # this run's shards were written by it
        digest, latest = digest_of(sound), latest_rows(sound)
        failed = [(p, e, m) for p, (_, e, m) in latest.items() if e is not None]
        pa = _pa()
        table = pa.table(
            {
                "path": pa.array([readable(p) for p, _, _ in failed], pa.string()),
                "error": pa.array([e for _, e, _ in failed], pa.string()),
                "message": pa.array([m for _, _, m in failed], pa.string()),
                "path_bytes": pa.array([name_bytes(p) for p, _, _ in failed], pa.binary()),
            }
        )
        meta = {"imgbeddings.fingerprint": self.fingerprint, "imgbeddings.built_from": digest}
        atomic_write_table(table.replace_schema_metadata(meta), self.dir / FAILURES)
        if npy:
            good = len(latest) - len(failed)
            _write_npy(self.dir, sound, listed, latest, good, self.dim, self.fingerprint, digest)


def _listing_line(path: str) -> bytes:
    """A line of ``paths.txt``: the name's bytes; empty for a name containing a newline (it
    cannot be listed there), so that line i still belongs to row i."""
    raw = name_bytes(path)
    return (b"" if b"\n" in raw else raw) + b"\n"


def _write_npy(
    out: Path,
    sound: list[Shard],
    listed: dict[str, Stat],
    latest: dict[str, tuple[int, str | None, str | None]],
    count: int,
    dim: int,
    fingerprint: str,
    digest: str,
) -> None:
    """Stream the good vectors, shard by shard, into ``embeddings.npy`` (+ ``paths.txt``, then
    ``embeddings.json``). The file is preallocated and written with plain writes, so a full
    disk is an error (no memory map that would die of SIGBUS)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (count, dim)}
    )
    size = len(header.getvalue()) + count * dim * 4
    tmp, tmp_paths = temp_for(out / NPY), temp_for(out / NPY_PATHS)
    try:
        with open(tmp, "wb") as matrix, open(tmp_paths, "wb") as listing:
            matrix.write(header.getvalue())
            matrix.flush()
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(matrix.fileno(), 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
            for paths, vectors in iter_vectors(out, sound, listed, latest, dim, skip_damaged=False):
                matrix.write(np.ascontiguousarray(vectors, dtype="<f4").data)
                listing.write(b"".join(_listing_line(p) for p in paths))
            for fh in (matrix, listing):
                fh.flush()
                os.fsync(fh.fileno())
            paths_bytes = listing.tell()
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        tmp_paths.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(out / NPY, exc, size) from exc
        if isinstance(exc, Changed):
            raise OutputError(f"{out} changed while {NPY} was being written") from None
        raise
    record = {
        "built_from": digest,
        "fingerprint": fingerprint,
        "rows": count,
        "dim": dim,
        "npy_bytes": size,
        "paths_bytes": paths_bytes,
        "build": uuid.uuid4().hex,
    }
    (out / NPY_RECORD).unlink(missing_ok=True)  # no moment where an old record vouches for new files
    os.replace(tmp, out / NPY)
    os.replace(tmp_paths, out / NPY_PATHS)
    atomic_write_bytes(out / NPY_RECORD, (json.dumps(record, indent=2) + "\n").encode())


@dataclass
class Embeddings:
    """A loaded output: ``paths[i]`` has vector ``vectors[i]``; failures listed apart, as the
    same :class:`~imgbeddings.errors.Failure` records the run returned (``index`` is None).
    Paths are the str a job uses: ``open(path)`` opens the file, whatever its name's bytes."""

    paths: list[str]
    vectors: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The output folder's manifest (model card, fingerprint, mode, dim), checked for
    consistency: an edited or damaged manifest raises :class:`OutputError`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not an imgbeddings output folder")
    try:
        return trusted_manifest(out / MANIFEST)
    except FileNotFoundError as exc:
        raise OutputError(f"{out_dir} is not an imgbeddings output folder (no {MANIFEST})") from exc


def _retrying(out: Path, read: Callable[[], T]) -> T:
    """Run a read again when a writer changed a shard under it (each try reads one snapshot)."""
    for attempt in range(8):
        try:
            return read()
        except Changed:
            time.sleep(0.05 * (attempt + 1))
    raise OutputError(f"{out} kept changing while being read (a run is writing it): read it again later")


def _open_sound(out: Path, skip_damaged: bool) -> tuple[dict[str, Any], dict[str, Stat], list[Shard]]:
    manifest = read_manifest(out)
    listed = snapshot(out)
    sound, damaged = survey(out, listed, manifest["fingerprint"], manifest["dim"], ("error", "message"))
    if damaged and not skip_damaged:
        raise damage_error(out, damaged)
    if damaged:
        names = ", ".join(name for name, _ in damaged)
        warnings.warn(f"{out}: skipped damaged shard(s) {names}; their rows are missing", RuntimeWarning, 4)
    return manifest, listed, sound


def summarize(out_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """An output folder at a glance, without keeping its vectors in memory. Keys:

    - ``manifest``; ``shards`` (sound shards); ``vectors`` (good rows); ``failures``
      (:class:`~imgbeddings.errors.Failure` records, derived from the shards);
    - ``damaged``: ``[(shard name, reason), ...]`` shards that cannot be used (a reader
      raises for them; the next ``embed`` on the folder quarantines them);
    - ``quarantined``: names of files in ``OUT/quarantine/``;
    - ``stale``: derived files (``embeddings.npy``, ``failures.parquet``) not built from the
      current shards (they are rebuilt by the next ``embed`` on the folder);
    - ``writer``: ``{"pid", "host", "started"}`` of the run writing the folder, or None.

    With ``verify`` (the default) every shard is read through, one at a time, so that
    ``damaged`` lists exactly what the next ``embed`` would quarantine; ``verify=False`` checks
    only footers, schemas and the small columns (fast, but misses damaged vector pages).
    Raises :class:`OutputError` only when the folder is not an output or its manifest cannot
    be trusted.
    """
    out = Path(out_dir)

    def read() -> dict[str, Any]:
        manifest = read_manifest(out)
        columns = ("error", "message")
        sound, damaged = survey(out, snapshot(out), manifest["fingerprint"], manifest["dim"], columns, verify)
        latest = latest_rows(sound)
        failures = [Failure(None, p, e, m) for p, (_, e, m) in latest.items() if e is not None]
        digest, good = digest_of(sound), len(latest) - len(failures)
        stale = [NPY] if (out / NPY).exists() and _npy_record(out, manifest, digest, good) is None else []
        if not _failures_current(out, digest):
            stale.append(FAILURES)
        quarantine = out / QUARANTINE
        return {
            "manifest": manifest,
            "shards": len(sound),
            "vectors": good,
            "failures": failures,
            "damaged": damaged,
            "quarantined": sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else [],
            "stale": stale,
            "writer": lock_holder(out),
        }

    return _retrying(out, read)


def _failures_current(out: Path, digest: str) -> bool:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(out / FAILURES).metadata or {}
    except Exception:  # missing or unreadable: not current (it is only a convenience copy)
        return False
    return meta.get(b"imgbeddings.built_from") == digest.encode()


def _npy_record(out: Path, manifest: dict[str, Any], digest: str, good: int) -> dict[str, Any] | None:
    """``embeddings.json`` if it vouches for the npy and paths.txt being built from exactly
    the current shards; None otherwise."""
    try:
        record = json.loads((out / NPY_RECORD).read_text())
        sizes = (out / NPY).stat().st_size, (out / NPY_PATHS).stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    expected = {
        "built_from": digest,
        "fingerprint": manifest["fingerprint"],
        "rows": good,
        "dim": manifest["dim"],
    }
    if any(record.get(k) != v for k, v in expected.items()):
        return None
    return record if (record.get("npy_bytes"), record.get("paths_bytes")) == sizes else None


def _current_npy(out: Path, manifest: dict[str, Any], sound: list[Shard], good: int) -> np.ndarray | None:
    """A read-only memory map of ``embeddings.npy`` when it is current, else None (with a warning)."""
    record = _npy_record(out, manifest, digest_of(sound), good)
    vectors = None
    if record is not None:
        with open(out / NPY, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
            shape, fortran, dtype = (read_header or np.lib.format.read_array_header_2_0)(fh)
            if shape == (good, manifest["dim"]) and not fortran and dtype == np.float32:
                vectors = np.memmap(fh, dtype=dtype, mode="r", shape=shape, offset=fh.tell())
        if _npy_record(out, manifest, digest_of(sound), good) != record:
            raise Changed(NPY)  # rebuilt while we opened it: read again
    if vectors is None:
        warnings.warn(
            f"{out / NPY} is not in step with the shards (a run was interrupted, or files were "
            "changed by hand): reading the shards instead. `imgbeddings embed` on this output rebuilds it.",
            RuntimeWarning,
            stacklevel=4,
        )
    return vectors


def iter_load(
    out_dir: str | os.PathLike[str], *, skip_damaged: bool = False
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream an output shard by shard: ``(paths, vectors)`` of the good rows of each shard,
    so outputs larger than memory can be processed. Rows superseded by a newer shard (a run
    killed mid-repair) are skipped.

    A damaged or foreign shard raises :class:`OutputError` naming it (before anything is
    yielded when its footer already shows it), unless ``skip_damaged``: then it is skipped
    with a RuntimeWarning. Reads the shards as listed at the first ``next()``; if a writer
    replaces one of them before it is reached, raises OutputError (read again).
    """
    out = Path(out_dir)
    manifest, listed, sound = _retrying(out, lambda: _open_sound(out, skip_damaged))
    try:
        yield from iter_vectors(out, sound, listed, latest_rows(sound), manifest["dim"], skip_damaged)
    except Changed:
        raise OutputError(
            f"{out} changed while being read (a run is writing it): read it again when it has finished"
        ) from None


def load(out_dir: str | os.PathLike[str], *, use_npy: bool = True, skip_damaged: bool = False) -> Embeddings:
    """Load an output folder: paths, a float32 (N, D) matrix of the good rows, and failures.

    With ``embeddings.npy`` present and current (``embeddings.json`` records exactly the
    current shards), the matrix is a read-only memory map of it (no copy into RAM); otherwise
    it is read from the Parquet shards (with a RuntimeWarning when an npy exists but is out of
    date). A damaged or foreign shard raises :class:`OutputError` naming it and the fix;
    ``skip_damaged=True`` reads the sound shards instead, with a RuntimeWarning.
    """
    out = Path(out_dir)

    def read() -> Embeddings:
        manifest, listed, sound = _open_sound(out, skip_damaged)
        latest = latest_rows(sound)
        failures = [Failure(None, p, e, m) for p, (_, e, m) in latest.items() if e is not None]
        good, dim = len(latest) - len(failures), manifest["dim"]
        if use_npy and (out / NPY).is_file():
            vectors = _current_npy(out, manifest, sound, good)
            if vectors is not None:
                paths = [
                    p
                    for i, shard in enumerate(sound)
                    for p, error in zip(shard.paths, shard.columns["error"], strict=True)
                    if error is None and latest[p][0] == i
                ]
                return Embeddings(paths, vectors, failures, manifest)
        paths, parts = [], []
        for p, v in iter_vectors(out, sound, listed, latest, dim, skip_damaged):
            paths.extend(p)
            parts.append(v)
        vectors = np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
        return Embeddings(paths, vectors, failures, manifest)

    return _retrying(out, read)
