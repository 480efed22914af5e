"""Resumable, sharded Parquet output of embedding jobs, and loading it back.

An output folder::

    OUT/imgbeddings.json     manifest: what made the vectors (model card, mode, normalisation,
                             PCA: ``Embedder.identity()``), its fingerprint, dim
    OUT/part-000000.parquet  shards, each written to a temporary name and renamed atomically
    OUT/part-000001.parquet  ...
    OUT/failures.parquet     all failures of the job (rebuilt at the end of each run)
    OUT/embeddings.npy       optional (--format npy): all good vectors, memory-mappable,
    OUT/paths.txt            with their paths, one per line, in the same order

Each shard row: ``path`` (absolute), ``size`` (bytes), ``mtime_ns``, ``embedding``
(``fixed_size_list<float32>[D]``, null for a failure), ``error`` and ``message`` (null for a
success). Shard metadata carries the output's fingerprint. A path has at most one row: when a file
changed and is embedded again, the older shard is rewritten without its old row (and a run
that was killed in between repairs that on its next start).

Why it resumes correctly after ``kill -9``: a shard is either complete under its final name or
absent (only ``*.tmp`` leftovers, deleted on the next start), and a file is skipped only when a
complete shard holds its row with the same size and mtime.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Failure, ModelMismatch, OutputError
from .models.cards import ModelCard

MANIFEST = "imgbeddings.json"
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
_SHARD_GLOB = "part-*.parquet"


def _pa() -> Any:
    import pyarrow as pa

    return pa


def _or_missing(value: int | None) -> int:
    """Size/mtime as stored: -1 for a file that could not be stat'ed (missing, dangling link)."""
    return -1 if value is None else value


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_table(table: Any, path: Path) -> None:
    """Write a Parquet table to ``path`` via a temporary file + fsync + rename."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _schema(dim: int, metadata: dict[str, str]) -> Any:
    pa = _pa()
    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("error", pa.string()),
            ("message", pa.string()),
        ],
        metadata=metadata,
    )


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


def _identity_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The identity recorded in a manifest (format 1 outputs knew only the card and mode)."""
    if "identity" in manifest:
        return dict(manifest["identity"])
    return {
        "model": manifest.get("model"),
        "card": manifest.get("fingerprint"),
        "mode": manifest.get("mode"),
        "normalize": False,
        "pca": None,
        "dim": manifest.get("dim"),
    }


