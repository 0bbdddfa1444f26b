"""Replace decomposed layers by their factors, after channel pruning.

Pruning runs first (it slices the layer's weight like any other), then this
pass swaps the layer for its factors restricted to the kept channels:

    kxk Conv  ->  Conv 1x1 (c->r1) -> Conv kxk (r1->r2, original stride,
                  padding, dilation) -> Conv 1x1 (r2->f, original bias)
    1x1 Conv  ->  Conv 1x1 (c->r, original stride) -> Conv 1x1 (r->f, bias)
    Gemm      ->  Gemm (c->r) -> Gemm (r->f, alpha, beta, C)
    MatMul    ->  MatMul (c->r) -> MatMul (r->f)

The factors come from the same cached factorisation that scored the
candidate, so (U_out[kept] core U_in[kept]^T) equals the substituted
reconstruction with the pruned rows and columns removed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from adans_toolchain.analysis.factors import factor_name
from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.graph import attributes
from adans_toolchain.errors import LoweringError
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.decomposition import Factorizations
from adans_toolchain.lowering.base import LoweringPass, PassResult
from adans_toolchain.lowering.prune_channels import kept_channels


class DecomposePass(LoweringPass):
    name = "decompose"
    requires = ("runs after prune-channels on the same plan",)
    ensures = ("every decomposed layer is a chain of smaller Conv/Gemm/MatMul nodes",)

    def __init__(self, analysis: ChannelAnalysis, plan: Plan, factorizations: Factorizations) -> None:
        self.analysis = analysis
        self.plan = plan
        self.factorizations = factorizations

    def check(self, model: onnx.ModelProto) -> str | None:
        weights = {n.input[1] for n in model.graph.node if len(n.input) > 1}
        missing = [d.layer for d in self.plan.active_decompositions if d.layer not in weights]
        return f"no node reads the weight(s) {missing[:3]}" if missing else None

    def apply(self, model: onnx.ModelProto) -> PassResult:
        decompositions = {d.layer: d for d in self.plan.active_decompositions}
        if not decompositions:
            return PassResult(model, False)
        kept = kept_channels(self.analysis, self.plan)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        initializers = {i.name: i for i in out.graph.initializer}
        new_nodes, new_inits = [], []
        for node in out.graph.node:
            d = decompositions.get(node.input[1]) if len(node.input) > 1 else None
            if d is None:
                new_nodes.append(node)
                continue
            layer = self.factorizations.layers[d.layer]
            factors = self.factorizations.factor_weights(d.layer, d.ranks, kept.get(layer.input), kept.get(layer.output))
            nodes, inits = _factor_nodes(node, d.method, factors)
            new_nodes.extend(nodes)
            new_inits.extend(inits)
        del out.graph.node[:]
        out.graph.node.extend(new_nodes)
        used = {i for n in out.graph.node for i in n.input}
        for name in decompositions:
            if name not in used and name in initializers:
                out.graph.initializer.remove(initializers[name])
        out.graph.initializer.extend(new_inits)
        del out.graph.value_info[:]
        return PassResult(out, True)


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


def _factor_nodes(node: onnx.NodeProto, method: str, factors: list) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    base = node.name or y
    attrs = attributes(node)
    nodes, inits = [], []
    if node.op_type == "Conv":
        pointwise = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1}
        if method == "tucker":
            first, core, last = factors
            if first is not None:
                inits.append(_tensor(f"{w}.tucker_in", first[:, :, None, None]))
                nodes.append(helper.make_node("Conv", [x, f"{w}.tucker_in"], [factor_name(y, "tucker_in")], name=factor_name(base, "tucker_in"), **pointwise))
                x = factor_name(y, "tucker_in")
            core_out = factor_name(y, "tucker_core") if last is not None else y
            inits.append(_tensor(f"{w}.tucker_core", core))
            core_inputs = [x, f"{w}.tucker_core"] + ([bias] if bias and last is None else [])
            nodes.append(helper.make_node("Conv", core_inputs, [core_out], name=factor_name(base, "tucker_core"), **attrs))
            if last is not None:
                inits.append(_tensor(f"{w}.tucker_out", last[:, :, None, None]))
                inputs = [core_out, f"{w}.tucker_out"] + ([bias] if bias else [])
                nodes.append(helper.make_node("Conv", inputs, [y], name=factor_name(base, "tucker_out"), **pointwise))
            return nodes, inits
        v, us = factors
        inits += [_tensor(f"{w}.svd_in", v[:, :, None, None]), _tensor(f"{w}.svd_out", us[:, :, None, None])]
        nodes.append(helper.make_node("Conv", [x, f"{w}.svd_in"], [factor_name(y, "svd")], name=factor_name(base, "svd_in"), **attrs))
        nodes.append(helper.make_node("Conv", [factor_name(y, "svd"), f"{w}.svd_out"] + ([bias] if bias else []), [y], name=factor_name(base, "svd_out"), **pointwise))
        return nodes, inits
    v, us = factors
    if node.op_type == "Gemm":
        inits += [_tensor(f"{w}.svd_in", v), _tensor(f"{w}.svd_out", us)]
        nodes.append(helper.make_node("Gemm", [x, f"{w}.svd_in"], [factor_name(y, "svd")], name=factor_name(base, "svd_in"), transB=1))
        second = {k: v_ for k, v_ in attrs.items() if k in ("alpha", "beta")}
        nodes.append(helper.make_node("Gemm", [factor_name(y, "svd"), f"{w}.svd_out"] + ([bias] if bias else []), [y], name=factor_name(base, "svd_out"), transB=1, **second))
        return nodes, inits
    if node.op_type == "MatMul":
        inits += [_tensor(f"{w}.svd_in", v.T), _tensor(f"{w}.svd_out", us.T)]
        nodes.append(helper.make_node("MatMul", [x, f"{w}.svd_in"], [factor_name(y, "svd")], name=factor_name(base, "svd_in")))
        nodes.append(helper.make_node("MatMul", [factor_name(y, "svd"), f"{w}.svd_out"], [y], name=factor_name(base, "svd_out")))
        return nodes, inits
    raise LoweringError(f"cannot factorise {node.op_type} node '{node.name}'")
