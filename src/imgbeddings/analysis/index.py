"""An approximate-nearest-neighbour index beside an output folder, used only while it is current.

::

    OUT/index/index.json           the record: the output's fingerprint, the digest of the shards
                                   the index holds (and their listing), kind, parameters, measured
                                   recall, and the two files below
    OUT/index/index-<build>.faiss  the faiss index of the L2-normalised vectors (inner product =
                                   cosine), by id
    OUT/index/ids-<build>.parquet  id -> path, the file's size and mtime_ns, and the shard holding it
    OUT/index/imgbeddings.lock     held by the build writing the index

**Which index** (``kind="auto"``, by size and memory budget, as autofaiss does): below
:data:`FLAT_BELOW` vectors an exact ``IndexFlatIP``; above, IVF with ``nlist`` ~ 4 sqrt(N) lists:
IVF-Flat when the vectors fit the budget, IVF-PQ (the vectors compressed to the largest code that
fits) when they do not. ``kind="hnsw"`` gives ``IndexHNSWFlat`` (M=32, efConstruction 40). auto
does not pick HNSW because IVF-Flat beat it on every count in ``benchmarks/bench_search.py`` (768-d,
2 CPUs): at 300k vectors in 1000 clusters, built 5.5x faster, answered 7x more queries/s at higher
recall; on broad clusters (20) HNSW needed efSearch 1536 to reach the target, and was slower than
exact search. The default budget is half the memory available now (cgroup-aware); the estimates
are :func:`estimate_bytes`.

**Tuning.** HNSW's ``efSearch`` and IVF's ``nprobe`` are set at build time to the smallest value
whose recall@10, against exact search, reaches :data:`TUNE_RECALL` on up to 256 rows held out of
the index until then (and added right after), so that queries like the stored vectors get
:data:`TARGET_RECALL`. Held-out rows, not stored ones: a stored vector is a poor query to tune
on, since the index was built around it (an HNSW node is linked to its own neighbours): on the
benchmark's data, tuning on stored rows chose an efSearch that gave 0.92 on new queries. The
record keeps the recall measured (IVF-PQ may fall short of the target: a warning says so).
Outputs too small to measure (HNSW under 100 rows) search with ``efSearch`` 128, which there
visits about every row.

**Bringing it up to date.** A row is known by (path, size, mtime_ns): the same file embedded
with the same settings has the same vector, wherever its row is stored. ``build_index`` on an
output with an index adds only rows it lacks (reading only the shards that hold them) and drops
rows the output no longer holds: ``remove_ids`` for flat and IVF; HNSW graphs cannot drop nodes,
so removed rows become tombstones that searches filter out, until they pass 10 % of the index
(then it is rebuilt). It rebuilds from scratch when the fingerprint differs, the kind chosen
changes (e.g. the output grew past :data:`FLAT_BELOW`), an IVF index has grown or shrunk 4x
since it was trained, or when asked (``rebuild=True``). After an update that adds 100 rows or
more, HNSW's ``efSearch`` is tuned again on some of them; IVF keeps its ``nprobe`` (its vectors
cannot be read back cheaply to measure against), and its centroids (retrained at 4x growth).
The faiss file is written whole each time (faiss has no partial writes).

**Current or not.** An index is used only while its record's fingerprint is the output's and
its digest is that of the output's sound shards now (a quick check: the shard files' listing,
unchanged since the build, needs no reading). A stale index is never searched: ``open_index``
returns None (or brings it up to date with ``build=True``), and search falls back to exact.

**Atomic.** Files are written under temporary names, fsynced and renamed; the record, written
last, is the switch from the old build to the new, whose files carry new names, so a reader
never pairs a record with another build's files (a reader that finds its files gone reads the
record again). One build at a time (the folder lock); leftovers of a killed build are removed by
the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..errors import OptionError, OutputError
from ..folderlock import FolderLock, pid_alive
from ..shards import (
    Changed,
    Shard,
    Stat,
    atomic_write_bytes,
    atomic_write_table,
    checksums,
    damage_error,
    digest_of,
    fsync_dir,
    latest_rows,
    name_bytes,
    snapshot,
    survey,
    temp_for,
    write_error,
)
from ..store import read_manifest
from . import extras
from .vectors import l2_rows

INDEX_DIR = "index"
RECORD = "index.json"
FORMAT_VERSION = 1
#: Below this many vectors, ``auto`` builds an exact index.
FLAT_BELOW = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
#: recall@10 promised for queries like the stored vectors; the search parameters are tuned to
#: reach TUNE_RECALL on up to TUNE_QUERIES held-out rows (a sample: +- ~0.01) to keep that promise.
TARGET_RECALL = 0.95
TUNE_RECALL = 0.96
TUNE_QUERIES = 256
#: Fewer vectors than this cannot train IVF well: an exact index is built instead.
IVF_MIN_ROWS = 1024
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
KINDS = ("auto", "flat", "hnsw", "ivf", "ivf-flat", "ivf-pq")
_TOMBSTONE_LIMIT = 0.1
_IVF_REGROW = 4.0


# --- sizes and choice ---------------------------------------------------------------------


def _nlist(n: int) -> int:
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def _pq_nbits(n: int) -> int:
    return max(1, min(8, int(math.log2(max(n, 2) / 39)) if n >= 78 else 1))


def estimate_bytes(kind: str, n: int, dim: int, pq_m: int | None = None) -> int:
    """About how much memory an index of ``n`` ``dim``-d vectors takes (searching, or on disk)."""
    if kind == "flat":
        return n * (4 * dim + 8)
    if kind == "hnsw":
        # vectors, 2M links on level 0 (and the upper levels'), level, offset, id
        return n * (4 * dim + 8 * HNSW_M + 8 * HNSW_M // 16 + 8 + 16)
    centroids = 4 * dim * _nlist(n)
    if kind == "ivf-flat":
        return n * (4 * dim + 8) + centroids
    return n * ((pq_m or 1) + 8) + centroids + 4 * dim * 256  # codes, ids, centroids, codebooks


def _pq_sizes(dim: int) -> list[int]:
    """Bytes per vector an IVF-PQ code may take (sub-quantizers: divisors of dim, at most dim / 2)."""
    candidates = (128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)
    return [m for m in candidates if dim % m == 0 and m <= max(1, dim // 2)]


def plan_index(
    n: int, dim: int, *, kind: str = "auto", memory_budget_mb: float | None = None
) -> tuple[str, dict[str, Any]]:
    """The index ``build_index`` makes for ``n`` ``dim``-d vectors: its kind (``flat``, ``hnsw``,
    ``ivf-flat``, ``ivf-pq``) and structural parameters. Raises OptionError for an unknown kind or
    a budget no index fits."""
    return _plan(kind, n, dim, _budget(memory_budget_mb))


def _plan(kind: str, n: int, dim: int, budget: int | None) -> tuple[str, dict[str, Any]]:
    """The module doc's choice, for a budget in bytes (None: no limit)."""

    def fits(kind_: str, m: int | None = None) -> bool:
        return budget is None or estimate_bytes(kind_, n, dim, m) <= budget

    if kind not in KINDS:
        raise OptionError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        if n < FLAT_BELOW and fits("flat"):
            return "flat", {}
        kind = "ivf"
    if kind.startswith("ivf") and n < IVF_MIN_ROWS:
        kind = "flat"
    if kind == "ivf":
        kind = "ivf-flat" if fits("ivf-flat") else "ivf-pq"
    params: dict[str, Any] = {}
    if kind == "hnsw":
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    elif kind == "ivf-pq":
        sizes = [m for m in _pq_sizes(dim) if fits("ivf-pq", m)]
        if sizes:
            params = {"pq_m": sizes[0], "pq_nbits": _pq_nbits(n)}
    if (kind == "ivf-pq" and not params) or not fits(kind, params.get("pq_m")):
        least = estimate_bytes(kind, n, dim, params.get("pq_m") or 1) / 2**20
        other = "" if kind == "ivf-pq" else ", or use kind 'ivf' (IVF-PQ compresses the vectors)"
        raise OptionError(
            f"a {kind} index of {n} {dim}-d vectors needs about {least:.0f} MB, more than the memory "
            f"budget of {(budget or 0) / 2**20:.0f} MB: raise the budget (--memory-mb){other}"
        )
    return kind, params


