"""A local stand-in for the Hugging Face Hub, for tests that must run without internet.

``HubStub`` serves, from a thread on ``127.0.0.1``, exactly what ``huggingface_hub.hf_hub_download``
and ``snapshot_download`` (2.4.0) ask for:

* ``HEAD`` and ``GET`` on ``/{repo_id}/resolve/{revision}/{filename}``, answered with the headers
  the real Hub sends (``X-Repo-Commit``, ``ETag``, and for LFS files ``X-Linked-Etag``/
  ``X-Linked-Size`` carrying the sha256);
* ``GET /api/models/{repo_id}/revision/{revision}`` (``repo_info``: the commit ``sha`` and the
  ``siblings`` list) and ``GET /api/models/{repo_id}/tree/{revision}?recursive=...`` (the file
  listing with ``oid``, ``size`` and the ``lfs`` block, one page).

It never advertises Xet (no ``X-Xet-Hash``/``xetHash``), so the plain HTTP download path is used.
Errors use the Hub's ``X-Error-Code`` header so huggingface_hub raises its usual exceptions.
Every request is logged in ``requests``.

The ``hub_stub`` fixture starts one per test and points imgbeddings at it (endpoint, empty cache,
offline mode off).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_LFS_SUFFIXES = {".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".pt", ".pth", ".ckpt"}


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub uses as ETag for regular, non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStub:
    """A threaded HTTP server imitating the Hub's file and repo-listing routes. Use it as a context
    manager."""

    def __init__(self) -> None:
        # repo_id -> revision -> {"commit": sha, "files": {filename: (data, lfs)}}
        self._repos: dict[str, dict[str, dict]] = {}
        self._gated: set[str] = set()
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path), in arrival order
        self.request_headers: list[dict[str, str]] = []  # the headers of each logged request
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hub-stub", daemon=True
        )
        self._thread.start()

    def add_file(
        self, repo_id: str, filename: str, data: bytes, revision: str = "main", lfs: bool = True
    ) -> str:
        """Serve ``data`` as ``filename`` of ``repo_id`` at ``revision``; returns the new commit hash.

        Like a git push, every call makes a new commit for that revision (keeping its other files).
        ``lfs=True`` serves it as an LFS file (etag = sha256), ``lfs=False`` as a regular git file
        (etag = git blob sha1).
        """
        with self._lock:
            rev = self._repos.setdefault(repo_id, {}).setdefault(revision, {"commit": "", "files": {}})
            rev["files"][filename] = (bytes(data), lfs)
            seed = f"{repo_id}@{revision}:{rev['commit']}:{filename}:{hashlib.sha256(data).hexdigest()}"
            rev["commit"] = hashlib.sha1(seed.encode()).hexdigest()
            return rev["commit"]

    def add_folder(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        """Serve every file under ``folder`` (names relative to it) as one new commit of ``revision``.

        Weight files (the extensions the Hub's default ``.gitattributes`` sends to LFS) are served
        as LFS files, the rest (JSON, text) as regular git files, as on the Hub. Returns the commit.
        """
        files = {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}
        with self._lock:
            rev = self._repos.setdefault(repo_id, {}).setdefault(revision, {"commit": "", "files": {}})
            seed = f"{repo_id}@{revision}:{rev['commit']}"
            for name, f in files.items():
                data = f.read_bytes()
                rev["files"][name] = (data, f.suffix in _LFS_SUFFIXES)
                seed += f":{name}:{hashlib.sha256(data).hexdigest()}"
            rev["commit"] = hashlib.sha1(seed.encode()).hexdigest()
            return rev["commit"]

    def gate(self, repo_id: str) -> None:
        """Make ``repo_id`` answer 403 ``GatedRepo``, as the Hub does for an unauthorised user."""
        self._gated.add(repo_id)

    def requests_for(self, filename: str) -> list[tuple[str, str]]:
        """The logged requests whose path ends with ``filename``."""
        return [r for r in self.requests if unquote(r[1]).endswith("/" + filename)]

    def stop(self) -> None:
        """Stop serving and close the port (later connections are refused)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> HubStub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- request handling (called from the server threads) --------------------------------

    def _answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a request path."""
        url = urlsplit(path)
        route = url.path.lstrip("/")
        if route.startswith("api/models/"):
            for marker, answer in (("/revision/", self._repo_info), ("/tree/", self._tree)):
                repo_id, sep, revision = route.removeprefix("api/models/").partition(marker)
                if sep:
                    return answer(unquote(repo_id), unquote(revision), parse_qs(url.query))
            return _error(404, "RepoNotFound", "Repository not found")
        repo_id, sep, rest = route.partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if not sep:
            return _error(404, "RepoNotFound", "Repository not found")
        return self._resolve(unquote(repo_id), unquote(revision), unquote(filename))

    def _revision(self, repo_id: str, revision: str) -> tuple[dict | None, tuple | None]:
        """The revision entry (by name or commit), or None and the error to answer."""
        with self._lock:
            revisions = self._repos.get(repo_id)
            if revisions is None:
                return None, _error(404, "RepoNotFound", "Repository not found")
            if repo_id in self._gated:
                return None, _error(403, "GatedRepo", "Access to this model is restricted")
            rev = revisions.get(revision) or next(
                (r for r in revisions.values() if r["commit"] == revision), None
            )
            if rev is None:
                return None, _error(404, "RevisionNotFound", "Invalid rev id")
            return {"commit": rev["commit"], "files": dict(rev["files"])}, None

    def _repo_info(self, repo_id: str, revision: str, query: dict) -> tuple[int, dict[str, str], bytes]:
        rev, error = self._revision(repo_id, revision)
        if rev is None:
            return error
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": rev["commit"],
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(rev["files"])],
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()

    def _tree(self, repo_id: str, revision: str, query: dict) -> tuple[int, dict[str, str], bytes]:
        rev, error = self._revision(repo_id, revision)
        if rev is None:
            return error
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for name, (data, lfs) in sorted(rev["files"].items()):
            parents = name.split("/")[:-1]
            if parents and not recursive:
                folders.add(parents[0])
                continue
            if recursive:
                folders.update("/".join(parents[: i + 1]) for i in range(len(parents)))
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
            if lfs:
                pointer = _lfs_pointer(data)
                entry.update(
                    oid=git_blob_sha1(pointer),
                    lfs={
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": len(pointer),
                    },
                )
            entries.append(entry)
        listing = [{"type": "directory", "path": f, "size": 0, "oid": "0" * 40} for f in sorted(folders)]
        return 200, {"Content-Type": "application/json"}, json.dumps(listing + entries).encode()

    def _resolve(self, repo_id: str, revision: str, filename: str) -> tuple[int, dict[str, str], bytes]:
        rev, error = self._revision(repo_id, revision)
        if rev is None:
            return error
        commit = rev["commit"]
        if filename not in rev["files"]:
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        data, lfs = rev["files"][filename]
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if lfs:
            headers.update(
                {
                    "ETag": f'"{git_blob_sha1(_lfs_pointer(data))}"',  # the pointer's id, as on the Hub
                    "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "X-Linked-Size": str(len(data)),
                }
            )
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        return 200, headers, data


def _lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file the repo's git tree holds for an LFS file."""
    sha256 = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()


def _error(status: int, code: str, message: str, extra: dict[str, str] | None = None):
    body = f'{{"error": "{message}"}}'.encode()
    headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
    return status, {**headers, **(extra or {})}, body


def _make_handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

        def _answer(self, with_body: bool) -> None:
            stub.request_headers.append(dict(self.headers))
            stub.requests.append((self.command, self.path))
            status, headers, body = stub._answer(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def hub_stub(tmp_path, monkeypatch) -> Iterator[HubStub]:
    """A running ``HubStub`` that imgbeddings uses by default for this test.

    Sets ``IMGBEDDINGS_HF_ENDPOINT`` to the stub and ``IMGBEDDINGS_CACHE`` to a fresh folder, turns
    offline mode off (environment variables and huggingface_hub's import-time flag) and uses the
    usual symlinked cache layout.
    """
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "IMGBEDDINGS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at its import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_SYMLINKS", False)
    with HubStub() as stub:
        monkeypatch.setenv("IMGBEDDINGS_HF_ENDPOINT", stub.endpoint)
        monkeypatch.setenv("IMGBEDDINGS_CACHE", str(tmp_path / "hf-cache"))
        yield stub
