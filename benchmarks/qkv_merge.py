"""Graph surgery tried for export speed (not kept, see README "Export speed"): merge sibling
MatMul + bias-Add nodes that read the same tensor with constant weights (the Q, K and V
projections) into one wider MatMul + Add + Split."""

from __future__ import annotations

import collections

import numpy as np


def merge_sibling_matmuls(model) -> int:  # onnx.ModelProto, modified in place
    """Merge each group of >= 2 MatMul(+constant-bias Add) nodes sharing an input; returns the count."""
    from onnx import helper, numpy_helper

    g = model.graph
    consts = {i.name: i for i in g.initializer}
    for n in g.node:  # constants behind Identity nodes (the TorchScript exporter dedupes weights so)
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    consumers = collections.defaultdict(list)
    for n in g.node:
        for name in n.input:
            consumers[name].append(n)
    groups = collections.defaultdict(list)
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in consts and len(consts[n.input[1]].dims) == 2:
            groups[n.input[0]].append(n)
    merged = 0
    for source, matmuls in groups.items():
        adds = []
        for m in matmuls:
            users = consumers[m.output[0]]
            ok = len(users) == 1 and users[0].op_type == "Add" and any(x in consts for x in users[0].input)
            adds.append(users[0] if ok else None)
        if len(matmuls) < 2 or None in adds:
            continue
        weights = [numpy_helper.to_array(consts[m.input[1]]) for m in matmuls]
        biases = [numpy_helper.to_array(consts[next(x for x in a.input if x in consts)]) for a in adds]
        tag = f"merged_matmul_{merged}"
        w = numpy_helper.from_array(np.concatenate(weights, 1), tag + "_W")
        b = numpy_helper.from_array(np.concatenate(biases, 0), tag + "_B")
        split = numpy_helper.from_array(
            np.array([x.shape[1] for x in weights], dtype=np.int64), tag + "_split"
        )
        g.initializer.extend([w, b, split])
        at = min(list(g.node).index(m) for m in matmuls)
        new = [
            helper.make_node("MatMul", [source, w.name], [tag + "_mm"], name=tag),
            helper.make_node("Add", [tag + "_mm", b.name], [tag + "_add"], name=tag + "_Add"),
            helper.make_node("Split", [tag + "_add", split.name], [a.output[0] for a in adds], axis=-1,
                             name=tag + "_Split"),
        ]  # fmt: skip
        for n in matmuls + adds:
            g.node.remove(n)
        for k, n in enumerate(new):
            g.node.insert(at + k, n)
        merged += 1
    return merged
