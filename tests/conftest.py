"""Shared fixtures. Every test runs offline with its own empty caches (like huggingface_hub's
own test suite), so nothing reaches or pollutes a real cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hfstub import hub_stub  # noqa: F401  (fixture: a local Hugging Face Hub stand-in)

DATA = Path(__file__).parent / "data"
MODELS = DATA / "models"
IMAGES = DATA / "images"
REFERENCE = DATA / "reference"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hf" / "hub"))
    monkeypatch.setenv("IMGBEDDINGS_CACHE", str(cache / "imgbeddings"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("IMGBEDDINGS_HF_ENDPOINT", raising=False)
    monkeypatch.delenv("IMGBEDDINGS_NUM_THREADS", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


def load_reference(name: str) -> dict[str, np.ndarray]:
    """A committed reference file; missing data is a failure, never a skip."""
    path = REFERENCE / f"{name}.npz"
    if not path.is_file():
        pytest.fail(f"reference data {path} is missing: run scripts/make_test_assets.py")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def image_paths() -> list[Path]:
    names = [str(n) for n in load_reference("pixels")["names"]]
    return [IMAGES / n for n in names]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
