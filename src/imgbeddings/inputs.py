"""Which files a job covers: paths, folders (optionally recursive), ``.txt`` lists, stdin.

Listing is lazy (a generator), so a million-file folder or list is never held in memory as a
whole by this module.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TextIO

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


def read_list(stream: TextIO) -> Iterator[str]:
    """Paths from a text stream, one per line; blank lines and ``#`` comments are skipped."""
    for line in stream:
        path = line.strip()
        if path and not path.startswith("#"):
            yield path


def expand(paths: Iterable[str], *, recursive: bool = False, stdin: TextIO | None = None) -> Iterator[str]:
    """Expand command-line ``paths`` into the files to embed, in order.

    - a folder: its image files (``recursive``: and its sub-folders');
    - ``NAME.txt``: the paths listed in it, one per line (relative to the current directory);
    - ``-``: paths read from standard input, one per line;
    - anything else: taken as it is (a missing file becomes a failure of the job, not an abort).
    """
    for raw in paths:
        if raw == "-":
            yield from read_list(stdin or sys.stdin)
        elif os.path.isdir(raw):
            yield from walk_folder(raw, recursive)
        elif raw.lower().endswith(".txt") and os.path.isfile(raw):
            with open(raw, encoding="utf-8") as fh:
                yield from read_list(fh)
        else:
            yield raw


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


__all__ = ["IMAGE_EXTENSIONS", "canonical_path", "expand", "file_stat", "is_image_name", "walk_folder"]
