"""Generated images in planted classes, for the cluster, map and classifier tests: noisy
photo-like scenes tinted red or blue (strongly enough that even the tiny random test model
separates them), written as JPEGs into one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgbeddings.export.samples import photo_like

TINTS = {"red": (80, -32, -48), "blue": (-48, -16, 80)}
TINY = Path(__file__).parent / "data" / "models" / "tiny_b32_legacy.onnx"


def scene(
    tint: tuple[int, int, int], rng: np.random.Generator, size: tuple[int, int] = (96, 72)
) -> Image.Image:
    """A photo-like scene with ``tint`` added to every pixel."""
    base = np.asarray(photo_like(*size, rng), dtype=np.float32)
    return Image.fromarray(np.clip(base + np.array(tint, np.float32), 0, 255).astype(np.uint8))


def write_classes(folder: Path, per_class: int = 30, seed: int = 0) -> dict[str, list[Path]]:
    """``folder/red/*.jpg`` and ``folder/blue/*.jpg``, ``per_class`` each; returns the paths."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for name, tint in TINTS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            path = folder / name / f"{name}_{i:03d}.jpg"
            scene(tint, rng).save(path, quality=90)
            written[name].append(path)
    return written
