"""Accuracy checks of an export: ONNX fp32 against PyTorch, INT8 against fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Cosine similarity between two models' vectors over a set of images."""

    min: float
    mean: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"min_cosine": self.min, "mean_cosine": self.mean, "images": self.n}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    c = cosines(a, b)
    return Agreement(float(c.min()), float(c.mean()), len(c))


def run_onnx(path: Path, pixels: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Outputs of an ONNX model on float32 pixels, in batches."""
    from ..runtime import OnnxModel

    model = OnnxModel(path, int8_fastpath=False)  # verify the file exactly as it is written
    return np.concatenate([model.run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def run_torch(module: Any, pixels: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Outputs of the wrapped PyTorch module on the same pixels."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            outs.append(module(torch.from_numpy(pixels[i : i + batch_size])).numpy())
    return np.concatenate(outs).astype(np.float32)
