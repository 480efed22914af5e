"""The files of an output folder (see :mod:`imgbeddings.store` for the layout): names,
the shard schema, atomic writes that fail cleanly on a full disk, file names as exact bytes,
and the checks that decide whether a stored file belongs to the output and can be read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError

MANIFEST = "imgbeddings.json"
FAILURES = "failures.parquet"
NPY, NPY_PATHS, NPY_RECORD = "embeddings.npy", "paths.txt", "embeddings.json"
QUARANTINE = "quarantine"
#: Shards whose data pages were checked, or written by a run: not read through again on resume.
VERIFIED = ".verified.json"
SHARD_GLOB = "part-*.parquet"
_SHARD_NAME = re.compile(r"part-(\d+)\.parquet")
_FIX = (
    "Run `imgbeddings embed` again with the same inputs and output: it moves damaged shards to "
    "{quarantine} and embeds their inputs again (or pass skip_damaged=True to read only the sound shards)."
)


def _pa() -> Any:
    import pyarrow as pa

    return pa


def name_bytes(path: str) -> bytes:
    """The exact bytes of a file name (``os.fsencode``; names from ``os.fsdecode`` round-trip)."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate that no file system name decodes to
        return path.encode("utf-8", "surrogatepass")


def readable(text: str | None) -> str | None:
    """``text`` as valid UTF-8: undecodable file-name bytes (surrogate escapes) become ``\\xNN``."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return name_bytes(text).decode("utf-8", "backslashreplace")
    return text


def paths_of(table: Any) -> list[str]:
    """A table's paths as the str a job uses (``os.fsdecode`` of the exact bytes when stored)."""
    if "path_bytes" in table.column_names:
        return [os.fsdecode(b) for b in table.column("path_bytes").to_pylist()]
    return table.column("path").to_pylist()


def size_text(n: float | None) -> str:
    """A byte count in words (kB, MB, GB)."""
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(int(n), 0)} bytes"


def fsync_dir(path: Path) -> None:
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


def write_error(path: Path, exc: OSError, needed: int | None) -> OutputError:
    """One OutputError for a failed write: for a full disk, the space needed and free."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        try:
            free: int | None = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        return OutputError(
            f"no space left on the device of output {path.parent}: writing {path.name} needs about "
            f"{size_text(needed)}, {size_text(free)} free. Nothing half-written was left behind; free some "
            "space (or use another output folder) and run the same command again: the rows already "
            "written are kept and the job resumes."
        )
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def temp_for(path: Path) -> Path:
    """The temporary name ``path`` is written under by this process (``.NAME.PID.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``path``; unless ``replace``, never over an existing file."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists: no rename-over
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: the lock keeps names unique
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_atomically(path: Path, write: Callable[[Path], None], needed: int | None, replace: bool) -> None:
    tmp = temp_for(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path, replace)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise write_error(path, exc, needed) from exc
        raise
    fsync_dir(path.parent)


def atomic_write_table(table: Any, path: Path, *, replace: bool = True) -> None:
    """Write a Parquet table to ``path`` via a temporary file + fsync + rename (with
    ``replace=False``, raise FileExistsError rather than replace an existing file). A failed
    write leaves nothing behind and raises :class:`OutputError` (with the space needed when the
    disk is full)."""
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression="zstd", **checksums("write_page_checksum"))

    _write_atomically(path, write, table.nbytes, replace)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (as :func:`atomic_write_table`)."""
    _write_atomically(path, lambda tmp: tmp.write_bytes(data), len(data), True)


@functools.cache
def checksums(name: str) -> dict[str, bool]:
    """Parquet page checksums (written and verified) where pyarrow has them (15+)."""
    import inspect

    import pyarrow.parquet as pq

    target = pq.write_table if name == "write_page_checksum" else pq.ParquetFile
    return {name: True} if name in inspect.signature(target).parameters else {}


def shard_schema(dim: int, metadata: dict[str, str]) -> Any:
    """The schema of a shard written now (older shards may lack ``path_bytes``)."""
    pa = _pa()
    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("error", pa.string()),
            ("message", pa.string()),
            ("path_bytes", pa.binary()),
        ],
        metadata=metadata,
    )


def identity_of(manifest: dict[str, Any]) -> dict[str, Any]:
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


def fingerprint_of(identity: dict[str, Any]) -> str:
    """The fingerprint of an identity, as manifests and shards record it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _manifest_problems(manifest: Any) -> list[str]:
    """Why a manifest cannot be trusted (edited or damaged), or nothing."""
    if not isinstance(manifest, dict):
        return ["it is not a JSON object"]
    problems = []
    dim, fingerprint = manifest.get("dim"), manifest.get("fingerprint")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        problems.append(f"dim {dim!r} is not a positive integer")
    if not isinstance(fingerprint, str) or not fingerprint:
        problems.append("it has no fingerprint")
    identity = manifest.get("identity", {})
    if not isinstance(identity, dict):
        problems.append("its identity is not an object")
    elif "identity" in manifest:
        if fingerprint != fingerprint_of(identity):
            problems.append("its identity does not match its fingerprint")
        if identity.get("dim") != dim:
            problems.append(f"its dim {dim!r} differs from its identity's {identity.get('dim')!r}")
    return problems


