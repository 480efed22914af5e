"""Original-format INT8 files on ONNX Runtime's fast kernels, without changing a number.

The original imgbeddings files (``patch32_v1``, ``patch16_v1``, ``patch14_v1``, and anything
``quantize_dynamic(..., weight_type=QUInt8)`` writes) give ``MatMulInteger`` and ``ConvInteger``
uint8 weights with uint8 zero points, which ONNX Runtime runs on its slow U8U8 kernels.
Flipping the top bit of both (``w ^ 0x80`` read as int8 is ``w - 128``) keeps every
``W - zero_point``, so the integer products are the same and ONNX Runtime takes its U8S8
kernels. ``ConvInteger`` itself is slower with int8 weights (measured), so a patch convolution
(stride = kernel, no padding) becomes ``SpaceToDepth -> Transpose -> MatMulInteger ->
Transpose``: the same integers, on the same fast kernels.

Safety, in this order:

1. Only tensors whose every reader is such a node's weight or weight-zero-point input change
   (one also read by a Gather, a DequantizeLinear, a subgraph, or exposed as a graph input or
   output stays as it is, and so does every node that reads it).
2. Without VNNI or AMX, U8S8 kernels add pairs of products in int16 and can saturate. A probe
   graph with extreme values checks that this CPU's kernel is exact, once per process (a few
   ms); where it is not, the file runs as it is.
3. A rewrite is used only if the original and rewritten graphs give bit-identical outputs on a
   seeded batch of 2 noise images scaled like normalised pixels. Otherwise the original runs,
   with a :class:`RuntimeWarning` that names the file.

Cache: rewriting and checking a full-size B/32 file costs about a second, so a rewrite that
passed its check is stored as ``<cache>/int8-fastpath/<key>.onnx``, with a ``<key>.json``
record (``<cache>`` is ``IMGBEDDINGS_CACHE``, else ``~/.cache/imgbeddings``). ``<key>`` is the
source's SHA-256, the ONNX Runtime version and :data:`REWRITE_VERSION`. Both files are written
to a temporary name and renamed into place. A cached rewrite is trusted by its key: the same
bytes, runtime and rewriter gave identical outputs when it was written. The kernel probe of
point 2 still runs in every process, because a cache may be shared between machines. A failed
check is recorded too, so it costs its second only once per file. Writing a rewrite removes
those of the same source made for other runtime or rewriter versions.

Finding what to rewrite parses the file with ``onnx`` (about 0.1 s for a B/32 INT8 file). The
runtime asks only for files whose card allows an original-format INT8 recipe
(``file.precision`` ``int8-original``, or unknown for a bare file): fp32 files and our own
``int8`` exports never pay it.

Opt out with ``OnnxModel(..., int8_fastpath=False)`` or ``IMGBEDDINGS_INT8_FASTPATH=0``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import settings

logger = logging.getLogger("imgbeddings")

REWRITE_VERSION = 1
UINT8, INT8 = 2, 3  # onnx.TensorProto data types


@dataclass(frozen=True)
class Int8Rewrite:
    """What the INT8 fast path did to one model file (``OnnxModel.int8_rewrite``).

    Attributes:
        matmuls: ``MatMulInteger`` nodes that now read int8 weights.
        convs: ``ConvInteger`` patch convolutions that now run as int8 ``MatMulInteger``.
        verified: True when the rewritten graph runs (its outputs matched the original's
            bit for bit). False when they did not, so the original file runs as it is.
        cached: the rewritten file on disk, or None if it lives only in memory.
        from_cache: the rewrite (or its failed check) was found in the cache.
        seconds: start-up time spent on the fast path, the session included.
    """

    matmuls: int
    convs: int
    verified: bool
    cached: Path | None = None
    from_cache: bool = False
    seconds: float = 0.0


# --- what the planner reads of a graph ----------------------------------------------------------


@dataclass
class _Node:
    op_type: str = ""
    domain: str = ""
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphSummary:
    """The parts of a main graph the planner needs: nodes, initializer headers and the names
    read from outside its node list (graph inputs and outputs, names used inside subgraphs)."""

    nodes: list[_Node] = field(default_factory=list)
    # initializer name -> (data type, dims, stored externally)
    tensors: dict[str, tuple[int, tuple[int, ...], bool]] = field(default_factory=dict)
    exposed: set[str] = field(default_factory=set)


def _subgraph_reads(graph: Any) -> set[str]:
    """Every name the nodes of ``graph`` and its nested subgraphs read."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _subgraph_reads(sub)
    return names


