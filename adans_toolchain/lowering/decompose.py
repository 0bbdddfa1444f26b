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

from adans_toolchain.analysis.factors import SVD_FACTORS, TUCKER_FACTORS, factor_name
from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.graph import attributes
from adans_toolchain.analysis.layers import WeightedLayer
from adans_toolchain.errors import LoweringError
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.decomposition import Factorizations
from adans_toolchain.lowering.base import Condition, LoweringPass, PassResult
from adans_toolchain.lowering.prune_channels import kept_channels


class DecomposePass(LoweringPass):
    name = "decompose"

    def __init__(self, analysis: ChannelAnalysis, plan: Plan, factorizations: Factorizations) -> None:
        self.analysis = analysis
        self.plan = plan
        self.factorizations = factorizations

    def requires(self) -> list[Condition]:
        # The factors are cut to the kept channels, so the layer they replace must already be.
        return [Condition("decomposed weights already have the plan's kept channel counts (prune-channels ran)", self._pruned)]

    def ensures(self, source: onnx.ModelProto) -> list[Condition]:
        bases = {n.input[1]: n.name or n.output[0] for n in source.graph.node if len(n.input) > 1}
        return [
            Condition("no decomposed layer's original weight remains", self._originals_gone),
            Condition("every decomposed layer's factor nodes exist", lambda model: self._factors_present(model, bases)),
        ]

    def _pruned(self, model: onnx.ModelProto) -> str | None:
        kept = kept_channels(self.analysis, self.plan)
        dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
        for d in self.plan.active_decompositions:
            layer = self.factorizations.layers[d.layer]
            want = (_count(kept, layer.input, layer.c_in), _count(kept, layer.output, layer.c_out))
            got = _in_out(layer, dims[d.layer]) if d.layer in dims else None
            if got != want:
                return f"'{d.layer}' has (in, out) channels {got}, the plan keeps {want}"
        return None

    def _originals_gone(self, model: onnx.ModelProto) -> str | None:
        left = {i.name for i in model.graph.initializer} | {i for n in model.graph.node for i in n.input}
        stale = [d.layer for d in self.plan.active_decompositions if d.layer in left]
        return f"still in the graph: {stale[:3]}" if stale else None

    def _factors_present(self, model: onnx.ModelProto, bases: dict[str, str]) -> str | None:
        names = {n.name for n in model.graph.node}
        for d in self.plan.active_decompositions:
            missing = [f for f in _expected_factors(self.factorizations.layers[d.layer], d) if factor_name(bases[d.layer], f) not in names]
            if missing:
                return f"'{d.layer}' lacks the factor nodes {missing}"
        return None

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


def _count(kept: dict[str, np.ndarray], tensor: str, full: int) -> int:
    return len(kept[tensor]) if tensor in kept else full


def _in_out(layer: WeightedLayer, dims: tuple[int, ...]) -> tuple[int, int] | None:
    """(in, out) channels of a weight of `layer`'s layout: Conv and transposed Gemm store [out, in, ...]."""
    if len(dims) < 2:
        return None
    return (dims[1], dims[0]) if layer.op == "Conv" or layer.trans_b else (dims[0], dims[1])


def _expected_factors(layer: WeightedLayer, d) -> tuple[str, ...]:
    """The factor node suffixes `_factor_nodes` writes: Tucker drops the 1x1 of a mode kept at full rank."""
    if d.method != "tucker":
        return SVD_FACTORS
    tucker_in, core, tucker_out = TUCKER_FACTORS
    return tuple(f for f, used in ((tucker_in, d.ranks[0] < layer.c_in), (core, True), (tucker_out, d.ranks[1] < layer.c_out)) if used)


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