def _fingerprint(identity: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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

    Raises :class:`ModelMismatch`, naming what differs, when the folder holds vectors made
    otherwise: appending would mix incomparable vectors.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        identity: dict[str, Any],
        card: ModelCard,
        *,
        shard_size: int = 4096,
    ) -> None:
        self.dir = Path(out_dir)
        self.identity = dict(identity)
        self.card = card
        self.dim = int(identity["dim"])
        self.shard_size = shard_size
        self.fingerprint = _fingerprint(self.identity)
        if self.dir.exists() and not self.dir.is_dir():
            raise OutputError(f"{self.dir} exists and is not a folder: give a folder for the output")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.dir}: {exc.strerror or exc}") from exc
        self._check_manifest()
        for leftover in self.dir.glob(".*.tmp"):  # an interrupted write: never part of the output
            leftover.unlink(missing_ok=True)
        self.rows: dict[str, _Row] = {}
        self._superseded: dict[str, set[str]] = {}
        self._scan()
        # queued rows: (path, size, mtime_ns, ok, error, message); vectors in a preallocated block
        self._buffer: list[tuple[str, int, int, bool, str | None, str | None]] = []
        self._vectors: np.ndarray | None = None
        self.counts = RunCounts()

    # --- manifest and scan -----------------------------------------------------------------
    def _check_manifest(self) -> None:
        path = self.dir / MANIFEST
        mine = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "model": self.card.name,
            "mode": self.identity.get("mode"),
            "dim": self.dim,
            "card": self.card.to_dict(),
        }
        if path.is_file():
            try:
                theirs = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise OutputError(
                    f"{path} is unreadable ({exc}); is {self.dir} an imgbeddings output?"
                ) from exc
            if _identity_of(theirs) != self.identity:
                raise ModelMismatch(describe_mismatch(self.dir, _identity_of(theirs), self.identity))
            return
        if any(self.dir.glob(_SHARD_GLOB)):
            raise OutputError(f"{self.dir} has shards but no {MANIFEST}: not written by this tool?")
        mine["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(mine, indent=2) + "\n")
        os.replace(tmp, path)

    def shards(self) -> list[Path]:
        """Complete shard files, oldest first."""
        return sorted(self.dir.glob(_SHARD_GLOB))

    def _scan(self) -> None:
        """Index existing rows by path; repair rows left duplicated by an interrupted run."""
        import pyarrow.parquet as pq

        stale: dict[str, set[str]] = {}
        for shard in self.shards():
            table = pq.read_table(shard, columns=["path", "size", "mtime_ns", "error"])
            cols = [table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "error")]
            for path, size, mtime, error in zip(*cols, strict=True):
                old = self.rows.get(path)
                if old is not None:
                    stale.setdefault(old.shard, set()).add(path)
                self.rows[path] = _Row(shard.name, size, mtime, error is not None)
        for shard_name, paths in stale.items():
            self._drop_rows(self.dir / shard_name, paths)

    def _drop_rows(self, shard: Path, paths: set[str]) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(shard)
        keep = pc.invert(pc.is_in(table.column("path"), value_set=_pa().array(sorted(paths))))
        kept = table.filter(keep)
        if kept.num_rows:
            atomic_write_table(kept, shard)
        else:
            shard.unlink()
            _fsync_dir(self.dir)

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
        """Write the queued rows as a new shard (atomically); returns its path."""
        if not self._buffer or self._vectors is None:
            return None
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
        }
        table = pa.table(
            [
                pa.array(paths, pa.string()),
                pa.array(sizes, pa.int64()),
                pa.array(mtimes, pa.int64()),
                embedding,
                pa.array(errors, pa.string()),
                pa.array(messages, pa.string()),
            ],
            schema=_schema(self.dim, metadata),
        )
        existing = self.shards()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        shard = self.dir / f"part-{number:06d}.parquet"
        atomic_write_table(table, shard)
        for path, size, mtime, ok, _, _ in self._buffer:
            old = self.rows.get(path)
            if old is not None:
                self._superseded.setdefault(old.shard, set()).add(path)
            self.rows[path] = _Row(shard.name, size, mtime, not ok)
        self._buffer.clear()
        self.counts.shards_written += 1
        return shard

    def close(self, npy: bool = False) -> RunCounts:
        """Flush, drop superseded rows, rebuild ``failures.parquet`` (and ``embeddings.npy``)."""
        self.flush()
        for shard_name, paths in self._superseded.items():
            if (self.dir / shard_name).exists():
                self._drop_rows(self.dir / shard_name, paths)
        self._superseded.clear()
        latest = _latest_rows(self.dir)
        failures = [{"path": p, "error": e, "message": m} for p, (_, e, m) in latest.items() if e is not None]
        table = _pa().table({k: [f[k] for f in failures] for k in ("path", "error", "message")})
        atomic_write_table(table, self.dir / "failures.parquet")
        if npy:
            _write_npy(self.dir, sum(1 for _, e, _ in latest.values() if e is None), self.dim)
        return self.counts


def _write_npy(out: Path, count: int, dim: int) -> None:
    """Stream the good vectors, shard by shard, into ``embeddings.npy`` (+ ``paths.txt``)."""
    tmp, tmp_paths = out / ".embeddings.npy.tmp", out / ".paths.txt.tmp"
    matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
    row = 0
    with open(tmp_paths, "w", encoding="utf-8") as listing:
        for paths, vectors in iter_load(out):
            matrix[row : row + len(paths)] = vectors
            row += len(paths)
            listing.write("".join(p + "\n" for p in paths))
        listing.flush()
        os.fsync(listing.fileno())
    matrix.flush()
    del matrix
    os.replace(tmp, out / "embeddings.npy")
    os.replace(tmp_paths, out / "paths.txt")
    _fsync_dir(out)