def _budget(memory_budget_mb: float | None) -> int | None:
    if memory_budget_mb is not None:
        if memory_budget_mb <= 0:
            raise OptionError(f"the memory budget must be > 0 MB, got {memory_budget_mb}")
        return int(memory_budget_mb * 2**20)
    available = settings.available_memory()
    return available // 2 if available else None


# --- the output's rows --------------------------------------------------------------------


@dataclass
class OutputRows:
    """The good rows of an output folder, as listed now (:func:`read_rows`): per sound shard (in
    order), the positions of its good, newest rows and their keys (path, size, mtime_ns). Rows are
    in the order ``load`` gives them. Only the small columns are read; :meth:`vectors` reads one
    shard's vectors (raising ``Changed`` if a writer replaced that shard since it was listed)."""

    out: Path
    manifest: dict[str, Any]
    listed: dict[str, Stat]
    sound: list[Shard]
    digest: str
    rows: list[list[int]]  # per shard: positions of its good, newest rows
    keys: list[list[tuple[str, int, int]]]  # per shard: (path, size, mtime_ns) of those rows

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def paths(self) -> list[str]:
        return [key[0] for keys in self.keys for key in keys]

    def vectors(self, shard: int, rows: list[int] | None = None) -> np.ndarray:
        """L2-normalised vectors of a shard's good rows (or of the given rows of it)."""
        name = self.sound[shard].name
        wanted = self.rows[shard] if rows is None else rows
        return _shard_vectors(self.out, name, wanted, self.dim, listed=self.listed[name])


