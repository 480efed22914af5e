"""Downloads from the Hugging Face Hub: the only module that talks to ``huggingface_hub``.

Two entry points: :func:`download_model_file` (one file, e.g. an ONNX model or its card) and
:func:`download_checkpoint` (a repo snapshot filtered by patterns, for the exporter). Both honour
``IMGBEDDINGS_CACHE``, the endpoint settings and offline mode (``HF_HUB_OFFLINE``, read when
called), and every failure to obtain a file becomes :class:`~imgbeddings.errors.ModelUnavailable`
(with ``reason``, ``repo_id``, ``filename``, ``revision`` and a download ``url``).

Every file handed out (each file of a snapshot included) is verified first, never silently used
when bad:

* against its own cache entry: huggingface_hub stores a file as ``blobs/<etag>`` with
  ``snapshots/<commit>/<filename>`` a symlink to it, and the etag is the file's sha256 (LFS files)
  or its git blob sha1 (regular files). On a cache without symlinks (copies) the etag is recorded
  in ``<repo folder>/.imgbeddings-etags/<commit>/<filename>`` when imgbeddings downloads the file,
  or, for a file found already there, its sha256 on first use;
* against the ``sha256`` the caller expects (from a model card), when given.

A mismatch raises :class:`~imgbeddings.errors.ModelCorrupted`. Successful hashes are memoised per
process, keyed by (real path, size, mtime), so loading the same file again does not re-hash it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import huggingface_hub
from huggingface_hub import errors as hf_errors

from . import settings
from .errors import ModelCorrupted, ModelUnavailable

try:  # the HTTP client under huggingface_hub: httpx2 since 2.0, httpx in 1.x
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError as _TransportError

__all__ = ["cached_model_file", "download_checkpoint", "download_model_file", "sha256_file", "verify_file"]

_CHUNK = 1 << 20
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ETAG_DIR = ".imgbeddings-etags"

_digests: dict[tuple[str, int, int], dict[str, str]] = {}
_digests_lock = threading.Lock()


def _library_version() -> str | None:
    try:
        from imgbeddings import __version__

        return str(__version__)
    except (ImportError, AttributeError):
        pass
    try:
        from importlib.metadata import version

        return version("imgbeddings")
    except Exception:  # PackageNotFoundError, or a broken install
        return None


def download_model_file(
    repo_id: str,
    filename: str,
    *,
    revision: str = "main",
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> Path:
    """Return the local path of ``filename`` from Hub repo ``repo_id``, downloading it if needed.

    Args:
        repo_id: the Hub repository, e.g. ``"minimaxir/imgbeddings"``.
        filename: the file inside it.
        revision: branch, tag or commit to download from.
        sha256: expected sha256 of the file (e.g. from a model card); checked when given.
        cache_dir: cache folder; default ``IMGBEDDINGS_CACHE``, else huggingface_hub's cache.
        endpoint: Hub URL; default ``IMGBEDDINGS_HF_ENDPOINT`` / ``HF_ENDPOINT`` read now.
        offline: use the cache only, with no network call; default ``HF_HUB_OFFLINE``.
        force_download: download again even when the file is cached.

    Raises:
        ModelUnavailable: offline and not cached, hub unreachable, repo/revision/file not found,
            or access denied. It is also a ``ConnectionError``.
        ModelCorrupted: the file does not match its cache etag or ``sha256``.
    """
    offline = settings.is_offline() if offline is None else offline
    endpoint = endpoint or settings.hub_endpoint()
    cache_dir = cache_dir if cache_dir is not None else settings.cache_dir()
    where = dict(repo_id=repo_id, filename=filename, revision=revision, endpoint=endpoint)
    if offline and force_download:
        raise _unavailable(hf_errors.OfflineModeIsEnabled("no network"), True, True, **where)
    common = dict(endpoint=endpoint, library_name="imgbeddings", library_version=_library_version())
    cached = cached_model_file(repo_id, filename, revision, cache_dir)
    etag = None
    try:
        if not offline and (force_download or cached is None):
            # One HEAD without retries first: huggingface_hub would otherwise retry an unreachable
            # hub for ~25 s before failing. It also tells us the etag for a copy-based cache.
            url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
            etag = huggingface_hub.get_hf_file_metadata(url, **common).etag
            if force_download and cached is not None and not cached.is_symlink():
                cached.unlink()  # huggingface_hub would not replace a copied snapshot file
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            force_download=force_download,
            **common,
        )
    except (OSError, ValueError, _TransportError, hf_errors.EntryNotFoundError) as exc:
        raise _unavailable(exc, offline, force_download, **where) from exc
    path = Path(path)
    if etag and not path.is_symlink():  # copy-based cache: remember the etag (best effort)
        with contextlib.suppress(OSError):
            _etag_record(path, filename).parent.mkdir(parents=True, exist_ok=True)
            _etag_record(path, filename).write_text(etag)
    verify_file(path, sha256=sha256, filename=filename)
    return path


def cached_model_file(
    repo_id: str, filename: str, revision: str = "main", cache_dir: str | Path | None = None
) -> Path | None:
    """The cached copy of ``filename`` at ``revision``, or None. No network call; never raises."""
    try:
        if cache_dir is None:
            cache_dir = settings.cache_dir()
        found = huggingface_hub.try_to_load_from_cache(
            repo_id, filename, cache_dir=cache_dir, revision=revision
        )
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def download_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    endpoint: str | None = None,
) -> Path:
    """Return the local folder of a snapshot of Hub repo ``repo_id``, downloading what is missing.

    Only the files matching ``allow_patterns`` (fnmatch patterns, e.g. ``"*.safetensors"``) are
    fetched. The folder is huggingface_hub's ``snapshots/<commit>``, so its name is the commit
    the revision resolved to. Every file in it is verified against its cache etag before the
    folder is handed out.

    Args:
        repo_id: the Hub repository, e.g. ``"openai/clip-vit-base-patch32"``.
        revision: branch, tag or commit (default ``"main"``).
        allow_patterns: which files to fetch (default: all).
        cache_dir: cache folder; default ``IMGBEDDINGS_CACHE``, else huggingface_hub's cache.
        offline: use the cache only, with no network call; default ``HF_HUB_OFFLINE``.
        endpoint: Hub URL; default ``IMGBEDDINGS_HF_ENDPOINT`` / ``HF_ENDPOINT`` read now.

    Raises:
        ModelUnavailable: offline (or the hub unreachable) and not cached, repo or revision not
            found, or access denied; its ``filename`` is ``""`` and its ``url`` the repo's file
            listing at ``revision``. It is also a ``ConnectionError``.
        ModelCorrupted: a cached file does not match its cache etag.
    """
    revision = revision or "main"
    offline = settings.is_offline() if offline is None else offline
    endpoint = endpoint or settings.hub_endpoint()
    cache_dir = cache_dir if cache_dir is not None else settings.cache_dir()
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            endpoint=endpoint,
            library_name="imgbeddings",
            library_version=_library_version(),
        )
    except (OSError, ValueError, _TransportError, hf_errors.HfHubHTTPError) as exc:
        raise _unavailable(
            exc, offline, False, repo_id=repo_id, filename="", revision=revision, endpoint=endpoint
        ) from exc
    folder = Path(folder)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            verify_file(file, filename=file.relative_to(folder).as_posix())
    return folder


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (not memoised)."""
    return _hash_file(Path(path), ("sha256",))["sha256"]