def trusted_manifest(path: Path) -> dict[str, Any]:
    """A manifest that is readable and consistent; OutputError otherwise (FileNotFoundError
    passes through)."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path} is unreadable ({exc}); is {path.parent} an imgbeddings output?") from exc
    problems = _manifest_problems(manifest)
    if problems:
        raise OutputError(
            f"{path} has been edited or damaged ({'; '.join(problems)}), so what its vectors are "
            "cannot be trusted. Restore it from a copy of this output, or embed into a new output folder."
        )
    return manifest


def shard_number(name: str) -> int | None:
    match = _SHARD_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def shard_order(name: str) -> tuple[float, str]:
    number = shard_number(name)
    return (math.inf if number is None else number, name)


class Damaged(Exception):
    """A shard that does not belong to the output or cannot be read (the reason in words)."""


class Changed(Exception):
    """A shard changed between listing and reading it (a writer is at work): read again."""


#: A shard file as listed: (inode, size, mtime_ns), to read exactly the file that was listed.
Stat = tuple[int, int, int]


def snapshot(out: Path) -> dict[str, Stat]:
    """The shard files of ``out`` as listed now (each read later must still be this file)."""
    found = {}
    for path in out.glob(SHARD_GLOB):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            found[path.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _open_listed(path: Path, listed: Stat) -> Any:
    """The shard file, if it is still the one listed; raises Changed otherwise."""
    pa = _pa()
    try:
        fh = pa.OSFile(str(path))
    except FileNotFoundError:
        raise Changed(path.name) from None
    except OSError as exc:
        raise Damaged(f"cannot be opened ({exc.strerror or exc})") from None
    st = os.fstat(fh.fileno())
    if (st.st_ino, st.st_size, st.st_mtime_ns) != listed:
        fh.close()
        raise Changed(path.name)
    return fh


def _schema_problem(schema: Any, fingerprint: str, dim: int) -> str | None:
    """Why a shard's schema says it does not belong to this output, or None."""
    pa = _pa()
    meta = schema.metadata or {}
    theirs = meta.get(b"imgbeddings.fingerprint")
    if theirs is None:
        return "has no imgbeddings fingerprint (not written by imgbeddings)"
    if theirs.decode(errors="replace") != fingerprint:
        theirs_text = theirs.decode(errors="replace")
        return f"belongs to another output (fingerprint {theirs_text}, this output's {fingerprint})"
    wanted = {"path": pa.string(), "size": pa.int64(), "mtime_ns": pa.int64(), "error": pa.string()}
    wanted.update(message=pa.string(), path_bytes=pa.binary())
    for name, kind in wanted.items():
        if schema.get_field_index(name) < 0:
            if name == "path_bytes":  # written before non-UTF-8 names were kept exactly
                continue
            return f"lacks the column {name!r}"
        if schema.field(name).type != kind:
            return f"has column {name!r} of type {schema.field(name).type}, expected {kind}"
    if schema.get_field_index("embedding") < 0:
        return "lacks the column 'embedding'"
    kind = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
        return f"has column 'embedding' of type {kind}, expected fixed_size_list<float>[{dim}]"
    if kind.list_size != dim:
        return f"holds vectors of width {kind.list_size}, this output's are {dim}-d"
    return None


@dataclass
class Shard:
    """A sound shard as surveyed: its number, content id, and the small columns read."""

    name: str
    number: int
    ident: str
    rows: int
    paths: list[str]
    columns: dict[str, list[Any]]


def _check_rows(table: Any) -> np.ndarray:
    """Which rows hold a vector; raises Damaged unless each row has a vector or an error."""
    valid = table.column("embedding").is_valid().to_numpy(zero_copy_only=False)
    if np.any(valid == table.column("error").is_valid().to_numpy(zero_copy_only=False)):
        raise Damaged("has rows with both or neither of a vector and an error")
    return valid


