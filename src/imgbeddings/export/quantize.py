"""INT8 quantisation recipes for exported models (ONNX Runtime dynamic quantisation).

- ``int8`` (default): signed INT8 weights, one scale per output channel, MatMul weights only.
  The patch-embedding convolution, LayerNorms, softmax and GELU stay float32, which is what
  keeps accuracy; activations are quantised per batch at run time. On the benchmark machine it
  runs faster than both alternatives below (README, "Export speed").
- ``int8-original``: the original imgbeddings recipe, ``quantize_dynamic(weight_type=QUInt8)``
  with every default op type (Conv and Gather included), per-tensor: rebuilds its files.
- ``int8-plain``: ``quantize_dynamic(weight_type=QInt8)`` with defaults, for comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path

RECIPES = ("int8", "int8-original", "int8-plain")


def quantize(fp32_path: Path, out_path: Path, recipe: str = "int8") -> Path:
    """Write an INT8 copy of ``fp32_path`` using ``recipe``; returns ``out_path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in RECIPES:
        raise ValueError(f"unknown quantisation recipe {recipe!r}; known: {RECIPES}")
    kwargs: dict = {}
    if recipe == "int8":
        kwargs = dict(weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    elif recipe == "int8-original":
        kwargs = dict(weight_type=QuantType.QUInt8)
    else:
        kwargs = dict(weight_type=QuantType.QInt8)
    # quantize_dynamic logs a "consider pre-processing" hint on the root logger at WARNING level
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(out_path), **kwargs)
    finally:
        root.setLevel(level)
    return out_path