# --- reading -----------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """A loaded output: ``paths[i]`` has vector ``vectors[i]``; failures listed apart, as the
    same :class:`~imgbeddings.errors.Failure` records the run returned (``index`` is None)."""

    paths: list[str]
    vectors: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The output folder's manifest (model card, fingerprint, mode, dim)."""
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise OutputError(f"{out_dir} is not an imgbeddings output folder (no {MANIFEST})") from exc


def _latest_rows(out: Path) -> dict[str, tuple[int, str | None, str | None]]:
    """For each path, the newest shard holding it (index into the sorted shards) and its error
    and message (None for a success), reading only those small columns."""
    import pyarrow.parquet as pq

    latest: dict[str, tuple[int, str | None, str | None]] = {}
    for i, shard in enumerate(sorted(out.glob(_SHARD_GLOB))):
        table = pq.read_table(shard, columns=["path", "error", "message"])
        for p, e, m in zip(*(table.column(c).to_pylist() for c in ("path", "error", "message")), strict=True):
            latest[p] = (i, e, m)
    return latest


def summarize(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts of an output folder without loading its vectors: manifest, shards, vectors,
    failures (:class:`~imgbeddings.errors.Failure` records)."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    manifest = read_manifest(out)
    shards = sorted(out.glob(_SHARD_GLOB))
    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    failures_file = out / "failures.parquet"
    rows_of = pq.read_table(failures_file).to_pylist() if failures_file.is_file() else []
    failures = [Failure(None, r["path"], r["error"], r["message"]) for r in rows_of]
    return {
        "manifest": manifest,
        "shards": len(shards),
        "vectors": rows - len(failures),
        "failures": failures,
    }


def iter_load(out_dir: str | os.PathLike[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream an output shard by shard: ``(paths, vectors)`` of the good rows of each shard,
    so outputs larger than memory can be processed. Rows superseded by a newer shard (a run
    killed mid-repair) are skipped."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest = read_manifest(out_dir)
    dim = int(manifest["dim"])
    shards = sorted(Path(out_dir).glob(_SHARD_GLOB))
    newest = {p: row[0] for p, row in _latest_rows(Path(out_dir)).items()}
    for i, shard in enumerate(shards):
        table = pq.read_table(shard, columns=["path", "embedding"], memory_map=True)
        table = table.filter(pc.is_valid(table.column("embedding")))
        paths = table.column("path").to_pylist()
        keep = [j for j, p in enumerate(paths) if newest[p] == i]
        values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = values.reshape(-1, dim)
        if len(keep) != len(paths):
            vectors, paths = vectors[keep], [paths[j] for j in keep]
        yield paths, vectors


def load(out_dir: str | os.PathLike[str], *, use_npy: bool = True) -> Embeddings:
    """Load an output folder: paths, a float32 (N, D) matrix of the good rows, and failures.

    With ``embeddings.npy`` present and current (``--format npy``), the matrix is a read-only
    memory map of it (no copy into RAM); otherwise it is read from the Parquet shards.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    latest = _latest_rows(out)
    failures = [Failure(None, p, e, m) for p, (_, e, m) in latest.items() if e is not None]
    good = len(latest) - len(failures)
    npy, listed = out / "embeddings.npy", out / "paths.txt"
    if use_npy and npy.is_file() and listed.is_file():
        paths = listed.read_text().splitlines()
        vectors = np.load(npy, mmap_mode="r")
        if len(paths) == vectors.shape[0] == good:
            return Embeddings(paths, vectors, failures, manifest)
    paths, parts = [], []
    for p, v in iter_load(out):
        paths.extend(p)
        parts.append(v)
    dim = int(manifest["dim"])
    vectors = np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
    return Embeddings(paths, vectors.astype(np.float32, copy=False), failures, manifest)