def read_rows(out: str | os.PathLike[str]) -> OutputRows:
    """The good rows of the output ``out`` (see :class:`OutputRows`); raises OutputError for a
    folder that is not an output, or one with damaged shards."""
    out = Path(out)
    manifest = read_manifest(out)
    for attempt in range(8):
        listed = snapshot(out)
        columns = ("error", "message", "size", "mtime_ns")
        try:
            sound, damaged = survey(out, listed, manifest["fingerprint"], manifest["dim"], columns)
        except Changed:
            time.sleep(0.05 * (attempt + 1))
            continue
        if damaged:
            raise damage_error(out, damaged)
        latest = latest_rows(sound)
        rows, keys = [], []
        for i, shard in enumerate(sound):
            c = shard.columns
            good = [
                j
                for j, (p, e) in enumerate(zip(shard.paths, c["error"], strict=True))
                if e is None and latest[p][0] == i
            ]
            rows.append(good)
            keys.append([(shard.paths[j], c["size"][j], c["mtime_ns"][j]) for j in good])
        return OutputRows(out, manifest, listed, sound, digest_of(sound), rows, keys)
    raise OutputError(
        f"{out} kept changing while being read (a run is writing it): try again when it is done"
    )


def _shard_vectors(
    out: Path, name: str, rows: list[int], dim: int, *, listed: Stat | None = None, ident: str | None = None
) -> np.ndarray:
    """Unit vectors of the given rows of a shard. The file must still be the one listed (same
    inode, size, mtime) or carry the shard id ``ident``; otherwise raises Changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / name

    def stat() -> Stat:
        st = path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    try:
        before = stat()
        parquet = pq.ParquetFile(path, **checksums("page_checksum_verification"))
        theirs = (parquet.schema_arrow.metadata or {}).get(b"imgbeddings.shard", b"").decode()
        table = parquet.read(["embedding"])
        after = stat()
    except FileNotFoundError:
        raise Changed(name) from None
    except (OSError, pa.ArrowException) as exc:
        raise damage_error(out, [(name, f"cannot be read ({exc})")]) from None
    if before != after or (listed is not None and after != listed):
        raise Changed(name)
    if ident is not None and (theirs or f"{after[1]}:{after[2]}") != ident:
        raise Changed(name)
    column = table.column("embedding").combine_chunks().take(pa.array(rows, pa.int64()))
    return l2_rows(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))


# --- records and files --------------------------------------------------------------------


@dataclass(frozen=True)
class IndexInfo:
    """An index as recorded (and, from ``build_index``, what the build did).

    Attributes:
        path: the index folder (``OUT/index``); kind: ``flat``, ``hnsw``, ``ivf-flat`` or ``ivf-pq``.
        rows: vectors it answers with; dim: their width.
        params: structure and search settings (``M``, ``efConstruction``, ``efSearch``; ``nlist``,
            ``nprobe``, ``pq_m``, ``pq_nbits``).
        recall: recall@10 measured at build time against exact search (1.0 for flat).
        size_bytes: the faiss file's size. fingerprint, built_from: the output and shards it holds.
        action: ``built``, ``updated`` or ``current`` (nothing to do); ``""`` when only read.
        added, removed: rows added and dropped by this build; seconds: its duration.
    """

    path: Path
    kind: str
    rows: int
    dim: int
    params: dict[str, Any]
    recall: float | None
    size_bytes: int
    fingerprint: str
    built_from: str
    created: str = ""
    action: str = ""
    added: int = 0
    removed: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class IndexStatus:
    """Whether an output's index can be used: ``info`` (None without one), ``current``, and
    ``reason`` in words (what to run when it is not current)."""

    info: IndexInfo | None
    current: bool
    reason: str


def _info(folder: Path, record: dict[str, Any], **extra: Any) -> IndexInfo:
    return IndexInfo(
        folder,
        record["kind"],
        record["rows"],
        record["dim"],
        dict(record["params"]),
        record.get("recall"),
        record["index_bytes"],
        record["fingerprint"],
        record["built_from"],
        record.get("created", ""),
        **extra,
    )


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    need = ("kind", "rows", "dim", "params", "index_bytes", "fingerprint", "built_from", "index_file")
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        return None
    if any(k not in record for k in (*need, "ids_file", "ids_bytes", "next_id")):
        return None
    return record


def _files_intact(folder: Path, record: dict[str, Any]) -> bool:
    try:
        sizes = (folder / record["index_file"]).stat().st_size, (folder / record["ids_file"]).stat().st_size
    except OSError:
        return False
    return sizes == (record["index_bytes"], record["ids_bytes"])


def _staleness(out: Path, folder: Path, record: dict[str, Any] | None) -> str | None:
    """Why the recorded index cannot be used for the output as it is now; None when it can."""
    if record is None:
        return f"no index: run `imgbeddings index {out}`"
    manifest = read_manifest(out)
    if record["fingerprint"] != manifest["fingerprint"]:
        return (
            f"the index was built for other vectors (fingerprint {record['fingerprint']}, the output's "
            f"{manifest['fingerprint']}): run `imgbeddings index {out}` to rebuild it"
        )
    if not _files_intact(folder, record):
        return f"the index files are missing or damaged: run `imgbeddings index {out}` to rebuild it"
    listing = {name: list(stat) for name, stat in snapshot(out).items()}
    if listing == record.get("listing") or read_rows(out).digest == record["built_from"]:
        return None
    return f"the output changed since the index was built: run `imgbeddings index {out}` to update it"


def check_index(out: str | os.PathLike[str]) -> IndexStatus:
    """Whether ``out`` has an index that is current (raises OutputError only for a folder that is
    not an output, or whose shards cannot be read)."""
    out = Path(out)
    folder = out / INDEX_DIR
    record = _read_record(folder)
    reason = _staleness(out, folder, record)
    info = _info(folder, record) if record is not None else None
    return IndexStatus(info, reason is None, reason or "current")


def _write_faiss(index: Any, path: Path) -> None:
    faiss = extras.faiss()
    tmp = temp_for(path)
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, None) from exc
        if isinstance(exc, RuntimeError):  # faiss reports I/O errors as RuntimeError
            if shutil.disk_usage(path.parent).free < 1 << 20:
                raise write_error(path, OSError(28, "No space left on device"), None) from exc
            raise OutputError(f"cannot write {path}: {exc}") from exc
        raise
    fsync_dir(path.parent)


def _clean(folder: Path, keep: set[str]) -> None:
    """Remove other builds' files and dead builds' temporaries (under the lock)."""
    for path in folder.iterdir():
        name = path.name
        if name.startswith(("index-", "ids-")) and name not in keep:
            path.unlink(missing_ok=True)
        elif name.startswith(".") and name.endswith(".tmp"):
            pid = name[:-4].rsplit(".", 1)[-1]
            if not pid.isdigit() or (int(pid) != os.getpid() and not pid_alive(int(pid))):
                path.unlink(missing_ok=True)


def _files_of(record: dict[str, Any] | None) -> set[str]:
    return {record["index_file"], record["ids_file"]} if record else set()


# --- building ---------------------------------------------------------------------------

_COLUMNS = ("id", "path_bytes", "size", "mtime_ns", "shard", "row")


class _IdTable:
    """id -> (path, size, mtime_ns) of the row and where it is stored (shard name, row in it);
    a tombstone (an id an HNSW graph still holds) has no path."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {c: [] for c in _COLUMNS}

    def add(self, ids: list[int], shard: str, keys: list[tuple[str, int, int]], rows: list[int]) -> None:
        c = self.columns
        c["id"].extend(ids)
        c["path_bytes"].extend(name_bytes(k[0]) for k in keys)
        c["size"].extend(k[1] for k in keys)
        c["mtime_ns"].extend(k[2] for k in keys)
        c["shard"].extend([shard] * len(ids))
        c["row"].extend(rows)

    def tombstones(self, ids: list[int]) -> None:
        for name in _COLUMNS:
            self.columns[name].extend(ids if name == "id" else [None] * len(ids))

    def write(self, path: Path) -> None:
        import pyarrow as pa

        kinds = {"path_bytes": pa.binary(), "shard": pa.string()}
        table = pa.table({c: pa.array(v, kinds.get(c, pa.int64())) for c, v in self.columns.items()})
        atomic_write_table(table, path)


