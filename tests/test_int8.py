"""The INT8 fast path: original-format (QUInt8) files rewritten for ONNX Runtime's U8S8 kernels
must give bit-identical outputs, touch only what is safe, fall back with a warning, and stay off
when asked to."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, load_reference
from imgbeddings import int8
from imgbeddings.runtime import CPU, OnnxModel, session_options

ORIGINAL_FORMAT = ["tiny_b32_legacy_int8", "tiny_b16_legacy_int8"]


@pytest.fixture(scope="module")
def exact_kernels() -> None:
    """The fast path only runs where ONNX Runtime's U8S8 kernel is exact (VNNI, AMX, ARM)."""
    import onnxruntime as ort

    def open_session(model):
        return ort.InferenceSession(model, session_options(1), providers=[CPU])

    if not int8.kernel_exact(open_session, ort.__version__):
        pytest.skip("this CPU's U8S8 kernel saturates (AVX2 without VNNI): the fast path stays off here")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return load_reference("pixels")["pad"]


def initializer_types(path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("name", ORIGINAL_FORMAT)
def test_rewrite_is_bit_identical_on_reference_pixels(name, pixels, exact_kernels):
    path = MODELS / f"{name}.onnx"
    before = path.read_bytes()
    fast, plain = OnnxModel(path), OnnxModel(path, int8_fastpath=False)
    info = fast.int8_rewrite
    assert info is not None and info.verified and not info.from_cache
    assert info.matmuls > 0 and info.convs == 1 and info.cached is not None
    assert plain.int8_rewrite is None
    for batch in (pixels, pixels[:3], pixels[5:6]):
        ours, theirs = fast.run(batch), plain.run(batch)
        assert ours.tobytes() == theirs.tobytes() and np.abs(ours - theirs).max() == 0.0
    assert path.read_bytes() == before  # the original file is never modified


@pytest.mark.parametrize("name", ORIGINAL_FORMAT)
def test_rewritten_graph_reads_int8_weights(name, exact_kernels):
    info = OnnxModel(MODELS / f"{name}.onnx").int8_rewrite
    model = onnx.load(str(info.cached))
    types = {t.name: t.data_type for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert "ConvInteger" not in ops and "SpaceToDepth" in ops
    assert len(matmuls) == info.matmuls + info.convs
    assert all(types[n.input[1]] == types[n.input[3]] == TensorProto.INT8 for n in matmuls)
    original = initializer_types(MODELS / f"{name}.onnx")
    # the position-embedding table read by Gather/DequantizeLinear stays uint8
    gathered = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in original]
    assert gathered and all(types[t] == original[t] == TensorProto.UINT8 for t in gathered)


def test_second_load_comes_from_cache(pixels, exact_kernels, monkeypatch):
    path = MODELS / "tiny_b32_legacy_int8.onnx"
    first = OnnxModel(path)
    calls = []
    monkeypatch.setattr(int8, "rewrite", lambda *a: calls.append(a))
    second = OnnxModel(path)
    assert second.int8_rewrite.from_cache and second.int8_rewrite.cached == first.int8_rewrite.cached
    assert not calls
    assert second.run(pixels).tobytes() == first.run(pixels).tobytes()


def test_opt_out_by_parameter_and_env(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(int8, "prepare", lambda *a, **k: calls.append(a) or (None, None))
    path = MODELS / "tiny_b32_legacy_int8.onnx"
    assert OnnxModel(path, int8_fastpath=False).int8_rewrite is None
    monkeypatch.setenv("IMGBEDDINGS_INT8_FASTPATH", "0")
    assert OnnxModel(path).int8_rewrite is None
    assert not calls
    monkeypatch.setenv("IMGBEDDINGS_INT8_FASTPATH", "1")
    OnnxModel(path)
    assert len(calls) == 1


def test_opt_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGBEDDINGS_CACHE", str(tmp_path))
    OnnxModel(MODELS / "tiny_b32_legacy_int8.onnx", int8_fastpath=False)
    assert not (tmp_path / "int8-fastpath").exists()


@pytest.mark.parametrize("name", ["tiny_b32_legacy", "tiny_b32_proj"])
def test_float_models_are_untouched(name, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGBEDDINGS_CACHE", str(tmp_path))
    summary = int8.read_summary(MODELS / f"{name}.onnx")
    assert summary is not None and summary.nodes and not int8.make_plan(summary)
    assert OnnxModel(MODELS / f"{name}.onnx").int8_rewrite is None
    assert not (tmp_path / "int8-fastpath").exists()


def test_failed_check_falls_back_with_a_warning(pixels, exact_kernels, monkeypatch):
    path = MODELS / "tiny_b32_legacy_int8.onnx"
    real = int8.rewrite

    def corrupting(model, plan):
        real(model, plan)
        weight = next(t for t in model.graph.initializer if t.name in plan.flip and len(t.dims) == 2)
        weight.raw_data = bytes(b ^ 0x01 for b in weight.raw_data)
        return model

    monkeypatch.setattr(int8, "rewrite", corrupting)
    with pytest.warns(RuntimeWarning, match="tiny_b32_legacy_int8.onnx"):
        model = OnnxModel(path)
    assert model.int8_rewrite is not None and not model.int8_rewrite.verified
    plain = OnnxModel(path, int8_fastpath=False)
    assert model.run(pixels).tobytes() == plain.run(pixels).tobytes()
    calls = []
    monkeypatch.setattr(int8, "rewrite", lambda *a: calls.append(a))
    with pytest.warns(RuntimeWarning, match="checked once"):
        again = OnnxModel(path)
    assert again.int8_rewrite.from_cache and not again.int8_rewrite.verified and not calls


def test_conv_rewrite_failing_keeps_the_matmul_rewrite(pixels, exact_kernels, monkeypatch):
    """ONNX Runtime before ~1.18 has no uint8 SpaceToDepth: the MatMul part must still be used."""
    real = int8.rewrite

    def no_conv(model, plan):
        if plan.convs:
            raise ValueError("no SpaceToDepth for uint8 here")
        return real(model, plan)

    monkeypatch.setattr(int8, "rewrite", no_conv)
    path = MODELS / "tiny_b32_legacy_int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = OnnxModel(path)
    info = model.int8_rewrite
    assert info.verified and info.convs == 0 and info.matmuls > 0
    assert "ConvInteger" in [n.op_type for n in onnx.load(str(info.cached)).graph.node]
    plain = OnnxModel(path, int8_fastpath=False)
    assert model.run(pixels).tobytes() == plain.run(pixels).tobytes()


def test_rewrites_for_other_runtime_versions_are_removed(exact_kernels):
    path = MODELS / "tiny_b16_legacy_int8.onnx"
    first = OnnxModel(path).int8_rewrite.cached
    source = first.name.split("-", 1)[0]
    stale = [first.with_name(f"{source}-ort0.0.1-r1{ext}") for ext in (".onnx", ".json")]
    for old in stale:
        old.write_bytes(b"")
    first.unlink()  # force a fresh rewrite, which sweeps the folder
    assert OnnxModel(path).int8_rewrite.cached == first and first.is_file()
    assert not any(old.exists() for old in stale)


def test_inexact_kernel_keeps_the_file(monkeypatch):
    monkeypatch.setattr(int8, "kernel_exact", lambda *a: False)
    assert OnnxModel(MODELS / "tiny_b32_legacy_int8.onnx").int8_rewrite is None


def test_unwritable_cache_rewrites_in_memory(pixels, exact_kernels, monkeypatch):
    def refuse(target, data):
        raise PermissionError(f"read-only: {target}")

    monkeypatch.setattr(int8, "_write_atomic", refuse)
    path = MODELS / "tiny_b16_legacy_int8.onnx"
    model = OnnxModel(path)
    assert model.int8_rewrite.verified and model.int8_rewrite.cached is None
    plain = OnnxModel(path, int8_fastpath=False)
    assert model.run(pixels[:2]).tobytes() == plain.run(pixels[:2]).tobytes()


@pytest.mark.parametrize("name", ORIGINAL_FORMAT)
def test_summary_holds_what_the_planner_needs(name):
    path = MODELS / f"{name}.onnx"
    model, summary = onnx.load(str(path)), int8.read_summary(path)
    assert [n.op_type for n in summary.nodes] == [n.op_type for n in model.graph.node]
    assert [n.inputs for n in summary.nodes] == [list(n.input) for n in model.graph.node]
    assert {k: v[:2] for k, v in summary.tensors.items()} == {
        t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer
    }
    conv = next(n for n in model.graph.node if n.op_type == "ConvInteger")
    parsed = next(n for n in summary.nodes if n.op_type == "ConvInteger")
    assert parsed.attrs == {a.name: tuple(a.ints) if a.ints else a.i for a in conv.attribute}


# --- crafted graphs: what may and may not change ------------------------------------------------


def _u8(name, shape, seed):
    return numpy_helper.from_array(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), name)


def shared_weights_model(path):
    """x -> DynamicQuantizeLinear -> four MatMulIntegers:
    mm_shared: W1 also read by a Gather (stays uint8);
    mm_clean: W2/Z2 read only here (becomes int8);
    mm_zp: W3 clean, but its zero point Z1 is mm_shared's (so both stay uint8);
    mm_input: W4 is also the A input of another MatMulInteger (stays uint8)."""
    n = helper.make_node
    nodes = [
        n("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        n("MatMulInteger", ["xq", "W1", "xz", "Z1"], ["y1"], name="mm_shared"),
        n("MatMulInteger", ["xq", "W2", "xz", "Z2"], ["y2"], name="mm_clean"),
        n("MatMulInteger", ["xq", "W3", "xz", "Z1"], ["y3"], name="mm_zp"),
        n("MatMulInteger", ["xq", "W4", "xz", "Z4"], ["y4"], name="mm_input"),
        n("MatMulInteger", ["W4", "W5"], ["y5"], name="w4_as_a"),
        n("Gather", ["W1", "idx"], ["g"]),
        n("Cast", ["g"], ["gf"], to=TensorProto.FLOAT),
        n("ReduceSum", ["gf"], ["gs"], keepdims=0),
        n("Concat", ["y1", "y2", "y3", "y4"], ["ycat"], axis=1),
        n("Cast", ["ycat"], ["yf"], to=TensorProto.FLOAT),
        n("Cast", ["y5"], ["y5f"], to=TensorProto.FLOAT),
        n("Mul", ["yf", "xs"], ["out"]),
    ]
    inits = [
        _u8("W1", (8, 4), 1), _u8("W2", (8, 4), 2), _u8("W3", (8, 4), 3), _u8("W4", (8, 8), 4),
        _u8("W5", (8, 3), 5), _u8("Z1", (), 6), _u8("Z2", (), 7), _u8("Z4", (), 8),
        numpy_helper.from_array(np.array([0, 2], dtype=np.int64), "idx"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("gs", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("y5f", TensorProto.FLOAT, [8, 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_shared_initializers_are_left_alone(tmp_path, exact_kernels):
    path = shared_weights_model(tmp_path / "shared.onnx")
    summary = int8.read_summary(path)
    plan = int8.make_plan(summary)
    assert [summary.nodes[i].inputs[1] for i in plan.matmuls] == ["W2"]
    assert plan.flip == {"W2", "Z2"} and not plan.convs
    model = OnnxModel(path)
    assert model.int8_rewrite.verified and model.int8_rewrite.matmuls == 1
    types = initializer_types(model.int8_rewrite.cached)
    assert types["W2"] == types["Z2"] == TensorProto.INT8
    assert all(types[t] == TensorProto.UINT8 for t in ("W1", "Z1", "W3", "W4", "W5", "Z4"))
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    plain = OnnxModel(path, int8_fastpath=False)
    fast_out = model.session.run(None, {"x": x})
    plain_out = plain.session.run(None, {"x": x})
    assert all(a.tobytes() == b.tobytes() for a, b in zip(fast_out, plain_out, strict=True))


def test_weights_read_by_a_subgraph_are_left_alone(tmp_path):
    n = helper.make_node
    w_copy = helper.make_tensor_value_info("w_copy", TensorProto.UINT8, [8, 4])
    branch = helper.make_graph([n("Identity", ["W"], ["w_copy"])], "then", [], [w_copy])
    graph = helper.make_graph(
        [
            n("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            n("MatMulInteger", ["xq", "W", "xz", "Z"], ["y"]),
            n("If", ["c"], ["w_out"], then_branch=branch, else_branch=branch),
        ],
        "sub",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [_u8("W", (8, 4), 0), _u8("Z", (), 1)],
    )
    path = tmp_path / "sub.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    summary = int8.read_summary(path)
    assert "W" in summary.exposed and not int8.make_plan(summary)


def conv_model(path, step):
    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("ConvInteger", ["xq", "W", "xz", "Z"], ["y"], kernel_shape=[4, 4], strides=step),
            helper.make_node("Cast", ["y"], ["out"], to=TensorProto.FLOAT),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [_u8("W", (5, 3, 4, 4), 0), _u8("Z", (), 1)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_patch_convolution_becomes_an_int8_matmul(tmp_path, exact_kernels):
    path = conv_model(tmp_path / "conv.onnx", [4, 4])
    plan = int8.make_plan(int8.read_summary(path))
    assert plan.convs == (1,) and plan.flip == {"W", "Z"}
    assert not int8.make_plan(int8.read_summary(path), convs=False)
    model = OnnxModel(path)
    assert model.int8_rewrite.verified and model.int8_rewrite.convs == 1
    x = np.random.default_rng(3).normal(size=(3, 3, 16, 16)).astype(np.float32)
    plain = OnnxModel(path, int8_fastpath=False)
    assert model.run(x).tobytes() == plain.run(x).tobytes()


def test_overlapping_convolution_is_not_rewritten(tmp_path):
    path = conv_model(tmp_path / "conv.onnx", [2, 2])
    assert not int8.make_plan(int8.read_summary(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OnnxModel(path).int8_rewrite is None


# --- through the Embedder: the card decides who may gain -----------------------------------------


def test_embedder_uses_the_fast_path_with_identical_vectors(image_paths, exact_kernels):
    from imgbeddings import Embedder

    path = MODELS / "tiny_b32_legacy_int8.onnx"
    fast, plain = Embedder(path, batch_size=4), Embedder(path, batch_size=4, int8_fastpath=False)
    assert fast.onnx.int8_rewrite is not None and fast.onnx.int8_rewrite.verified
    assert plain.onnx.int8_rewrite is None
    assert fast.embed(image_paths).tobytes() == plain.embed(image_paths).tobytes()
    assert fast.fingerprint() == plain.fingerprint()  # the same vectors: the same output identity


def test_cards_of_other_precisions_are_not_scanned(tmp_path, monkeypatch):
    import json
    import shutil

    from imgbeddings import Embedder
    from imgbeddings.models.cards import card_path_for

    src = MODELS / "tiny_b32_legacy_int8.onnx"
    shutil.copy(src, tmp_path / src.name)
    card = json.loads(card_path_for(src).read_text())
    card["file"]["precision"] = "int8"  # our own recipe: signed weights already
    card_path_for(tmp_path / src.name).write_text(json.dumps(card))
    monkeypatch.setattr(int8, "read_summary", lambda path: pytest.fail("scanned a file its card rules out"))
    assert Embedder(tmp_path / src.name).onnx.int8_rewrite is None


def test_cli_opt_out(tmp_path, image_paths, exact_kernels):
    from imgbeddings import load
    from imgbeddings.cli import main

    model = str(MODELS / "tiny_b32_legacy_int8.onnx")
    outs = []
    for flag in ("--int8-fastpath", "--no-int8-fastpath"):
        out = tmp_path / flag
        with pytest.raises(SystemExit) as done:
            main(["embed", *map(str, image_paths), "-o", str(out), "-m", model, flag, "--no-progress"])
        assert done.value.code in (0, None)
        outs.append(load(out))
    assert outs[0].paths == outs[1].paths and outs[0].vectors.tobytes() == outs[1].vectors.tobytes()