def summarize(model: Any) -> GraphSummary:
    """The planner's view of an ``onnx.ModelProto``'s main graph."""
    from onnx import TensorProto, helper

    graph, summary = model.graph, GraphSummary()
    for node in graph.node:
        attrs = {}
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            if subgraphs:  # names read inside a subgraph must keep their type
                for sub in subgraphs:
                    summary.exposed |= _subgraph_reads(sub)
                continue
            value = helper.get_attribute_value(attr)
            attrs[attr.name] = tuple(value) if isinstance(value, list) else value
        summary.nodes.append(_Node(node.op_type, node.domain, list(node.input), attrs))
    for t in graph.initializer:
        summary.tensors[t.name] = (t.data_type, tuple(t.dims), t.data_location == TensorProto.EXTERNAL)
    summary.exposed |= {v.name for v in [*graph.input, *graph.output]}
    return summary


def read_summary(path: str | Path) -> GraphSummary | None:
    """The main graph's summary (``onnx.load``, no external data); None if unreadable."""
    import onnx

    try:
        return summarize(onnx.load(str(path), load_external_data=False))
    except Exception as exc:  # protobuf DecodeError, OSError...
        logger.debug("int8 fast path: cannot read %s: %s", path, exc)
        return None


# --- which tensors and nodes change --------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Node indices to rewrite and the uint8 tensors to flip to int8."""

    matmuls: tuple[int, ...] = ()
    convs: tuple[int, ...] = ()
    flip: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.matmuls or self.convs)


def _is_patch_conv(node: _Node, dims: tuple[int, ...]) -> bool:
    """A 2-D convolution with square kernel k, stride k, no padding, dilation or groups."""
    if len(dims) != 4 or dims[2] != dims[3]:
        return False
    k, a = dims[2], node.attrs
    return (
        a.get("kernel_shape") in (None, (k, k))
        and a.get("strides") == (k, k)
        and all(p == 0 for p in a.get("pads") or ())
        and all(d == 1 for d in a.get("dilations") or ())
        and a.get("group") in (None, 1)
        and a.get("auto_pad") in (None, b"", b"NOTSET", b"VALID")
    )


def make_plan(summary: GraphSummary, convs: bool = True) -> Plan:
    """Which ``MatMulInteger`` (and, with ``convs``, patch ``ConvInteger``) nodes can take int8
    weights: weight and weight zero point are uint8 initializers, and every node that reads
    either of them is such a node reading it as its weight or weight zero point."""

    def flippable(name: str) -> bool:
        dtype, _, external = summary.tensors.get(name, (0, (), True))
        return dtype == UINT8 and not external and name not in summary.exposed

    chosen: dict[int, tuple[str, str]] = {}
    readers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, node in enumerate(summary.nodes):
        for slot, name in enumerate(node.inputs):
            if name:
                readers[name].append((i, slot))
        if node.domain not in ("", "ai.onnx") or len(node.inputs) < 4:
            continue
        weight, zero_point = node.inputs[1], node.inputs[3]
        if not (flippable(weight) and flippable(zero_point)):
            continue
        if node.op_type == "MatMulInteger" or (
            convs and node.op_type == "ConvInteger" and _is_patch_conv(node, summary.tensors[weight][1])
        ):
            chosen[i] = (weight, zero_point)
    changed = True
    while changed:  # drop nodes whose tensors are read elsewhere, until nothing changes
        changed = False
        for i, pair in list(chosen.items()):
            if any(j not in chosen or slot not in (1, 3) for name in pair for j, slot in readers[name]):
                del chosen[i]
                changed = True
    ops = {i: summary.nodes[i].op_type for i in chosen}
    return Plan(
        matmuls=tuple(i for i in chosen if ops[i] == "MatMulInteger"),
        convs=tuple(i for i in chosen if ops[i] == "ConvInteger"),
        flip=frozenset(name for pair in chosen.values() for name in pair),
    )


# --- the rewrite ---------------------------------------------------------------------------------