def _read_ids(path: Path) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_pylist() for name in table.column_names}


@dataclass
class _Built:
    """An index built or brought up to date, with its id table and what changed."""

    kind: str
    params: dict[str, Any]
    index: Any
    table: _IdTable = field(default_factory=_IdTable)
    next_id: int = 0
    trained_rows: int = 0
    recall: float | None = None
    added: int = 0
    removed: int = 0
    tombstones: set[int] = field(default_factory=set)


def _new_index(kind: str, params: dict[str, Any], dim: int) -> Any:
    faiss = extras.faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, params["M"], ip)
        hnsw.hnsw.efConstruction = params["efConstruction"]
        return faiss.IndexIDMap(hnsw)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["pq_nbits"], ip)
    index.cp.niter = 10  # k-means iterations: recall is tuned with nprobe afterwards
    return index


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def _vectors_at(out: Path, state: OutputRows, positions: np.ndarray) -> np.ndarray:
    """Unit vectors of the good rows at these positions (rows counted in shard order)."""
    dim, parts, start = state.manifest["dim"], [], 0
    for shard, rows in zip(state.sound, state.rows, strict=True):
        inside = positions[(positions >= start) & (positions < start + len(rows))] - start
        if len(inside):
            wanted = [rows[j] for j in inside]
            parts.append(_shard_vectors(out, shard.name, wanted, dim, listed=state.listed[shard.name]))
        start += len(rows)
    return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)


