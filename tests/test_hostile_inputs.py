"""Untrusted folders, cards and names: nothing outside a model's folder is read, a built-in name
always means the built-in model, and every refusal is one line that says what to do."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

from conftest import MODELS
from imgbeddings import Embedder
from imgbeddings.errors import CardError, ModelNotFound, ModelUnavailable
from imgbeddings.models.cards import ModelCard
from imgbeddings.models.registry import builtin_cards, join_inside, locate

TINY = "tiny_b32_legacy"


def tiny_model_folder(folder: Path, *, filename: str | None = None, onnx_at: Path | None = None) -> Path:
    """``folder`` holding the tiny test model and its card (``filename`` rewritten if given; the
    ONNX file written to ``onnx_at`` instead of beside the card if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    card = json.loads((MODELS / f"{TINY}.card.json").read_text())
    if filename is not None:
        card["file"]["filename"] = filename
    (folder / f"{TINY}.card.json").write_text(json.dumps(card))
    target = onnx_at or folder / card["file"]["filename"]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / f"{TINY}.onnx", target)
    return folder


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, message
    return message


# --- a local folder or file cannot shadow a built-in model ----------------------------------


@pytest.mark.parametrize("name", ["patch32_v1", "patch32", "PATCH32_V1", Path("patch32_v1")])
def test_builtin_name_means_the_builtin_even_with_a_local_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    tiny_model_folder(tmp_path / "patch32_v1")
    (tmp_path / "patch32").write_bytes((MODELS / f"{TINY}.onnx").read_bytes())  # a file too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelUnavailable) as info:  # offline in tests: the built-in is not cached
            Embedder(name)
    if os.path.lexists(name):  # not "PATCH32_V1" on a case-sensitive file system
        (warning,) = caught
        assert re.search(r"built-in model patch32_v1.*pass it as a path: '\./", str(warning.message))
    err = info.value
    assert (err.repo_id, err.filename) == ("minimaxir/imgbeddings", "patch32_v1.onnx")
    assert "minimaxir/imgbeddings" in one_line(err)


def test_local_folder_named_like_a_builtin_is_used_when_written_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model_folder(tmp_path / "patch32_v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spelling in ("./patch32_v1", str(tmp_path / "patch32_v1"), (tmp_path / "patch32_v1").resolve()):
            emb = Embedder(spelling)
            assert emb.card.name == TINY and emb.model_path == Path(spelling) / f"{TINY}.onnx"


def test_builtin_name_without_a_local_namesake_gives_no_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelUnavailable, match="minimaxir/imgbeddings"):
            locate("patch16")


