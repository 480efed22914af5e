"""Which files a job covers."""

from __future__ import annotations

import io
import os

from imgbeddings.inputs import canonical_path, expand, is_image_name


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
    listing.write_text(f"# comment\n{root / 'a.png'}\n\n  {root / 'sub' / 'd.jpeg'}  \n")
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
