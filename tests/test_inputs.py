"""Which files a job covers."""

from __future__ import annotations

import io
import os

import pytest

from imgbeddings.inputs import canonical_path, expand, file_stat, is_image_name


def make_tree(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    for name in [
        "b.JPG",
        "a.png",
        "notes.txt.bak",
        "c.WebP",
        "sub/d.jpeg",
        "sub/deeper/e.TIFF",
        "sub/readme.md",
    ]:
        (root / name).write_bytes(b"x")
    (root / "dir.jpg").mkdir()  # a folder named like an image: reported as a failure later
    os.symlink(root / "nowhere.png", root / "link.png")
    return root


def test_folder_listing_is_sorted_case_insensitive_and_complete(tmp_path):
    root = make_tree(tmp_path)
    flat = [os.path.relpath(p, root) for p in expand([str(root)])]
    assert flat == ["a.png", "b.JPG", "c.WebP", "dir.jpg", "link.png"]
    deep = [os.path.relpath(p, root) for p in expand([str(root)], recursive=True)]
    assert deep == ["a.png", "b.JPG", "c.WebP", "dir.jpg", "link.png", "sub/d.jpeg", "sub/deeper/e.TIFF"]


def test_lists_stdin_and_plain_paths(tmp_path):
    root = make_tree(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{root / 'a.png'}\n\n{root / 'sub' / 'd.jpeg'}\n")
    stdin = io.StringIO(f"{root / 'b.JPG'}\n")
    got = list(expand([str(listing), "-", str(root / "missing.gif")], stdin=stdin))
    assert got == [
        str(root / "a.png"),
        str(root / "sub" / "d.jpeg"),
        str(root / "b.JPG"),
        str(root / "missing.gif"),
    ]


def test_helpers():
    assert is_image_name("X.JPEG") and is_image_name("a.avif") and not is_image_name("a.txt")
    assert canonical_path("a/../b.jpg") == os.path.join(os.getcwd(), "b.jpg")


# --- path lists: any file name on disk can be listed --------------------------------------


def names(paths, root):
    return [os.path.relpath(p, root) for p in paths]


def test_list_with_bom_and_crlf(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    text = f"{tmp_path / 'a.png'}\r\n# note\r\n\r\n{tmp_path / 'b.png'}\r\n"
    listing.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert names(expand([str(listing)]), tmp_path) == ["a.png", "b.png"]


def test_latin1_list_names_a_latin1_file(tmp_path):
    """A list that is not UTF-8 gives the bytes of each name back to the OS (no traceback)."""
    root = os.fsencode(tmp_path)
    latin1 = os.path.join(root, b"caf\xe9.jpg")
    with open(latin1, "wb") as fh:
        fh.write(b"x")
    utf8 = tmp_path / "né.jpg"
    utf8.write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_bytes(latin1 + b"\n" + os.fsencode(utf8) + b"\n")
    got = list(expand([str(listing)]))
    assert [os.fsencode(p) for p in got] == [latin1, os.fsencode(utf8)]
    assert got[1] == str(utf8)  # valid UTF-8 lines are plain text
    assert all(os.path.isfile(p) for p in got)
    assert file_stat(canonical_path(got[0])) == (1, os.stat(latin1).st_mtime_ns)
    assert os.fsencode(canonical_path(got[0])) == latin1


def test_spaces_are_part_of_names_and_only_the_terminator_is_removed(tmp_path):
    for name in ("trailing.jpg  ", " leading.jpg", "#hash.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{tmp_path}/trailing.jpg  \n{tmp_path}/ leading.jpg\r\n   \n\t\n#hash.jpg\n{tmp_path}/#hash.jpg",
        newline="",
    )
    got = list(expand([str(listing)]))
    assert names(got, tmp_path) == ["trailing.jpg  ", " leading.jpg", "#hash.jpg"]
    assert all(os.path.isfile(p) for p in got)


def test_stdin_is_read_as_bytes_with_the_same_rules(tmp_path, monkeypatch):
    raw = b"\xef\xbb\xbfcaf\xe9.jpg\r\n# c\nb.png  \n"
    binary = io.BytesIO(raw)
    assert [os.fsencode(p) for p in expand(["-"], stdin=binary)] == [b"caf\xe9.jpg", b"b.png  "]
    # sys.stdin: its binary buffer is read, so a non-UTF-8 name cannot break the text layer
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    assert [os.fsencode(p) for p in expand(["-"])] == [b"caf\xe9.jpg", b"b.png  "]
    # a text stream without a buffer still works (BOM and terminators handled the same way)
    text = io.StringIO("\ufeffa.png\r\n b.png \n")
    assert list(expand(["-"], stdin=text)) == ["a.png", " b.png "]


def test_unreadable_list_is_a_warning(tmp_path, monkeypatch):
    from imgbeddings import inputs

    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inputs, "open", denied, raising=False)  # chmod 0 does not stop root
    with pytest.warns(RuntimeWarning, match="cannot read list .*list.txt: Permission denied"):
        assert list(expand([str(listing), "x.png"])) == ["x.png"]


def test_folders_with_names_that_are_not_utf8(tmp_path):
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, b"sub\xff"))
    for name in (b"caf\xe9.jpg", b"b.png", b"\xff\xfe.png", b"sub\xff/z\xe9.jpeg", "é.png".encode()):
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(b"x")
    got = list(expand([str(tmp_path)], recursive=True))
    assert [os.path.relpath(os.fsencode(p), root) for p in got] == [
        b"b.png",
        b"caf\xe9.jpg",
        b"sub\xff/z\xe9.jpeg",
        "é.png".encode(),
        b"\xff\xfe.png",
    ]
    for path in got:
        assert file_stat(path) == (1, os.stat(os.fsencode(path)).st_mtime_ns)
        assert os.fsencode(canonical_path(path)) == os.path.normpath(os.fsencode(path))