def verify_file(path: str | Path, *, sha256: str | None = None, filename: str | None = None) -> None:
    """Check a cached file against its cache etag (see module docstring) and ``sha256`` if given.

    ``filename`` is the file's name inside its repo (needed for nested names on a copy-based
    cache). Raises ModelCorrupted on mismatch.
    """
    path = Path(path)
    checks: list[tuple[str, str]] = []
    etag = _cache_etag(path, filename or path.name)
    if etag and _HEX64.fullmatch(etag):
        checks.append(("sha256", etag))
    elif etag and _HEX40.fullmatch(etag):
        checks.append(("git-sha1", etag))
    if sha256:
        checks.append(("sha256", sha256.strip().lower().removeprefix("sha256:")))
    digests = _memo_digests(path, {algorithm for algorithm, _ in checks})
    for algorithm, expected in checks:
        if digests[algorithm] != expected:
            raise ModelCorrupted(str(path), expected, digests[algorithm], algorithm)


# --- integrity helpers -----------------------------------------------------------------


def _cache_etag(path: Path, filename: str) -> str | None:
    """The etag under which huggingface_hub cached ``path``, or None if it is not a cache entry."""
    try:
        if path.is_symlink():  # snapshots/<commit>/<filename> -> ../../blobs/<etag>
            target = Path(os.readlink(path))
            return target.name if target.parent.name == "blobs" else None
        depth = len(Path(filename).parts)
        if path.parents[depth].name != "snapshots" or "--" not in path.parents[depth + 1].name:
            return None  # not a file inside a huggingface_hub cache
        record = _etag_record(path, filename)
        if record.is_file():
            return record.read_text().strip()
        etag = _memo_digests(path, {"sha256"})["sha256"]  # first use of a copied file: trust it
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(etag)
        return etag
    except (OSError, IndexError):
        return None


