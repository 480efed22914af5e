"""imgbeddings.hub against a local Hub stand-in, with the real huggingface_hub code (no mocks)."""

# The fixture is imported explicitly until tests/conftest.py registers it; test arguments named
# after it then look like redefinitions to ruff (F811).

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from hfstub import git_blob_sha1
from imgbeddings import hub
from imgbeddings.errors import ModelCorrupted, ModelUnavailable

REPO = "someone/tiny-model"
DATA = bytes(range(256)) * 40  # 10 KiB
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()


def closed_endpoint() -> str:
    """An endpoint on a local port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def tamper(path: Path, data: bytes) -> None:
    """Overwrite a cached blob in place, moving its mtime so no memoised hash can hide the change."""
    real = Path(os.path.realpath(path))
    before = real.stat().st_mtime_ns
    real.chmod(0o644)
    real.write_bytes(data)
    os.utime(real, ns=(before, before + 1_000_000_000))


def test_first_download(hub_stub):
    commit = hub_stub.add_file(REPO, "model.onnx", DATA)
    path = hub.download_model_file(REPO, "model.onnx")
    assert path.read_bytes() == DATA
    assert ("GET", f"/{REPO}/resolve/main/model.onnx") in hub_stub.requests
    assert path.is_relative_to(os.environ["IMGBEDDINGS_CACHE"])  # IMGBEDDINGS_CACHE is honoured
    assert path.parent.name == commit and Path(os.readlink(path)).name == DATA_SHA256  # blobs/<sha256>
    assert all("imgbeddings/" in h.get("user-agent", "") for h in hub_stub.request_headers)
    assert hub.cached_model_file(REPO, "model.onnx") == path


def test_cached_file_is_reused_offline_without_network(hub_stub, monkeypatch):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    first = hub.download_model_file(REPO, "model.onnx")
    seen = len(hub_stub.requests)

    assert hub.download_model_file(REPO, "model.onnx", offline=True) == first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: still honoured
    assert hub.download_model_file(REPO, "model.onnx") == first
    assert len(hub_stub.requests) == seen

    hub_stub.stop()
    assert hub.download_model_file(REPO, "model.onnx") == first
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online but the hub is gone: the cache is used
    assert hub.download_model_file(REPO, "model.onnx", offline=False).read_bytes() == DATA
    assert len(hub_stub.requests) == seen


def test_unreachable_hub_fails_fast_with_a_clear_error(hub_stub):
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as info:
        hub.download_model_file(REPO, "model.onnx", endpoint=closed_endpoint())
    assert time.monotonic() - start < 10
    err = info.value
    assert isinstance(err, ConnectionError) and err.__cause__ is not None
    assert (err.repo_id, err.filename, err.revision) == (REPO, "model.onnx", "main")
    message = str(err)
    for part in (REPO, "model.onnx", "unreachable", "HF_ENDPOINT", 'model_path="/path/to/'):
        assert part in message
    assert hub_stub.requests == []


@pytest.mark.parametrize("env", [False, True])
def test_offline_and_not_cached(hub_stub, monkeypatch, env):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    if env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="offline mode") as info:
        hub.download_model_file(REPO, "model.onnx", offline=None if env else True)
    assert "HF_HUB_OFFLINE" in str(info.value) and "model.onnx" in str(info.value)
    assert hub_stub.requests == []


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "reason"),
    [
        (REPO, "missing.onnx", "main", "file not found"),
        ("nobody/unknown", "model.onnx", "main", "repository not found"),
        (REPO, "model.onnx", "v9", "revision not found"),
    ],
)
def test_not_found(hub_stub, repo_id, filename, revision, reason):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    with pytest.raises(ModelUnavailable, match=reason) as info:
        hub.download_model_file(repo_id, filename, revision=revision)
    message = str(info.value)
    assert repo_id in message and repr(filename) in message and repr(revision) in message
    assert info.value.filename == filename and "/path/to/" in message


def test_gated_repo_is_access_denied(hub_stub):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    hub_stub.gate(REPO)
    with pytest.raises(ModelUnavailable, match="access denied") as info:
        hub.download_model_file(REPO, "model.onnx")
    assert "HF_TOKEN" in str(info.value)


@pytest.mark.parametrize("lfs", [True, False])
def test_corrupted_cache_is_detected_offline(hub_stub, lfs):
    hub_stub.add_file(REPO, "model.onnx", DATA, lfs=lfs)
    path = hub.download_model_file(REPO, "model.onnx")
    algorithm, digest = ("sha256", hashlib.sha256) if lfs else ("git-sha1", None)
    expected = DATA_SHA256 if lfs else git_blob_sha1(DATA)
    assert Path(os.readlink(path)).name == expected

    for bad in (DATA[:-100], b"\xff" + DATA[1:]):  # truncated, then altered (same size)
        tamper(path, bad)
        with pytest.raises(ModelCorrupted) as info:
            hub.download_model_file(REPO, "model.onnx", offline=True)
        err = info.value
        actual = digest(bad).hexdigest() if digest else git_blob_sha1(bad)
        assert (err.expected, err.actual, err.algorithm) == (expected, actual, algorithm)
        assert err.path == str(path) and "force_download=True" in str(err)

    repaired = hub.download_model_file(REPO, "model.onnx", force_download=True)
    assert repaired.read_bytes() == DATA


def test_copy_based_cache_without_symlinks(hub_stub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_SYMLINKS", True)
    hub_stub.add_file(REPO, "sub/model.onnx", DATA)
    path = hub.download_model_file(REPO, "sub/model.onnx")
    assert not path.is_symlink() and path.read_bytes() == DATA
    assert hub.download_model_file(REPO, "sub/model.onnx", offline=True) == path

    tamper(path, DATA[:10])
    with pytest.raises(ModelCorrupted) as info:
        hub.download_model_file(REPO, "sub/model.onnx", offline=True)
    assert info.value.expected == DATA_SHA256
    assert hub.download_model_file(REPO, "sub/model.onnx", force_download=True).read_bytes() == DATA


def test_card_checksum(hub_stub, tmp_path):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    assert hub.download_model_file(REPO, "model.onnx", sha256=DATA_SHA256.upper()).read_bytes() == DATA
    wrong = "0" * 64
    with pytest.raises(ModelCorrupted) as info:
        hub.download_model_file(REPO, "model.onnx", sha256=wrong, offline=True)
    assert (info.value.expected, info.value.actual) == (wrong, DATA_SHA256)

    local = tmp_path / "model.onnx"  # a plain local file: only the given checksum applies
    local.write_bytes(DATA)
    hub.verify_file(local, sha256=DATA_SHA256)
    with pytest.raises(ModelCorrupted):
        hub.verify_file(local, sha256=wrong)
    assert hub.sha256_file(local) == DATA_SHA256


def test_verified_files_are_not_rehashed(hub_stub, monkeypatch):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    hub.download_model_file(REPO, "model.onnx")
    calls = []
    real_hash = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda *a, **k: calls.append(a) or real_hash(*a, **k))
    for _ in range(3):
        hub.download_model_file(REPO, "model.onnx", offline=True, sha256=DATA_SHA256)
    assert calls == []


def test_cached_model_file_never_raises(hub_stub):
    assert hub.cached_model_file(REPO, "model.onnx") is None
    assert hub.cached_model_file("not a//valid id", "../x") is None


def test_errors_pickle(hub_stub):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    raised = []
    for kwargs in ({"revision": "v1", "offline": True}, {"sha256": "0" * 64}):
        with pytest.raises((ModelUnavailable, ModelCorrupted)) as info:
            hub.download_model_file(REPO, "model.onnx", **kwargs)
        raised.append(info.value)
    assert [type(e) for e in raised] == [ModelUnavailable, ModelCorrupted]
    for err in raised:
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err) and copy.__dict__ == err.__dict__
    assert raised[0].revision == "v1" and raised[1].expected == "0" * 64


# --- what a ModelUnavailable says ------------------------------------------------------


def test_offline_error_names_the_file_asked_for_and_its_url():
    """Offline without a cache (conftest's default): the patch16 model's error is about patch16."""
    from imgbeddings import imgbeddings

    with pytest.raises(ModelUnavailable) as info:
        imgbeddings(patch_size=16)
    err = info.value
    assert (err.repo_id, err.filename) == ("minimaxir/imgbeddings", "patch16_v1.onnx")
    assert err.url == huggingface_hub.hf_hub_url(err.repo_id, err.filename, revision=err.revision)
    assert err.url.endswith("/minimaxir/imgbeddings/resolve/main/patch16_v1.onnx")
    assert "offline mode" in err.reason and "Unset HF_HUB_OFFLINE" in err.reason
    message = str(err)
    assert message.startswith(
        "cannot get model file 'patch16_v1.onnx' from Hugging Face repo 'minimaxir/imgbeddings' "
        f"(revision 'main'): {err.reason}. To use a local copy, download {err.url} and pass its path: "
    )
    assert 'Embedder("/path/to/patch16_v1.onnx")' in message
    assert 'imgbeddings(model_path="/path/to/patch16_v1.onnx")' in message
    assert "patch32" not in message


def test_error_url_follows_the_endpoint_and_revision(hub_stub):
    hub_stub.add_file(REPO, "model.onnx", DATA)
    with pytest.raises(ModelUnavailable) as info:
        hub.download_model_file(REPO, "sub dir/model.onnx", revision="v1")
    err = info.value
    assert err.url == f"{hub_stub.endpoint}/{REPO}/resolve/v1/sub%20dir/model.onnx"
    assert 'Embedder("/path/to/model.onnx")' in str(err)  # the file's own name, without folders


def test_unavailable_error_round_trips_through_pickle():
    err = ModelUnavailable("the hub is unreachable. Check it", REPO, "model.onnx", "v2", "http://x/y")
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, ConnectionError) and copy.args == err.args and str(copy) == str(err)
    assert (copy.reason, copy.repo_id, copy.filename, copy.revision, copy.url) == (
        "the hub is unreachable. Check it", REPO, "model.onnx", "v2", "http://x/y"
    )  # fmt: skip


# --- whole checkpoints (the exporter) ----------------------------------------------------

CHECKPOINT = {
    "config.json": b'{"model_type": "clip"}',
    "preprocessor_config.json": b'{"size": 224}',
    "model.safetensors": DATA,
    "vocab.json": b"{}",
    "sub/extra.safetensors": DATA[:100],
}
WANTED = ["config.json", "preprocessor_config.json", "*.safetensors"]


def serve_checkpoint(stub) -> str:
    commit = ""
    for name, data in CHECKPOINT.items():
        commit = stub.add_file(REPO, name, data, lfs=name.endswith(".safetensors"))
    return commit


def test_checkpoint_snapshot(hub_stub):
    commit = serve_checkpoint(hub_stub)
    folder = hub.download_checkpoint(REPO, allow_patterns=WANTED)
    assert folder.name == commit and folder.is_relative_to(os.environ["IMGBEDDINGS_CACHE"])
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == ["config.json", "model.safetensors", "preprocessor_config.json", "sub/extra.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == DATA
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub_stub.requests
    assert hub_stub.requests_for("vocab.json") == []
    assert all("imgbeddings/" in h.get("user-agent", "") for h in hub_stub.request_headers)


def test_checkpoint_offline_with_cache_makes_no_request(hub_stub, monkeypatch):
    serve_checkpoint(hub_stub)
    first = hub.download_checkpoint(REPO, allow_patterns=WANTED)
    seen = len(hub_stub.requests)
    hub_stub.stop()
    assert hub.download_checkpoint(REPO, allow_patterns=WANTED, offline=True) == first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read when called
    assert hub.download_checkpoint(REPO, allow_patterns=WANTED) == first
    assert hub.download_checkpoint(REPO, revision=first.name, allow_patterns=WANTED) == first
    with pytest.raises(ModelUnavailable, match="cached copy of the checkpoint is incomplete"):
        hub.download_checkpoint(REPO)  # vocab.json was never fetched
    assert len(hub_stub.requests) == seen


def test_checkpoint_offline_without_cache(hub_stub):
    serve_checkpoint(hub_stub)
    with pytest.raises(ModelUnavailable, match="offline mode") as info:
        hub.download_checkpoint(REPO, allow_patterns=WANTED, offline=True)
    err = info.value
    assert (err.repo_id, err.filename, err.revision) == (REPO, "", "main")
    assert "the checkpoint is not in the cache" in err.reason
    assert err.url == f"{hub_stub.endpoint}/{REPO}/tree/main" and err.url in str(err)
    assert "pass the folder's path" in str(err)
    assert hub_stub.requests == []


def test_checkpoint_from_an_unreachable_hub(hub_stub):
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="unreachable") as info:
        hub.download_checkpoint(REPO, endpoint=closed_endpoint())
    assert time.monotonic() - start < 10 and info.value.__cause__ is not None
    assert "HF_ENDPOINT" in info.value.reason


@pytest.mark.parametrize(
    ("repo_id", "revision", "reason"),
    [("nobody/unknown", "main", "repository not found"), (REPO, "v9", "revision not found")],
)
def test_checkpoint_not_found(hub_stub, repo_id, revision, reason):
    serve_checkpoint(hub_stub)
    with pytest.raises(ModelUnavailable, match=reason) as info:
        hub.download_checkpoint(repo_id, revision=revision)
    assert info.value.url.endswith(f"/{repo_id}/tree/{revision}")


def test_checkpoint_files_are_verified(hub_stub):
    serve_checkpoint(hub_stub)
    folder = hub.download_checkpoint(REPO, allow_patterns=WANTED)
    tamper(folder / "sub" / "extra.safetensors", b"\x00" * 100)
    with pytest.raises(ModelCorrupted) as info:
        hub.download_checkpoint(REPO, allow_patterns=WANTED, offline=True)
    assert info.value.path == str(folder / "sub" / "extra.safetensors")