def _held_out(adding: int) -> int:
    """How many of the rows being added to hold out and tune on (0: too few to measure)."""
    size = min(TUNE_QUERIES, adding // 10)
    return size if size >= 10 else 0


def _add_rows(
    built: _Built,
    out: Path,
    state: OutputRows,
    todo: list[tuple[Shard, list[int], list[Any]]],
    held: np.ndarray,
    truth: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Give the rows of ``todo`` (shard, rows, keys) new ids and add them, except those at the
    positions ``held`` (counted over ``todo``), which are returned (vectors, ids) to be added after
    tuning. ``truth`` (a TopK) sees every row added."""
    dim, start = state.manifest["dim"], 0
    kept_vectors, kept_ids = [np.empty((0, dim), np.float32)], [np.empty(0, np.int64)]
    for shard, rows, keys in todo:
        vectors = _shard_vectors(out, shard.name, rows, dim, listed=state.listed[shard.name])
        ids = np.arange(built.next_id, built.next_id + len(rows), dtype=np.int64)
        hold = np.isin(np.arange(start, start + len(rows)), held)
        built.index.add_with_ids(vectors[~hold], ids[~hold])
        if truth is not None:
            truth.add(vectors[~hold], ids[~hold])
        kept_vectors.append(vectors[hold])
        kept_ids.append(ids[hold])
        built.table.add(ids.tolist(), shard.name, keys, rows)
        built.next_id += len(rows)
        start += len(rows)
    return np.concatenate(kept_vectors), np.concatenate(kept_ids)


def _build(out: Path, state: OutputRows, kind: str, params: dict[str, Any]) -> _Built:
    """A new index of every good row of the output. IVF reads a sample first to train on; the
    search parameters are tuned on rows held out until then (see :func:`_tune`)."""
    from .search import TopK

    dim, n = state.manifest["dim"], state.count
    params = dict(params)
    if kind.startswith("ivf"):
        params["nlist"] = _nlist(n)
    built = _Built(kind, params, _new_index(kind, params, dim), trained_rows=n, added=n)
    todo = [(s, r, k) for s, r, k in zip(state.sound, state.rows, state.keys, strict=True) if r]
    held, truth = np.empty(0, np.int64), None
    if kind.startswith("ivf"):
        positions = _sample(n, max(40 * params["nlist"], 10_000), 0)
        train = _vectors_at(out, state, positions)
        built.index.train(train)
        at = _sample(len(positions), _held_out(n), 1)
        held, truth = positions[at], TopK(train[at], 10)
        del train
    elif kind == "hnsw":
        held = _sample(n, _held_out(n), 1)
    vectors, ids = _add_rows(built, out, state, todo, held, truth)
    if kind == "flat":
        built.recall = 1.0
    elif len(ids):
        _tune(built, vectors, truth.ids if truth is not None else _graph_truth(built, vectors))
        built.index.add_with_ids(vectors, ids)
    else:  # too few rows to measure: search (nearly) all of them
        built.params["efSearch" if kind == "hnsw" else "nprobe"] = 128 if kind == "hnsw" else params["nlist"]
    return built


def _search_params(kind: str, value: int, selector: Any = None) -> Any:
    faiss = extras.faiss()
    if kind == "hnsw":
        if selector is None:
            return faiss.SearchParametersHNSW(efSearch=value)
        return faiss.SearchParametersHNSW(efSearch=value, sel=selector)
    if kind.startswith("ivf"):
        return faiss.SearchParametersIVF(nprobe=value)
    return None


def _selector(tombstones: set[int]) -> Any:
    """A faiss selector leaving the tombstones out (None when there are none). Keep a reference
    to it while searching: the search parameters do not."""
    if not tombstones:
        return None
    faiss = extras.faiss()
    batch = faiss.IDSelectorBatch(np.fromiter(sorted(tombstones), np.int64))
    selector = faiss.IDSelectorNot(batch)
    selector.keep = batch
    return selector


def _recall(found: np.ndarray, truth: list[set[int]]) -> float:
    pairs = zip(found.tolist(), truth, strict=True)
    return float(np.mean([len(set(f) & t) / len(t) if t else 1.0 for f, t in pairs]))


def _tune(built: _Built, queries: np.ndarray, exact: np.ndarray) -> None:
    """Set efSearch / nprobe to the smallest value whose recall@10 reaches TARGET_RECALL.

    The queries are rows held out of the index (added right after): a stored row is a poor
    query to tune on, since the index was built around it (an HNSW node is linked to its own
    neighbours, and finds them whatever efSearch). ``exact``: each query's true best ids."""
    name = "efSearch" if built.kind == "hnsw" else "nprobe"
    truth = [set(row[row >= 0].tolist()) for row in exact]
    k = max(1, max(len(t) for t in truth))
    if built.kind == "hnsw":
        grid = list(EF_GRID)
    else:
        nlist = built.params["nlist"]
        grid = sorted({min(2**i, nlist) for i in range(int(math.log2(nlist)) + 2)})
    selector = _selector(built.tombstones)
    value, recall = grid[-1], 0.0
    for value in grid:
        _, found = built.index.search(queries, k, params=_search_params(built.kind, value, selector))
        recall = _recall(found, truth)
        if recall >= TUNE_RECALL:
            break
    built.params[name], built.recall = value, round(recall, 4)
    if recall < TARGET_RECALL:
        warnings.warn(
            f"the {built.kind} index reaches recall@10 {recall:.2f} at most (target {TARGET_RECALL}): "
            "searches may miss neighbours; a larger memory budget allows a more exact index",
            RuntimeWarning,
            stacklevel=5,  # build_index's caller
        )


def _graph_truth(built: _Built, queries: np.ndarray) -> np.ndarray:
    """The exact best 10 ids of each query among the live vectors an HNSW graph holds (read in
    place from the graph's storage)."""
    from .search import TopK

    faiss = extras.faiss()
    hnsw = faiss.downcast_index(built.index.index)
    n, dim = hnsw.ntotal, hnsw.d
    top = TopK(queries, 10)
    if not n:
        return top.ids
    stored = faiss.rev_swig_ptr(faiss.downcast_index(hnsw.storage).get_xb(), n * dim).reshape(n, dim)
    ids = faiss.vector_to_array(built.index.id_map)
    live = np.nonzero(~np.isin(ids, np.fromiter(built.tombstones, np.int64)))[0]
    for start in range(0, len(live), 1 << 14):
        rows = live[start : start + (1 << 14)]
        top.add(stored[rows], ids[rows])
    return top.ids


def _structure(kind: str, params: dict[str, Any]) -> tuple[Any, ...]:
    return kind, params.get("M"), params.get("pq_m"), params.get("pq_nbits")


def _update(out: Path, folder: Path, state: OutputRows, record: dict[str, Any], kind: str) -> _Built | None:
    """The recorded index brought up to date (see the module doc); None to rebuild instead."""
    faiss = extras.faiss()
    n, trained = state.count, record.get("trained_rows", 0)
    if kind.startswith("ivf") and not trained / _IVF_REGROW <= n <= trained * _IVF_REGROW:
        return None
    try:
        index = faiss.read_index(str(folder / record["index_file"]))
        table = _read_ids(folder / record["ids_file"])
    except (OSError, RuntimeError, ValueError, KeyError):
        return None
    live, tombstones = {}, set()
    columns = (table[c] for c in ("id", "path_bytes", "size", "mtime_ns"))
    for i, p, size, mtime in zip(*columns, strict=True):
        if p is None:
            tombstones.add(i)
        else:
            live[(os.fsdecode(p), size, mtime)] = i
    current = {key for keys in state.keys for key in keys}
    removed = [i for key, i in live.items() if key not in current]
    added = len(current) - (len(live) - len(removed))
    if kind == "hnsw" and len(tombstones) + len(removed) > _TOMBSTONE_LIMIT * (index.ntotal + added):
        return None
    built = _Built(kind, dict(record["params"]), index, next_id=record["next_id"], trained_rows=trained)
    built.recall, built.added, built.removed = record.get("recall"), added, len(removed)
    if removed and kind != "hnsw":
        index.remove_ids(np.array(removed, np.int64))
    elif removed:
        tombstones.update(removed)
    built.tombstones = tombstones
    built.table.tombstones(sorted(tombstones))
    todo = []
    for shard, rows, keys in zip(state.sound, state.rows, state.keys, strict=True):
        kept = [j for j, key in enumerate(keys) if key in live]
        kept_keys = [keys[j] for j in kept]
        built.table.add([live[key] for key in kept_keys], shard.name, kept_keys, [rows[j] for j in kept])
        new = [j for j, key in enumerate(keys) if key not in live]
        if new:
            todo.append((shard, [rows[j] for j in new], [keys[j] for j in new]))
    # HNSW: efSearch is tuned again on a sample of the new rows, when there are enough of them
    held = _sample(added, _held_out(added), 1) if kind == "hnsw" else np.empty(0, np.int64)
    vectors, ids = _add_rows(built, out, state, todo, held)
    if len(ids):
        _tune(built, vectors, _graph_truth(built, vectors))
        index.add_with_ids(vectors, ids)
    return built


def _listing(listed: dict[str, Stat]) -> dict[str, list[int]]:
    return {name: list(stat) for name, stat in listed.items()}


def _publish(folder: Path, state: OutputRows, built: _Built, budget: int | None) -> dict[str, Any]:
    """Write the index and its id table under new names, then the record that names them."""
    faiss = extras.faiss()
    build = uuid.uuid4().hex[:16]
    index_file, ids_file = f"index-{build}.faiss", f"ids-{build}.parquet"
    _write_faiss(built.index, folder / index_file)
    built.table.write(folder / ids_file)
    live = sum(p is not None for p in built.table.columns["path_bytes"])
    record = {
        "format_version": FORMAT_VERSION,
        "build": build,
        "kind": built.kind,
        "params": built.params,
        "recall": built.recall,
        "rows": live,
        "tombstones": len(built.table.columns["id"]) - live,
        "next_id": built.next_id,
        "trained_rows": built.trained_rows,
        "dim": state.manifest["dim"],
        "metric": "inner product of L2-normalised vectors (cosine)",
        "fingerprint": state.manifest["fingerprint"],
        "built_from": state.digest,
        "shards": [[s.name, s.ident, s.rows] for s in state.sound],
        "listing": _listing(state.listed),
        "index_file": index_file,
        "index_bytes": (folder / index_file).stat().st_size,
        "ids_file": ids_file,
        "ids_bytes": (folder / ids_file).stat().st_size,
        "memory_budget_mb": None if budget is None else round(budget / 2**20),
        "faiss_version": faiss.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_bytes(folder / RECORD, (json.dumps(record, indent=2) + "\n").encode())
    return record


def build_index(
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    memory_budget_mb: float | None = None,
    rebuild: bool = False,
) -> IndexInfo:
    """Build the index of an output folder, or bring its index up to date (see the module doc).

    Args:
        kind: ``auto`` (by size and budget), ``flat`` (exact), ``hnsw``, ``ivf`` (IVF-Flat, or
            IVF-PQ when the vectors do not fit the budget), ``ivf-flat`` or ``ivf-pq``.
        memory_budget_mb: the most memory the index may take (default: half of what is available).
        rebuild: build from scratch even when the index could be brought up to date.

    Raises :class:`OptionError` for an unknown kind or a budget no index fits,
    :class:`~imgbeddings.errors.OutputError` when ``out`` is not an output or has damaged shards,
    :class:`~imgbeddings.errors.OutputLocked` while another build writes the index, and
    ImportError without faiss. Reading the output takes no lock: a run writing it meanwhile
    leaves the index stale, and the next build catches up.
    """
    started = time.perf_counter()
    out = Path(out)
    read_manifest(out)  # refuse a folder that is not an output before making OUT/index
    budget = _budget(memory_budget_mb)
    extras.faiss()
    folder = out / INDEX_DIR
    lock = FolderLock(folder)
    lock.acquire(None)
    try:
        for attempt in range(4):
            try:
                return _build_or_update(out, folder, kind, budget, rebuild, started)
            except Changed:  # a run replaced a shard while it was read: read the output again
                time.sleep(0.5 * (attempt + 1))
        raise OutputError(
            f"{out} kept changing while the index was built (a run is writing it): try again later"
        )
    finally:
        with contextlib.suppress(OSError):
            _clean(folder, _files_of(_read_record(folder)))
        lock.release()


def _build_or_update(
    out: Path, folder: Path, kind: str, budget: int | None, rebuild: bool, started: float
) -> IndexInfo:
    """build_index's work, under the lock (raises Changed when a shard changed while read)."""
    record = _read_record(folder)
    _clean(folder, _files_of(record))
    state = read_rows(out)
    kind_, params = _plan(kind, state.count, state.manifest["dim"], budget)
    old = record
    if old is not None and (
        rebuild
        or old["fingerprint"] != state.manifest["fingerprint"]
        or _structure(old["kind"], old["params"]) != _structure(kind_, params)
        or not _files_intact(folder, old)
    ):
        old = None  # built for other vectors, or another kind of index, or damaged: rebuild
    if old is not None and old["built_from"] == state.digest:
        if old.get("listing") != _listing(state.listed):  # same shards, moved or copied
            old["listing"] = _listing(state.listed)
            atomic_write_bytes(folder / RECORD, (json.dumps(old, indent=2) + "\n").encode())
        return _info(folder, old, action="current", seconds=time.perf_counter() - started)
    built = _update(out, folder, state, old, kind_) if old is not None else None
    action = "updated" if built is not None else "built"
    if built is None:
        built = _build(out, state, kind_, params)
    record = _publish(folder, state, built, budget)
    seconds = time.perf_counter() - started
    return _info(folder, record, action=action, added=built.added, removed=built.removed, seconds=seconds)


# --- searching --------------------------------------------------------------------------


class Index:
    """An output's index, opened while current (:func:`open_index`); ``search`` takes unit vectors.

    ``path in index`` says whether a path has a vector in it; ``vectors_of(paths)`` reads their
    stored vectors from the output's shards."""

    def __init__(
        self,
        out: Path,
        record: dict[str, Any],
        index: Any,
        table: dict[str, list[Any]],
        manifest: dict[str, Any],
    ) -> None:
        self.out = out
        self.record = record
        self.info = _info(out / INDEX_DIR, record)
        self.manifest = manifest
        self.faiss_index = index
        self.kind: str = record["kind"]
        self.method = self.kind  # what answered, as SearchResult.method says it
        self.dim: int = record["dim"]
        size = max(table["id"], default=-1) + 1
        self._paths = np.full(size, None, dtype=object)
        self._where: dict[str, tuple[str, int]] = {}
        tombstones = set()
        columns = (table[c] for c in ("id", "path_bytes", "shard", "row"))
        for i, p, shard, row in zip(*columns, strict=True):
            if p is None:
                tombstones.add(i)
            else:
                path = self._paths[i] = os.fsdecode(p)
                self._where[path] = (shard, row)
        self._selector = _selector(tombstones)
        self._shards = {name: ident for name, ident, _ in record.get("shards", [])}

    def __len__(self) -> int:
        return self.info.rows

    def __contains__(self, path: object) -> bool:
        return path in self._where

    def vectors_of(self, paths: list[str]) -> np.ndarray:
        """The stored vectors (L2-normalised) of paths the index holds, read from their shards.
        Raises OutputError when a shard changed since the index was opened."""
        by_shard: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_shard.setdefault(self._where[p][0], []).append(i)
        found = np.zeros((len(paths), self.dim), np.float32)
        for name, wanted in by_shard.items():
            rows = [self._where[paths[i]][1] for i in wanted]
            try:
                found[wanted] = _shard_vectors(self.out, name, rows, self.dim, ident=self._shards.get(name))
            except Changed:
                raise OutputError(
                    f"{self.out / name} changed since the index was opened: open it again"
                ) from None
        return found

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each unit query, up to ``k`` (path, cosine) pairs, best first."""
        if not len(queries) or not len(self):
            return [[] for _ in range(len(queries))]
        params = self.record["params"]
        value = max(params.get("efSearch", 0), k) if self.kind == "hnsw" else params.get("nprobe", 0)
        search_params = _search_params(self.kind, value, self._selector)
        scores, ids = self.faiss_index.search(
            np.ascontiguousarray(queries, np.float32), min(k, len(self)), params=search_params
        )
        return [
            [(self._paths[i], s) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)
        ]


def open_index(
    out: str | os.PathLike[str],
    *,
    build: bool = False,
    kind: str = "auto",
    memory_budget_mb: float | None = None,
) -> Index | None:
    """The output's index, opened for searching, when it is current; otherwise None, or, with
    ``build``, built or brought up to date first (:func:`build_index` with ``kind`` and
    ``memory_budget_mb``). faiss is needed only when there is an index to open."""
    out = Path(out)
    folder = out / INDEX_DIR
    for attempt in range(8):
        status = check_index(out)
        if not status.current:
            if not build:
                return None
            build_index(out, kind=kind, memory_budget_mb=memory_budget_mb)
            build = False
            continue
        record = _read_record(folder)
        if record is None:
            continue
        faiss = extras.faiss()
        try:
            index = faiss.read_index(str(folder / record["index_file"]))
            table = _read_ids(folder / record["ids_file"])
        except (OSError, RuntimeError):  # replaced by a newer build meanwhile: read the record again
            time.sleep(0.05 * (attempt + 1))
            continue
        if _read_record(folder) == record:
            return Index(out, record, index, table, read_manifest(out))
    raise OutputError(f"{folder} kept changing while being opened (a build is writing it): try again later")
