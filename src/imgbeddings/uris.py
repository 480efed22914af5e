"""Inputs named by URI (``s3://``, ``gs://``, ``az://``, ``https://``, ``file://``, ...), read with
fsspec, the file-system layer of pandas, Dask and Ray Data.

A string is a URI when it starts with ``PROTOCOL://``; anything else is a local path. ``file://``
URIs are turned into local paths (so an output holds one name per file, however it was given).
Object stores need their fsspec implementation installed (``pip install s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``, ``adlfs`` for ``az://``) and take their credentials and endpoint the
way that library does (``AWS_*`` variables, ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...)
or from ``storage_options`` where a function takes them.

What the job needs of a URI is what it needs of a file: a listing (a "folder" is a prefix), a
size and a modification time (the resume rule), and the bytes. Stores that keep no modification
time (plain HTTP) give ``-1``: an object replaced by another of the same size is then not seen
as changed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import ImageDecodeError, ImageNotFound, InputError, MissingExtra, OptionError, StoreUnavailable

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")

#: Objects fetched or stat'ed at once when a store has no batch call of its own.
IO_THREADS = 16


def protocol(text: str) -> str | None:
    """The protocol of a URI (``"s3"``), or None for a local path."""
    m = _URI.match(text)
    return m.group(1).lower() if m else None


def is_uri(text: Any) -> bool:
    """True for a string naming a remote object (``file://`` URIs count as local paths)."""
    return isinstance(text, str) and protocol(text) not in (None, "file")


def local_path(text: str) -> str:
    """``file://`` URIs as local paths; anything else unchanged."""
    if protocol(text) == "file":
        import fsspec.implementations.local as local

        return local.make_path_posix(text[len("file://") :]) if os.name != "nt" else text[len("file:///") :]
    return text


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of ``uri`` and the path inside it; :class:`MissingExtra` when the
    protocol's implementation (s3fs, gcsfs, ...) is not installed, :class:`OptionError` when
    fsspec knows no such protocol."""
    try:
        import fsspec
    except ImportError as exc:  # a core dependency; only a broken install lacks it
        raise MissingExtra(f"reading {uri} needs fsspec: pip install fsspec") from exc
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ImportError as exc:
        raise MissingExtra(f"reading {uri}: {exc}") from exc
    except ValueError as exc:  # "Protocol not known: xyz"
        raise OptionError(f"{uri}: {exc}") from exc


def _mtime_ns(info: dict[str, Any]) -> int:
    """An object's modification time from an fsspec ``info`` dict (stores name it differently),
    in ns but whole seconds (a listing and a HEAD request of one object may differ below a
    second), or -1 when it has none."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            value = value.timestamp()
        if isinstance(value, (int, float)):
            return int(value) * 1_000_000_000
    return -1


def _entry(fs: Any, path: str, info: dict[str, Any]) -> tuple[str, int, int]:
    size = info.get("size")
    return fs.unstrip_protocol(path), int(size) if size is not None else -1, _mtime_ns(info)


def stat(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """(size, mtime_ns) of an object (mtime -1 when the store keeps none), or None when it does
    not exist or refuses this object; :class:`StoreUnavailable` when the store cannot be asked
    at all (no credentials, say)."""
    fs, path = filesystem(uri, storage_options)
    try:
        info = fs.info(path)
    except (OSError, ValueError):  # missing, or this object refused: its read will say why
        return None
    except Exception as exc:  # the store itself (botocore's NoCredentialsError, say)
        raise _store_error(uri, exc) from exc
    if info.get("type") == "directory":
        return None
    _, size, mtime = _entry(fs, path, info)
    return size, mtime


def canonical(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """The one form a URI is stored in (``s3://bucket/key``, no trailing slash)."""
    fs, path = filesystem(uri, storage_options)
    return fs.unstrip_protocol(path.rstrip("/"))


def list_images(
    uri: str, *, recursive: bool, storage_options: dict[str, Any] | None = None
) -> Iterator[tuple[str, int, int]] | None:
    """(URI, size, mtime_ns) of the image-named objects under the prefix ``uri`` (its
    sub-prefixes too when ``recursive``), sorted; None when ``uri`` is not a folder/prefix.
    Sizes and times come from the listing itself: no request per object.
    :class:`StoreUnavailable` when the prefix cannot be listed."""
    from .inputs import is_image_name

    fs, path = filesystem(uri, storage_options)
    try:
        if not fs.isdir(path):
            return None
        found = fs.find(path, maxdepth=None if recursive else 1, detail=True)
    except Exception as exc:  # a listing is the whole input: no job without it
        raise _store_error(uri, exc, "cannot list") from exc
    return iter(
        _entry(fs, key, info)
        for key, info in sorted(found.items())
        if info.get("type") != "directory" and is_image_name(key)
    )


def stat_many(
    uris: Sequence[str], storage_options: dict[str, Any] | None = None
) -> list[tuple[int, int] | None]:
    """:func:`stat` of each URI, ``IO_THREADS`` requests at a time, in order."""
    if len(uris) <= 1:
        return [stat(u, storage_options) for u in uris]
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="imgbeddings-stat") as pool:
        return list(pool.map(lambda u: stat(u, storage_options), uris))


def _store_error(uri: str, exc: BaseException, what: str = "cannot reach the store") -> StoreUnavailable:
    return StoreUnavailable(uri, f"{what}: {type(exc).__name__}: {exc}")


def _read_error(uri: str, exc: BaseException) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return ImageNotFound(uri, "no such object")
    if isinstance(exc, IsADirectoryError):
        return ImageNotFound(uri, "is a folder (prefix), not an object")
    if isinstance(exc, PermissionError):
        return ImageDecodeError(uri, "permission denied")
    return ImageDecodeError(uri, f"cannot read: {type(exc).__name__}: {exc}")


def read(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of one object; :class:`ImageNotFound` / :class:`ImageDecodeError` (naming the
    URI) when it is missing or cannot be read."""
    try:
        fs, path = filesystem(uri, storage_options)
    except (OptionError, MissingExtra) as exc:  # this input's failure (the job checked the others)
        raise ImageDecodeError(uri, f"cannot read: {exc}") from exc
    try:
        return fs.cat_file(path)
    except Exception as exc:
        raise _read_error(uri, exc) from exc


def read_many(uris: Iterable[str], storage_options: dict[str, Any] | None = None) -> list[bytes | InputError]:
    """The bytes of each object, or its error, in order: fetched concurrently (fsspec's own
    batch call on stores that have one, such as s3fs and gcsfs; else ``IO_THREADS`` threads)."""
    uris = list(uris)
    out: list[bytes | InputError] = [b""] * len(uris)
    groups: dict[int, tuple[Any, list[int], list[str]]] = {}
    for i, uri in enumerate(uris):
        try:
            fs, path = filesystem(uri, storage_options)
        except (OptionError, MissingExtra) as exc:  # a node without s3fs, say: this input's failure
            out[i] = ImageDecodeError(uri, f"cannot read: {exc}")
            continue
        groups.setdefault(id(fs), (fs, [], []))
        groups[id(fs)][1].append(i)
        groups[id(fs)][2].append(path)
    for fs, rows, paths in groups.values():
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            got = sync(fs.loop, _cat_async, fs, paths)
        else:
            with ThreadPoolExecutor(
                min(IO_THREADS, len(paths)), thread_name_prefix="imgbeddings-read"
            ) as pool:
                got = list(pool.map(lambda p, fs=fs: _try_cat(fs, p), paths))
        for row, value in zip(rows, got, strict=True):
            out[row] = _read_error(uris[row], value) if isinstance(value, BaseException) else value
    return out


async def _cat_async(fs: Any, paths: list[str]) -> list[bytes | BaseException]:
    """Every object of an async store (s3fs, gcsfs) fetched at once, ``4 * IO_THREADS`` in
    flight; per-object errors returned. (fsspec's own ``cat`` of a list would glob names with
    ``*?[`` in them and fail the whole list on one missing object.)"""
    import asyncio

    gate = asyncio.Semaphore(4 * IO_THREADS)

    async def one(path: str) -> bytes | BaseException:
        async with gate:
            try:
                return await fs._cat_file(path)
            except Exception as exc:
                return exc

    return list(await asyncio.gather(*(one(p) for p in paths)))


def _try_cat(fs: Any, path: str) -> bytes | BaseException:
    try:
        return fs.cat_file(path)
    except Exception as exc:
        return exc


__all__ = [
    "canonical",
    "filesystem",
    "is_uri",
    "list_images",
    "local_path",
    "protocol",
    "read",
    "read_many",
    "stat",
    "stat_many",
]