def _etag_record(path: Path, filename: str) -> Path:
    """``<repo folder>/.imgbeddings-etags/<commit>/<filename>`` for ``snapshots/<commit>/<filename>``."""
    depth = len(Path(filename).parts)
    commit_dir = path.parents[depth - 1]
    return commit_dir.parent.parent / _ETAG_DIR / commit_dir.name / filename


def _memo_digests(path: Path, algorithms: set[str]) -> dict[str, str]:
    """Digests of ``path`` for ``algorithms``, memoised by (real path, size, mtime_ns)."""
    if not algorithms:
        return {}
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _digests_lock:
        known = dict(_digests.get(key, {}))
    missing = tuple(sorted(algorithms - known.keys()))
    if missing:
        known.update(_hash_file(Path(real), missing, size=st.st_size))
        with _digests_lock:
            _digests[key] = known
    return known


def _hash_file(path: Path, algorithms: tuple[str, ...], size: int | None = None) -> dict[str, str]:
    """One pass over ``path`` computing ``sha256`` and/or ``git-sha1`` (sha1 of ``blob <len>\\0`` + data)."""
    hashers = {}
    for algorithm in algorithms:
        if algorithm == "sha256":
            hashers[algorithm] = hashlib.sha256()
        else:
            size = path.stat().st_size if size is None else size
            hashers[algorithm] = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}


# --- error messages --------------------------------------------------------------------


def _unavailable(
    exc: BaseException,
    offline: bool,
    force_download: bool,
    *,
    repo_id: str,
    filename: str,
    revision: str,
    endpoint: str | None,
) -> ModelUnavailable:
    """A ModelUnavailable whose ``reason`` explains ``exc`` and says what to do about it.

    ``filename`` is ``""`` for a whole snapshot (:func:`download_checkpoint`).
    """
    hub = (endpoint or huggingface_hub.constants.ENDPOINT).rstrip("/")
    what = "file" if filename else "checkpoint"
    chain, cur = [], exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    status = next((e.response.status_code for e in chain if isinstance(e, hf_errors.HfHubHTTPError)), None)

    def has(*types: type[BaseException] | None) -> bool:
        known = tuple(t for t in types if t is not None)
        return any(isinstance(e, known) for e in chain)

    if has(hf_errors.GatedRepoError) or status in (401, 403):
        reason = f"access denied by {hub} (HTTP {status}: gated or private repository)"
        hint = "Accept the repo's conditions on the Hub and log in (`hf auth login` or HF_TOKEN)."
    elif has(hf_errors.RepositoryNotFoundError):
        reason, hint = f"repository not found on {hub}", "Check the repo id (and HF_ENDPOINT)."
    elif has(hf_errors.RevisionNotFoundError):
        reason, hint = "revision not found in the repository", "Check the revision (branch, tag or commit)."
    elif has(hf_errors.RemoteEntryNotFoundError):
        reason, hint = "file not found in the repository", "Check the file name and revision."
    elif has(getattr(hf_errors, "IncompleteSnapshotError", None)):
        reason = f"the cached copy of the {what} is incomplete and the hub cannot be used to complete it"
        hint = "Run once with network access (HF_HUB_OFFLINE unset) to finish the download."
    elif offline or has(hf_errors.OfflineModeIsEnabled):
        reason = "offline mode is on (HF_HUB_OFFLINE or IMGBEDDINGS_OFFLINE) and " + (
            "force_download=True needs the network" if force_download else f"the {what} is not in the cache"
        )
        hint = "Unset HF_HUB_OFFLINE and run once with network access to download it."
    elif has(hf_errors.FileMetadataError):
        reason = f"{hub} did not answer like a Hugging Face Hub (no X-Repo-Commit or ETag header)"
        hint = "Check HF_ENDPOINT and your proxy settings."
    elif has(_TransportError, ConnectionError, TimeoutError):
        reason = f"the hub at {hub} is unreachable ({chain[-1]})"
        hint = "Check your connection or proxy, or set HF_ENDPOINT to a reachable mirror."
    elif status is not None:
        reason, hint = f"{hub} answered HTTP {status}", "Check HF_ENDPOINT, or try again later."
    else:
        reason, hint = f"{type(exc).__name__}: {exc}".split("\n", 1)[0].rstrip(". "), ""
    reason = f"{reason}. {hint.rstrip('.')}" if hint else reason
    url = _download_url(repo_id, filename, revision, hub)
    return ModelUnavailable(reason, repo_id, filename, revision, url)


def _download_url(repo_id: str, filename: str, revision: str, endpoint: str) -> str:
    """Where to get ``filename`` by hand (its resolve URL), or the repo's file listing for ``""``."""
    if not filename:
        return f"{endpoint}/{repo_id}/tree/{quote(revision, safe='')}"
    try:
        return huggingface_hub.hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    except Exception:  # a malformed id: no URL is better than a second error
        return ""