def inspect_shard(
    out: Path,
    name: str,
    listed: Stat,
    fingerprint: str,
    dim: int,
    columns: tuple[str, ...],
    verify: bool = False,
) -> Shard:
    """Check a shard (footer, fingerprint, schema; with ``verify``, also every data page of
    its vectors) and read its paths and ``columns``; raises Damaged with the reason, or
    Changed when it is no longer the file listed."""
    import pyarrow.parquet as pq

    pa = _pa()
    number = shard_number(name)
    if number is None:
        raise Damaged("is not named part-NUMBER.parquet")
    fh = _open_listed(out / name, listed)
    try:
        try:
            parquet = pq.ParquetFile(fh, **checksums("page_checksum_verification"))
        except (OSError, pa.ArrowException) as exc:
            raise Damaged(f"is truncated or not a Parquet file ({exc})") from None
        schema = parquet.schema_arrow
        problem = _schema_problem(schema, fingerprint, dim)
        if problem:
            raise Damaged(problem)
        wanted = ["path_bytes" if "path_bytes" in schema.names else "path", *columns]
        try:
            if verify:
                _check_rows(parquet.read(columns=["embedding", "error"]))
            table = parquet.read(columns=wanted)
        except (OSError, pa.ArrowException) as exc:
            raise Damaged(f"cannot be read ({exc})") from None
    finally:
        fh.close()
    ident = (schema.metadata or {}).get(b"imgbeddings.shard", b"").decode() or f"{listed[1]}:{listed[2]}"
    cols = {c: table.column(c).to_pylist() for c in columns}
    return Shard(name, number, ident, table.num_rows, paths_of(table), cols)


def survey(
    out: Path,
    listed: dict[str, Stat],
    fingerprint: str,
    dim: int,
    columns: tuple[str, ...],
    verify: bool | Callable[[str, Stat], bool] = False,
) -> tuple[list[Shard], list[tuple[str, str]]]:
    """The sound shards (by number) and the damaged or foreign ones with the reason. ``verify``:
    read every data page too, for all shards or for those the callable picks."""
    sound, damaged = [], []
    for name in sorted(listed, key=shard_order):
        full = verify(name, listed[name]) if callable(verify) else verify
        try:
            sound.append(inspect_shard(out, name, listed[name], fingerprint, dim, columns, full))
        except Damaged as exc:
            damaged.append((name, str(exc)))
    return sound, damaged


def latest_rows(shards: list[Shard]) -> dict[str, tuple[int, str | None, str | None]]:
    """For each path, the newest shard holding it (its index) and its error and message."""
    latest: dict[str, tuple[int, str | None, str | None]] = {}
    for i, shard in enumerate(shards):
        errors, messages = shard.columns["error"], shard.columns["message"]
        for path, error, message in zip(shard.paths, errors, messages, strict=True):
            latest[path] = (i, error, message)
    return latest


def digest_of(shards: list[Shard]) -> str:
    """What derived files record: the shard set (names, shard ids, row counts)."""
    blob = json.dumps([[s.name, s.ident, s.rows] for s in shards]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def damage_error(out: Path, damaged: list[tuple[str, str]]) -> OutputError:
    """The error a reader raises for unusable shards: each named with its reason, and the fix."""
    listed = "; ".join(f"{name} {reason}" for name, reason in damaged)
    return OutputError(
        f"{out}: {len(damaged)} shard(s) cannot be used: {listed}. "
        + _FIX.format(quarantine=out / QUARANTINE)
    )


def _read_vectors(
    out: Path, shard: Shard, index: int, listed: Stat, latest: dict[str, Any], dim: int
) -> tuple[list[str], np.ndarray]:
    """The good rows of one shard that no newer shard supersedes."""
    import pyarrow.parquet as pq

    pa = _pa()
    fh = _open_listed(out / shard.name, listed)
    try:
        table = pq.ParquetFile(fh, **checksums("page_checksum_verification")).read(["embedding", "error"])
    except (OSError, pa.ArrowException) as exc:
        raise Damaged(f"cannot be read ({exc})") from None
    finally:
        fh.close()
    embedding, valid = table.column("embedding"), _check_rows(table)
    newest = np.fromiter((latest[p][0] == index for p in shard.paths), bool, len(shard.paths))
    keep = valid & newest
    values = embedding.filter(pa.array(keep)).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    paths = [p for p, k in zip(shard.paths, keep, strict=True) if k]
    return paths, values.reshape(-1, dim).astype(np.float32, copy=False)


def iter_vectors(
    out: Path,
    sound: list[Shard],
    listed: dict[str, Stat],
    latest: dict[str, Any],
    dim: int,
    skip_damaged: bool,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(paths, vectors)`` of the good, newest rows of each surveyed shard, in order."""
    for i, shard in enumerate(sound):
        try:
            yield _read_vectors(out, shard, i, listed[shard.name], latest, dim)
        except Damaged as exc:
            if not skip_damaged:
                raise damage_error(out, [(shard.name, str(exc))]) from None
            warnings.warn(f"{out}: skipped damaged shard {shard.name} ({exc})", RuntimeWarning, 3)
