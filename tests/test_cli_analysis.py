"""The analysis commands on an embedded output: index, search, dedup."""

from __future__ import annotations

import json

import pytest

from conftest import MODELS
from test_cli import run

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


@pytest.fixture
def embedded(tmp_path, image_paths, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in image_paths:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "copy.jpg").write_bytes(image_paths[0].read_bytes())  # an exact duplicate
    (folder / "broken.jpg").write_bytes(b"not an image")  # a failure row
    out = tmp_path / "out"
    code, _, err = run(["embed", str(folder), "-o", str(out), "-m", MODEL], capsys)
    assert code == 6, err
    return folder, out


def test_index_then_search_text_and_json(embedded, capsys, image_paths):
    folder, out = embedded
    code, stdout, err = run(["index", str(out)], capsys)
    assert code == 0 and "index built: flat, 9 vectors x 32" in err and stdout.strip().endswith("index")
    query = str(folder / image_paths[0].name)
    code, stdout, _ = run(["search", str(out), query, "-k", "2", "--json", "--exclude-self"], capsys)
    assert code == 0
    result = json.loads(stdout.strip())
    assert result["query"] == query and result["results"][0]["path"] == str(folder / "copy.jpg")
    assert result["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    code, stdout, _ = run(["search", str(out), str(image_paths[3]), "-k", "3"], capsys)  # an image file
    assert code == 0 and "(image," in stdout and len(stdout.strip().splitlines()) == 4


def test_search_reports_a_bad_query_and_answers_the_rest(embedded, capsys, tmp_path, image_paths):
    _, out = embedded
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code, stdout, err = run(["search", str(out), str(bad), str(image_paths[1]), "--json"], capsys)
    assert code == 6 and f"failed {bad}" in err and "Traceback" not in err
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert "error" in lines[0] and lines[1]["results"]


def test_dedup_groups_the_copy_and_writes_a_report(embedded, capsys, tmp_path, image_paths):
    folder, out = embedded
    code, stdout, err = run(["dedup", str(out), "--json", "--report", str(tmp_path / "r.csv")], capsys)
    assert code == 0 and "calibrated on the collection" in err, err
    groups = [json.loads(line) for line in stdout.strip().splitlines()]
    members = {m["path"] for g in groups for m in g["members"]}
    assert {str(folder / image_paths[0].name), str(folder / "copy.jpg")} <= members
    assert (tmp_path / "r.csv").read_text().startswith("path,group,keep,score")


def test_analysis_of_a_folder_that_is_not_an_output(tmp_path, capsys):
    code, _, err = run(["search", str(tmp_path), "x.jpg"], capsys)
    assert code == 8 and "Traceback" not in err