def rewrite(model: Any, plan: Plan) -> Any:
    """Apply ``plan`` to an ``onnx.ModelProto`` in place (and return it)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for name in sorted(plan.flip):
        tensor = tensors[name]
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.uint8:
            raise ValueError(f"{name} is {values.dtype}, expected uint8")
        tensor.ClearField("int32_data")
        tensor.raw_data = (values ^ np.uint8(0x80)).tobytes()  # the bytes of int8 (w - 128)
        tensor.data_type = TensorProto.INT8
    if not plan.convs:
        return model
    taken = {t.name for t in graph.initializer} | {x for n in graph.node for x in [*n.input, *n.output]}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    patched: dict[str, str] = {}
    nodes = []
    for i, node in enumerate(graph.node):
        if i not in plan.convs:
            nodes.append(type(node)())
            nodes[-1].CopyFrom(node)  # a copy: the originals go when the node list is cleared
            continue
        x, w, x_zero, w_zero = node.input[:4]
        if w not in patched:  # [O, C, k, k] -> [k * k * C, O], rows in SpaceToDepth's channel order
            kernel = numpy_helper.to_array(tensors[w])
            rows = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0).reshape(-1, kernel.shape[0]))
            patched[w] = fresh(f"{w}_patch_matrix")
            graph.initializer.append(numpy_helper.from_array(rows, patched[w]))
        k = tensors[w].dims[2]
        base = node.name or node.output[0]
        s2d, nhwc, product = fresh(f"{base}_s2d"), fresh(f"{base}_s2d_nhwc"), fresh(f"{base}_nhwc")
        nodes += [
            helper.make_node("SpaceToDepth", [x], [s2d], blocksize=k, name=fresh(f"{base}_int8_s2d")),
            helper.make_node("Transpose", [s2d], [nhwc], perm=[0, 2, 3, 1], name=fresh(f"{base}_int8_t1")),
            helper.make_node(
                "MatMulInteger", [nhwc, patched[w], x_zero, w_zero], [product], name=fresh(f"{base}_int8_mm")
            ),
            helper.make_node("Transpose", [product], [node.output[0]], perm=[0, 3, 1, 2], name=fresh(base)),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {x for n in graph.node for x in n.input}
    kept = [t for t in graph.initializer if t.name in still_read or t.name not in patched]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


# --- checks --------------------------------------------------------------------------------------

_KERNEL_EXACT: dict[str, bool] = {}


def kernel_exact(open_session: Callable[[Any], Any], runtime_version: str) -> bool:
    """Whether ONNX Runtime's U8S8 ``MatMulInteger`` is exact on this CPU (memoised per runtime).

    Rows of 255 against columns of -128 and 127 make the int16 pair sums of a plain AVX2 or
    AVX-512 kernel (``vpmaddubsw``) saturate; VNNI, AMX and the portable kernels sum in int32.
    """
    if runtime_version not in _KERNEL_EXACT:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        a = rng.integers(0, 256, (16, 256), dtype=np.uint8)
        b = rng.integers(-128, 128, (256, 64), dtype=np.int8)
        a[:4], b[:, 0], b[:, 1] = 255, -128, 127
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
            "u8s8_probe",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
            [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
            [numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        try:
            got = open_session(model.SerializeToString()).run(None, {"a": a})[0]
        except Exception as exc:  # onnxruntime's own error types; treat as "not exact"
            logger.debug("int8 fast path: U8S8 probe failed: %s", exc)
            got = None
        exact = got is not None and np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64))
        _KERNEL_EXACT[runtime_version] = bool(exact)
    return _KERNEL_EXACT[runtime_version]


def check_batch(session: Any, batch: int = 2) -> dict[str, np.ndarray] | None:
    """A seeded float32 batch for the session's one input, like normalised pixels; None if the
    graph's input is not one float tensor with fixed non-batch dimensions."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        return None
    dims = list(inputs[0].shape)[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(0.0, 1.0, (batch, *dims)), -1.8, 2.2).astype(np.float32)
    return {inputs[0].name: pixels}


def identical_outputs(original: Any, rewritten: Any, feeds: dict[str, np.ndarray]) -> bool:
    """Every output of both sessions on ``feeds`` is bit-identical (same dtype, shape, bytes)."""
    ours, theirs = original.run(None, feeds), rewritten.run(None, feeds)
    return len(ours) == len(theirs) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(ours, theirs, strict=True)
    )


# --- entry point ---------------------------------------------------------------------------------


def cache_folder() -> Path:
    """Where checked rewrites are kept: ``<IMGBEDDINGS_CACHE or ~/.cache/imgbeddings>/int8-fastpath``."""
    return (settings.cache_dir() or Path.home() / ".cache" / "imgbeddings") / "int8-fastpath"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.incomplete")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _read_record(path: Path) -> dict[str, Any] | None:
    """A cache record, or None if absent or unreadable."""
    try:
        record = json.loads(path.read_text())
        valid = isinstance(record["identical"], bool) and all(
            isinstance(record[k], int) for k in ("matmuls", "convs")
        )
    except (OSError, ValueError, KeyError, TypeError):  # absent, half-written or foreign
        return None
    return record if valid else None