def test_plain_names_that_are_not_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model_folder(tmp_path / "mymodel_dir")
    assert locate("mymodel_dir").card.name == TINY  # an existing local folder, not a built-in name
    shutil.copy(MODELS / f"{TINY}.onnx", tmp_path / "mymodel.onnx")
    assert locate("mymodel.onnx").card is None  # a bare file: its card is inferred later
    with pytest.raises(ModelNotFound) as info:
        locate("no_such_dir")
    assert "patch32_v1" in one_line(info.value) and "local .onnx file" in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["missing.onnx", "./patch32_v1", "../elsewhere", "~/nowhere/model", "models/x.onnx", "x.card.json"],
)
def test_missing_paths_are_not_taken_for_hub_repos(tmp_path, monkeypatch, name):
    """Names written as paths are never sent to the Hub: a missing one says 'check the path'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFound) as info:
        locate(name)
    message = one_line(info.value)
    assert "does not exist" in message and "check the path" in message


def test_local_path_wins_over_a_repo_id_of_the_same_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model_folder(tmp_path / "someone" / "model")
    assert locate("someone/model").card.name == TINY
    with pytest.raises(ModelUnavailable, match="someone/model"):
        locate("hf-hub:someone/model")  # the prefix forces the Hub (offline here)


# --- a card's file name cannot leave its folder -------------------------------------------


@pytest.mark.parametrize(
    "filename", ["../outside.onnx", "sub/../../outside.onnx", "ABSOLUTE", "../../../../../../etc/passwd"]
)
def test_card_filename_cannot_leave_its_folder(tmp_path, filename):
    outside = tmp_path / "outside.onnx"
    shutil.copy(MODELS / f"{TINY}.onnx", outside)  # a real model, which must still not be used
    if filename == "ABSOLUTE":
        filename = str(outside)
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    card = json.loads((MODELS / f"{TINY}.card.json").read_text())
    card["file"]["filename"] = filename
    (folder / f"{TINY}.card.json").write_text(json.dumps(card))
    for target in (folder, folder / f"{TINY}.card.json"):
        with pytest.raises(CardError) as info:
            locate(target)
        message = one_line(info.value)
        assert "file.filename" in message and "plain relative path" in message
        assert str(folder / f"{TINY}.card.json") in message
    with pytest.raises(CardError, match=r"file\.filename"):
        Embedder(folder)


def test_join_inside_refuses_escapes_even_without_the_card_check(tmp_path):
    assert join_inside(tmp_path, "sub/model.onnx", "c") == tmp_path / "sub" / "model.onnx"
    for bad in ("../x.onnx", "/etc/passwd", "a/../../x.onnx", ""):
        with pytest.raises(CardError, match=r"model card c: file\.filename"):
            join_inside(tmp_path, bad, "c")


def test_card_filename_in_a_subfolder_and_symlinks_are_followed(tmp_path):
    folder = tiny_model_folder(tmp_path / "sub", filename=f"onnx/{TINY}.onnx")
    assert locate(folder).path == folder / "onnx" / f"{TINY}.onnx"
    # A symlink inside the folder is followed wherever it points: that is how the Hugging Face
    # cache (snapshots/<commit>/file -> ../../blobs/<etag>) and snapshot_download folders look.
    blobs = tmp_path / "blobs"
    linked = tiny_model_folder(tmp_path / "snapshot", onnx_at=blobs / "abc123")
    os.symlink(blobs / "abc123", linked / f"{TINY}.onnx")
    assert locate(linked).card.name == TINY


def test_card_naming_a_missing_file_says_what_to_do(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    (folder / f"{TINY}.onnx").unlink()
    with pytest.raises(ModelNotFound) as info:
        locate(folder)
    assert "fix file.filename" in one_line(info.value)


def test_hub_card_filename_cannot_leave_the_repo(hub_stub):
    card = builtin_cards()["patch32_v1"].to_dict()
    card["file"].update(filename="../../../../etc/passwd", repo_id=None, revision=None)
    hub_stub.add_file("someone/evil", "model.card.json", json.dumps(card).encode())
    with pytest.raises(CardError) as info:
        locate("someone/evil")
    assert "file.filename" in one_line(info.value)
    assert all("passwd" not in path for _, path in hub_stub.requests)


@pytest.mark.parametrize(
    "name", ["someone/repo/../x.onnx", "someone/repo/a/./x.onnx", "someone/repo//x.onnx"]
)
def test_hub_file_path_in_a_name_cannot_leave_the_repo(hub_stub, name):
    with pytest.raises(ModelNotFound) as info:
        locate(name)
    assert "plain relative path" in one_line(info.value)
    assert hub_stub.requests == []


def test_hub_file_in_a_subfolder_still_works(hub_stub):
    onnx = (MODELS / f"{TINY}.onnx").read_bytes()
    card = ModelCard.load(MODELS / f"{TINY}.card.json").to_dict()
    card["file"]["filename"] = f"onnx/{TINY}.onnx"
    hub_stub.add_file("someone/good", "model.card.json", json.dumps(card).encode())
    hub_stub.add_file("someone/good", f"onnx/{TINY}.onnx", onnx)
    located = locate("someone/good")
    assert located.card.name == TINY and located.path.read_bytes() == onnx
