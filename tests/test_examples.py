"""The example scripts in examples/ run, from another working directory, on the tiny test model
(offline), and print what they promise. Their numbers are meaningless with a random model, so
only their form and ranges are checked, plus what holds for any model (a probe's confusion
matrix counts every image once, search results come best first, search and similarity agree)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import MODELS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = MODELS / "tiny_b32_legacy.onnx"
PER_CLASS = 12
NUMBER = r"([-+]?\d+\.\d+)"


def run_example(name: str, tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    workdir = tmp_path / "work"
    cwd = tmp_path / "elsewhere"  # not the repository: the script must find _images itself
    cwd.mkdir(exist_ok=True)
    command = [sys.executable, str(EXAMPLES / name), "--model", str(TINY), "--workdir", str(workdir), *args]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_clusters_and_probe(tmp_path):
    proc = run_example("clusters_and_probe.py", tmp_path, "--per-class", str(PER_CLASS))
    out, work = proc.stdout, tmp_path / "work"
    assert f"Embedded {2 * PER_CLASS} images" in out
    assert "random-weight test model" in out  # honest about the tiny model
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)  # cluster, size, cool, warm
    assert len(rows) == 2
    assert all(int(size) == int(cool) + int(warm) for _, size, cool, warm in rows)
    assert sum(int(size) for _, size, _, _ in rows) == 2 * PER_CLASS
    purity = float(re.search(rf"purity: {NUMBER}", out).group(1))
    assert 0.5 <= purity <= 1.0
    accuracy = float(re.search(rf"cross-validated accuracy {NUMBER}", out).group(1))
    assert 0.0 <= accuracy <= 1.0
    assert re.search(r"C=[\d.e+-]+", out)
    confusion = re.findall(r"^\s+(cool|warm)\s+(\d+)\s+(\d+)$", out, re.M)
    assert [c for c, _, _ in confusion] == ["cool", "warm"]
    assert all(int(a) + int(b) == PER_CLASS for _, a, b in confusion)
    sheets = sorted(p.name for p in (work / "sheets").glob("*.png"))
    assert sheets == ["cluster_0.png", "cluster_1.png"]
    probe = json.loads((work / "probe.json").read_text())
    assert probe["format"] == "imgbeddings-probe" and probe["classes"] == ["cool", "warm"]
    assert probe["cv"]["accuracy"] == pytest.approx(accuracy, abs=5e-4)
    right = re.search(r"predictions on the training images: (\d+)/(\d+) right", out)
    assert right and int(right.group(2)) == 2 * PER_CLASS and 0 <= int(right.group(1)) <= 2 * PER_CLASS


def test_similar_images(tmp_path):
    k = 4
    proc = run_example("similar_images.py", tmp_path, "--per-class", str(PER_CLASS), "-k", str(k))
    out = proc.stdout
    assert f"Embedded {2 * PER_CLASS + 4} images" in out  # two classes + 2 near copies of 2 images
    assert "query: cool/000.jpg (stored)" in out
    hits = re.findall(rf"^\s+(\d+)\s+{NUMBER}\s+(\S+)$", out, re.M)
    assert [int(rank) for rank, _, _ in hits] == list(range(1, k + 1))
    scores = [float(score) for _, score, _ in hits]
    assert all(-1.0 <= s <= 1.0001 for s in scores) and scores == sorted(scores, reverse=True)
    assert "cool/000.jpg" not in [path for _, _, path in hits]  # the query is left out of its results
    by_hand = re.search(rf"similarity\(cool/000.jpg, (\S+)\) = {NUMBER} \(search said {NUMBER}\)", out)
    assert by_hand and by_hand.group(1) == hits[0][2]
    assert float(by_hand.group(2)) == pytest.approx(float(by_hand.group(3)), abs=2e-4)


def test_augmentation_resilience(tmp_path):
    proc = run_example(
        "augmentation_resilience.py", tmp_path, "--per-class", "6", "--copies", "3", "--limit", "6"
    )
    out = proc.stdout
    rows = re.findall(rf"^((?:cool|warm)/\d+\.jpg)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
    assert len(rows) == 6 and {r[0].split("/")[0] for r in rows} == {"cool", "warm"}
    for _, own_mean, own_min, other_mean, other_max in rows:
        values = [float(v) for v in (own_mean, own_min, other_mean, other_max)]
        assert all(-1.0 <= v <= 1.0001 for v in values)
        assert values[1] <= values[0] + 1e-4 and values[2] <= values[3] + 1e-4  # min <= mean <= max
    assert re.search(rf"margin \(copies mean - others mean\): {NUMBER} on average, positive for \d/6", out)
    assert len(list((tmp_path / "work" / "augmented").glob("copy_*.jpg"))) == 3


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("similar_images.py", None, "no such folder"),
        ("clusters_and_probe.py", "flat", "needs one sub-folder per class"),
    ],
)
def test_usage_errors_exit_with_a_message(tmp_path, name, make, message):
    images = tmp_path / "missing"
    if make == "flat":  # images but no class sub-folders
        images = tmp_path / "flat"
        images.mkdir()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(images / "a.jpg")
    proc = run_example(name, tmp_path, "--images", str(images), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