def _write_record(
    target: Path, identical: bool, counts: tuple[int, int], source: Path, detail: str = ""
) -> None:
    record: dict[str, Any] = {"identical": identical, "matmuls": counts[0], "convs": counts[1]}
    record["source"] = str(source)
    if detail:
        record["detail"] = detail
    _write_atomic(target, json.dumps(record, indent=1).encode())


def _drop_stale(folder: Path, key: str) -> None:
    """Remove rewrites of the same source made for another runtime or rewriter version."""
    source = key.split("-", 1)[0]
    for stale in folder.glob(f"{source}-*"):
        if not stale.name.startswith(key) and not stale.name.endswith(".incomplete"):
            with contextlib.suppress(OSError):
                stale.unlink()


def _mismatch_warning(path: Path, detail: str) -> None:
    warnings.warn(
        f"the INT8 fast path did not reproduce the outputs of {path} exactly ({detail}); running the "
        "file as it is (slower kernels). Set IMGBEDDINGS_INT8_FASTPATH=0 to skip this check.",
        RuntimeWarning,
        stacklevel=4,
    )


def prepare(
    path: str | Path,
    open_session: Callable[[Any], Any],
    *,
    runtime_version: str,
    cache: Path | None = None,
) -> tuple[Any | None, Int8Rewrite | None]:
    """The session to use for an original-format INT8 file, rewritten for the fast kernels.

    ``open_session(path_or_bytes)`` creates an ONNX Runtime session with the caller's options.
    Returns ``(None, None)`` when there is nothing to do (the caller opens the file as usual),
    else a session and what happened. Errors opening the original file propagate.
    """
    started, path = time.perf_counter(), Path(path)
    summary = read_summary(path)
    plan = make_plan(summary) if summary else Plan()
    if not plan:
        return None, None
    if not kernel_exact(open_session, runtime_version):
        logger.info("int8 fast path: this CPU's U8S8 kernel is not exact (no VNNI/AMX); %s runs as is", path)
        return None, None
    folder = cache or cache_folder()
    key = f"{_sha256(path)}-ort{runtime_version}-r{REWRITE_VERSION}"
    record_path, model_path = folder / f"{key}.json", folder / f"{key}.onnx"
    record = _read_record(record_path)
    if record is not None:
        counts = (record["matmuls"], record["convs"])
        if not record["identical"]:
            _mismatch_warning(path, f"checked once, recorded in {record_path}")
            return None, Int8Rewrite(*counts, False, None, True, time.perf_counter() - started)
        try:
            session = open_session(str(model_path))
        except Exception as exc:  # a damaged or missing cache entry: rewrite it again below
            logger.debug("int8 fast path: cached %s unusable (%s); rewriting", model_path, exc)
        else:
            return session, Int8Rewrite(*counts, True, model_path, True, time.perf_counter() - started)

    import onnx

    original = open_session(str(path))
    feeds = check_batch(original)
    if feeds is None:
        logger.info("int8 fast path: %s has no fixed-size float input to check with; runs as is", path)
        return original, None
    detail = ""
    for attempt in dict.fromkeys([plan, make_plan(summary, convs=False)]):
        if not attempt:
            continue
        try:  # a runtime may lack a kernel (e.g. SpaceToDepth on uint8) or reject a shape
            data = rewrite(onnx.load(str(path)), attempt).SerializeToString()
            candidate = open_session(data)
            same = identical_outputs(original, candidate, feeds)
            detail = "" if same else "outputs differ on a generated batch"
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            detail, same = f"{type(exc).__name__}: {exc}", False
        if not same:
            logger.debug(
                "int8 fast path: rewrite of %d MatMulInteger + %d ConvInteger in %s rejected: %s",
                *(len(attempt.matmuls), len(attempt.convs)), path, detail,
            )  # fmt: skip
            continue
        counts = (len(attempt.matmuls), len(attempt.convs))
        stored: Path | None = model_path
        try:
            _write_atomic(model_path, data)
            _write_record(record_path, True, counts, path)
            _drop_stale(folder, key)
        except OSError as exc:
            logger.debug("int8 fast path: cannot cache the rewrite of %s in %s: %s", path, folder, exc)
            stored = None
        return candidate, Int8Rewrite(*counts, True, stored, False, time.perf_counter() - started)
    counts = (len(plan.matmuls), len(plan.convs))
    with contextlib.suppress(OSError):
        _write_record(record_path, False, counts, path, detail)
    _mismatch_warning(path, detail)
    return original, Int8Rewrite(*counts, False, None, False, time.perf_counter() - started)
