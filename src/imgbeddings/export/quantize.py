"""INT8 quantisation recipes for exported models (ONNX Runtime quantisation + graph rewrites).

- ``int8`` (default): signed INT8 weights, one scale per output channel, MatMul weights only.
  The patch-embedding convolution, LayerNorms, softmax and GELU stay float32, which is what
  keeps accuracy. Activations are quantised with fixed per-tensor scales, calibrated at export
  time on generated images (:func:`calibration_pixels`), so **a vector does not depend on the
  rest of its batch**: the same image gives bit-identical vectors alone or in any batch, on
  the same CPU, ONNX Runtime version and thread count. Each MatMul is written as ONNX
  Runtime's fused ``MatMulIntegerToFloat`` (``com.microsoft``), and the legacy pooling's token
  sums as matmuls whose summation order does not depend on the batch (:func:`_ordered_sums`).
- ``int8-dynamic``: the same weights, activations quantised at run time with the min/max of
  the whole batch: a vector moves slightly with its batch-mates (the default before static
  scales; README, "Exporting models").
- ``int8-original``: the original imgbeddings recipe, ``quantize_dynamic(weight_type=QUInt8)``
  with every default op type (Conv and Gather included), per-tensor: rebuilds its files.
- ``int8-plain``: ``quantize_dynamic(weight_type=QInt8)`` with defaults, for comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError

RECIPES = ("int8", "int8-dynamic", "int8-original", "int8-plain")
#: Recipes whose activation scales are calibrated (the exporter passes calibration pixels).
CALIBRATED = ("int8",)
#: Calibration set: generated images of varied content. The exporter's accuracy gate uses seed 0,
#: so the gate measures images the scales were not fitted on.
CALIBRATION_IMAGES = 64
CALIBRATION_SEED = 101

_MS = "com.microsoft"


def quantize(
    fp32_path: Path, out_path: Path, recipe: str = "int8", *, calibration: np.ndarray | None = None
) -> Path:
    """Write an INT8 copy of ``fp32_path`` using ``recipe``; returns ``out_path``.

    ``calibration``: float32 pixels (N, 3, S, S) for the calibrated recipes; by default
    :func:`calibration_pixels` of the preprocessing in the card beside ``fp32_path``.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown quantisation recipe {recipe!r}; known: {RECIPES}")
    from onnxruntime.quantization import QuantType

    if recipe in ("int8", "int8-dynamic"):
        kwargs: dict[str, Any] = dict(
            weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
    elif recipe == "int8-original":
        kwargs = dict(weight_type=QuantType.QUInt8)
    else:
        kwargs = dict(weight_type=QuantType.QInt8)
    if recipe in CALIBRATED and calibration is None:
        calibration = _card_calibration(Path(fp32_path))
    _quantize_dynamic(Path(fp32_path), Path(out_path), kwargs)
    if recipe in CALIBRATED:
        import onnx

        model = onnx.load(str(out_path))
        scales = _static_activations(model, np.asarray(calibration, dtype=np.float32))
        _ordered_sums(model)  # before the fusion: ONNX shape inference does not know com.microsoft ops
        _fuse_matmuls(model, scales)
        _drop_unused(model.graph)
        onnx.save(model, str(out_path))
    return Path(out_path)


def calibration_pixels(spec: Any, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``n`` generated images (:func:`~imgbeddings.export.samples.varied_images`) through the
    exact preprocessing of ``spec`` (a :class:`~imgbeddings.models.cards.PreprocessSpec`)."""
    from ..images.preprocess import Preprocessor
    from .samples import varied_images

    return Preprocessor(spec, "exact").batch(varied_images(n, seed=seed))


def _card_calibration(fp32_path: Path) -> np.ndarray:
    from ..models.cards import ModelCard, card_path_for

    card_path = card_path_for(fp32_path)
    if not card_path.exists():
        raise ExportError(
            f"the static INT8 recipe calibrates on images preprocessed as the model's card says, "
            f"and {fp32_path} has no card ({card_path.name}); pass calibration=pixels"
        )
    return calibration_pixels(ModelCard.load(card_path).preprocess)


def _quantize_dynamic(fp32_path: Path, out_path: Path, kwargs: dict[str, Any]) -> None:
    from onnxruntime.quantization import quantize_dynamic

    # quantize_dynamic logs a "consider pre-processing" hint on the root logger at WARNING level
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(out_path), **kwargs)
    finally:
        root.setLevel(level)


def _static_activations(model: Any, pixels: np.ndarray) -> dict[str, str]:
    """Replace every ``DynamicQuantizeLinear`` by a ``QuantizeLinear`` with a constant scale and
    zero point: the min/max over ``pixels`` through the formula of ``DynamicQuantizeLinear``.
    Values beyond the calibrated range saturate; on a random ViT-B/32, widening the ranges to
    avoid that lost more accuracy (coarser steps) than it saved, even on pure noise, whose
    activations exceed the calibrated ranges by up to 31 %. Returns {quantised tensor: its scale}."""
    from onnx import helper, numpy_helper

    graph = model.graph
    ranges = _activation_ranges(model, pixels)
    scales: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        lo, hi = ranges[node.input[0]]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
        zero_point = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
        quantized, scale_name, zero_point_name = node.output
        graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
        graph.initializer.append(numpy_helper.from_array(np.array(zero_point, np.uint8), zero_point_name))
        nodes.append(
            helper.make_node(
                "QuantizeLinear", [node.input[0], scale_name, zero_point_name], [quantized], name=node.name
            )
        )
        scales[quantized] = scale_name
    if not scales:
        raise ExportError(
            "static INT8: ONNX Runtime's quantiser wrote no DynamicQuantizeLinear node to replace "
            "(a graph without MatMuls, or a quantiser that writes another form); use --quantize int8-dynamic"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return scales


def _activation_ranges(model: Any, pixels: np.ndarray, batch_size: int = 8) -> dict[str, tuple[float, float]]:
    """Min and max of every ``DynamicQuantizeLinear`` input over ``pixels`` (run through a copy
    of the model that also outputs each input's ReduceMin/ReduceMax: scalars, not tensors)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ..runtime import CPU, session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [n.input[0] for n in probe.graph.node if n.op_type == "DynamicQuantizeLinear"]
    outputs = []
    for i, name in enumerate(names):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"imgbeddings_calibration_{op}_{i}"
            probe.graph.node.append(helper.make_node(op, [name], [out], keepdims=0))
            probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
            outputs.append(out)
    session = ort.InferenceSession(probe.SerializeToString(), session_options(), providers=[CPU])
    input_name = session.get_inputs()[0].name
    lo = np.full(len(names), np.inf)
    hi = np.full(len(names), -np.inf)
    for start in range(0, len(pixels), batch_size):
        values = np.array(session.run(outputs, {input_name: pixels[start : start + batch_size]}))
        lo = np.minimum(lo, values[0::2])
        hi = np.maximum(hi, values[1::2])
    return {name: (float(a), float(b)) for name, a, b in zip(names, lo, hi, strict=True)}


def _fuse_matmuls(model: Any, scales: dict[str, str]) -> None:
    """``MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add bias]`` on a statically
    quantised input becomes one ``MatMulIntegerToFloat``. ONNX Runtime fuses this chain itself
    only while ``a_scale`` is computed at run time; with a constant scale, constant folding
    removes the pattern first. A chain of any other shape is left as it is (still correct)."""
    from onnx import helper

    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    constants = {t.name: t for t in graph.initializer}

    def constant(name: str) -> Any:
        while name not in constants and name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return constants.get(name)

    def only_consumer(name: str, op_type: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    replaced: dict[int, Any] = {}
    removed: set[int] = set()
    for mm in graph.node:
        if mm.op_type != "MatMulInteger" or mm.input[0] not in scales or len(mm.input) != 4:
            continue
        cast = only_consumer(mm.output[0], "Cast")
        mul = cast and only_consumer(cast.output[0], "Mul")
        scale_mul = mul and producer.get(next((i for i in mul.input if i != cast.output[0]), ""))
        weight = constant(mm.input[1])
        if scale_mul is None or scale_mul.op_type != "Mul" or weight is None or len(weight.dims) != 2:
            continue
        a_scale = scales[mm.input[0]]
        b_scale = next((i for i in scale_mul.input if i != a_scale), None)
        if a_scale not in scale_mul.input or b_scale is None or constant(b_scale) is None:
            continue
        inputs = [mm.input[0], mm.input[1], a_scale, b_scale, mm.input[2], mm.input[3]]
        output, dropped = mul.output[0], [cast, mul]
        add = only_consumer(mul.output[0], "Add")
        if add is not None:
            bias_name = next((i for i in add.input if i != mul.output[0]), "")
            bias = constant(bias_name)
            if bias is not None and list(bias.dims) == [weight.dims[1]]:
                inputs.append(bias_name)
                output, dropped = add.output[0], [cast, mul, add]
        replaced[id(mm)] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [output], name=mm.name, domain=_MS
        )
        removed.update(id(n) for n in dropped)
        if all(id(u) in removed or u is mul for u in consumers[scale_mul.output[0]]):
            removed.add(id(scale_mul))
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == _MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))


def _ordered_sums(model: Any) -> None:
    """``ReduceSum`` over one inner axis (the legacy pooling's sums over tokens) becomes a
    MatMul with a row of ones, which sums every image's values in one fixed order.

    ONNX Runtime sums ``x[b, t, :]`` over ``t`` in one order when the batch has a single image
    and in another (vectorised, tree-shaped) when it has more, so a vector moved by a few ULPs
    with its batch; its graph optimiser undoes a Transpose that puts the axis first. A batched
    MatMul with M = 1 runs the same GEMM for every image, whatever the batch size.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # ReduceSum/Squeeze/Unsqueeze take their axes as attributes before 13
        return
    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update(
        {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    )

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    nodes = []
    for node in graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "ReduceSum" else None
        axes = constants.get(node.input[1]) if shape and len(node.input) > 1 else None
        rank = len(shape) if shape else 0
        axis = int(np.ravel(axes)[0]) % rank if axes is not None and np.size(axes) == 1 else 0
        if axis < 1 or axis < rank - 2:  # leading axes are already summed in one order
            nodes.append(node)
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        p = f"{node.name or node.output[0]}_ordered"
        x, out = node.input[0], node.output[0]
        if shape[axis]:
            ones = const(p + "_ones", np.ones((1, shape[axis]), np.float32))
        else:
            ones = p + "_ones"
            nodes.append(helper.make_node("Shape", [x], [p + "_n"], start=axis, end=axis + 1))
            nodes.append(helper.make_node("Concat", [const(p + "_1", np.array([1], np.int64)), p + "_n"],
                                          [p + "_shape"], axis=0))  # fmt: skip
            nodes.append(helper.make_node("ConstantOfShape", [p + "_shape"], [ones],
                                          value=numpy_helper.from_array(np.ones(1, np.float32))))  # fmt: skip
        summed = out if keepdims else p + "_sum"
        if axis == rank - 1:  # (..., n) -> (..., n, 1): sum as (1, n) @ (n, 1) per row
            last = const(p + "_last", np.array([-1], np.int64))
            nodes.append(helper.make_node("Unsqueeze", [x, last], [p + "_col"]))
            nodes.append(helper.make_node("MatMul", [ones, p + "_col"], [p + "_mm"]))
            nodes.append(helper.make_node("Squeeze", [p + "_mm", last], [summed]))
        else:
            nodes.append(helper.make_node("MatMul", [ones, x], [summed], name=p))
        if not keepdims:
            nodes.append(
                helper.make_node("Squeeze", [summed, const(p + "_axis", np.array([axis], np.int64))], [out])
            )
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused(graph: Any) -> None:
    """Constants the rewrites left without a reader (ONNX Runtime warns about them)."""
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    keep = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
