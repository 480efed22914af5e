r"""Which files a job covers: paths, folders (optionally recursive), ``.txt`` lists, stdin,
and URIs (``s3://bucket/prefix/``, ...: a prefix is listed like a folder; see :mod:`.uris`).

Listing is lazy (a generator), so a million-file folder or list is never held in memory as a
whole by this module.

Path lists (``NAME.txt`` and ``-`` for stdin) are read as bytes, one path per line, so that any
file name on disk can be listed:

- each line is decoded as UTF-8; a line that is not valid UTF-8 is decoded like a file name
  from the OS (:func:`os.fsdecode`, which on POSIX keeps the raw bytes as surrogate escapes),
  so a Latin-1 list naming ``b"caf\xe9.jpg"`` opens that very file;
- a UTF-8 byte-order mark at the start of the list is dropped;
- only the line terminator (``\n`` or ``\r\n``) is removed: leading and trailing spaces are
  part of the name (they are legal in file names);
- blank lines (empty or only whitespace) and lines starting with ``#`` are skipped; write a
  file whose name starts with ``#`` as ``./#name``;
- relative paths are relative to the current directory.

Folder entries whose names are not valid UTF-8 come back surrogate-escaped too (as
:func:`os.scandir` gives them); every function here accepts such names.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import IO, Any

from . import uris

_BOM = b"\xef\xbb\xbf"

#: File name extensions treated as images when walking folders (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .bmp .dib .gif .tif .tiff .ppm .pgm .pbm .pnm .tga .ico .avif".split()
)


def is_image_name(name: str) -> bool:
    """True when ``name`` ends in an image extension (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_folder(folder: str, recursive: bool) -> Iterator[str]:
    """Image-named entries of ``folder`` in sorted order, sub-folders too if ``recursive``.

    Entries named like images are yielded whatever they are (a directory called ``x.jpg``, a
    broken symlink), so that the job reports them as failures instead of silently skipping.
    Symlinked folders are not followed (no loops).
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        warnings.warn(f"cannot list {folder}: {exc.strerror or exc}", RuntimeWarning, stacklevel=2)
        return
    for entry in entries:
        if is_image_name(entry.name):
            yield entry.path
        if recursive and entry.is_dir(follow_symlinks=False):
            yield from walk_folder(entry.path, recursive)


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return os.fsdecode(raw)  # POSIX: surrogateescape, so the name round-trips to its bytes
    except UnicodeDecodeError:  # Windows' file names are Unicode: such a name cannot exist there
        return raw.decode("utf-8", "replace")


def read_list(stream: IO[bytes] | IO[str]) -> Iterator[str]:
    """Paths from a list, one per line, by the rules in the module docstring.

    ``stream`` is best binary (an ``open(..., "rb")`` file, ``sys.stdin.buffer``); a text
    stream's ``buffer`` is read when it has one, otherwise its lines are taken as decoded.
    """
    binary: Any = getattr(stream, "buffer", stream)
    first = True
    for line in binary:
        if isinstance(line, bytes):
            if first and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            path = _decode_line(line)
        else:
            if first and line.startswith("\ufeff"):
                line = line[1:]
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            path = line
        first = False
        if path.strip() and not path.startswith("#"):
            yield path


def _read_list_file(path: str) -> Iterator[str]:
    try:
        fh = open(path, "rb")  # opened first so that only this error is a warning
    except OSError as exc:
        warnings.warn(f"cannot read list {path}: {exc.strerror or exc}", RuntimeWarning, stacklevel=3)
        return
    with fh:
        yield from read_list(fh)


def expand(
    paths: Iterable[str], *, recursive: bool = False, stdin: IO[bytes] | IO[str] | None = None
) -> Iterator[str]:
    """Expand command-line ``paths`` into the files to embed, in order.

    - a folder: its image files (``recursive``: and its sub-folders');
    - ``NAME.txt``: the paths listed in it, one per line (see the module docstring for the rules);
    - ``-``: paths read from standard input (``sys.stdin.buffer`` unless ``stdin`` is given),
      by the same rules;
    - a URI (``s3://...``): a prefix is listed like a folder, an object is taken as it is;
      ``file://`` URIs are local paths;
    - anything else: taken as it is (a missing file becomes a failure of the job, not an abort).

    A folder or list that cannot be read gives a ``RuntimeWarning`` and contributes no paths.
    """
    for name, _ in _expand(paths, recursive, stdin, None):
        yield name


def _expand(
    paths: Iterable[str], recursive: bool, stdin: Any, storage_options: dict[str, Any] | None
) -> Iterator[tuple[str, tuple[int, int] | None]]:
    """:func:`expand`, with the (size, mtime_ns) of the objects a URI listing gave (else None)."""
    for raw in paths:
        if raw == "-":
            yield from _named(read_list(stdin if stdin is not None else sys.stdin))
        elif uris.is_uri(raw):
            listed = uris.list_images(raw, recursive=recursive, storage_options=storage_options)
            if listed is None:
                yield raw, None
            else:
                for uri, size, mtime in listed:
                    yield uri, (size, mtime)
        elif os.path.isdir(raw := uris.local_path(raw)):
            yield from _named(walk_folder(raw, recursive))
        elif raw.lower().endswith(".txt") and os.path.isfile(raw):
            yield from _named(_read_list_file(raw))
        else:
            yield raw, None


def _named(names: Iterable[str]) -> Iterator[tuple[str, None]]:
    for name in names:
        yield uris.local_path(name), None


def entries(
    paths: Iterable[str],
    *,
    recursive: bool = False,
    stdin: IO[bytes] | IO[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[tuple[str, int, int]]:
    """(stored name, size, mtime_ns) of each input :func:`expand` gives, in order: the name as
    outputs store it (:func:`canonical_path`; a URI in its canonical form), size and mtime -1
    for an input that cannot be stat'ed (missing: the job records its failure).

    Objects named one by one (in a list, say) are stat'ed ``uris.IO_THREADS`` at a time;
    objects from a prefix listing take their size and mtime from the listing."""
    pending = _expand(paths, recursive, stdin, storage_options)
    while chunk := list(islice(pending, 1024)):
        named = iter(named_entries([name for name, st in chunk if st is None], storage_options))
        for name, st in chunk:
            yield (name, *st) if st is not None else next(named)  # listed names are canonical


def named_entries(
    names: Sequence[str], storage_options: dict[str, Any] | None = None
) -> list[tuple[str, int, int]]:
    """(stored name, size, mtime_ns) of inputs named one by one (no folder or list expansion):
    local paths as :func:`canonical_path` and ``file://`` URIs as the local path, other URIs in
    their canonical form, stat'ed ``uris.IO_THREADS`` at a time; -1, -1 when not found."""
    remote = [name for name in names if uris.is_uri(name)]
    stats = dict(zip(remote, uris.stat_many(remote, storage_options), strict=True))
    found = []
    for name in names:
        if uris.is_uri(name):
            st, name = stats[name], uris.canonical(name, storage_options)
        else:
            name = canonical_path(uris.local_path(name))
            st = file_stat(name)
        found.append((name, *st) if st else (name, -1, -1))
    return found


def canonical_path(path: str) -> str:
    """The form a path is stored in outputs: absolute, normalised, symlinks not resolved."""
    return os.path.normpath(os.path.abspath(path))


def file_stat(path: str) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns) of a path, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


__all__ = [
    "IMAGE_EXTENSIONS",
    "canonical_path",
    "entries",
    "expand",
    "file_stat",
    "is_image_name",
    "named_entries",
    "walk_folder",
]
