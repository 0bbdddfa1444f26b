"""The weighted layers of a graph (Conv, Gemm, MatMul) and their shapes.

Decomposition and unstructured pruning act per layer, named by the layer's
weight initializer (the same name the PyTorch parameter has).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from adans_toolchain.analysis.graph import Graph, attributes


@dataclass(frozen=True)
class WeightedLayer:
    node: str
    op: str  # "Conv", "Gemm" or "MatMul"
    weight: str
    bias: str | None
    input: str
    output: str
    c_in: int
    c_out: int
    kernel: tuple[int, ...]  # () for Gemm/MatMul
    groups: int
    in_spatial: int  # input positions per image (H*W; 1 for Gemm/MatMul)
    out_spatial: int
    weight_shape: tuple[int, ...]
    trans_b: bool = True  # Gemm: weight stored as [out, in]

    @property
    def size(self) -> int:
        return prod(self.weight_shape)

    @property
    def is_pointwise(self) -> bool:
        return self.op != "Conv" or all(k == 1 for k in self.kernel)

    @property
    def macs_per_image(self) -> int:
        per_output = (self.c_in // self.groups) * prod(self.kernel or (1,))
        return self.c_out * self.out_spatial * per_output


def weighted_layers(graph: Graph) -> list[WeightedLayer]:
    layers = []
    for node in graph.nodes:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        if w not in graph.initializers or x not in graph.activations:
            continue
        attrs = attributes(node)
        x_shape, y_shape, w_shape = graph.shapes[x], graph.shapes[y], tuple(graph.shapes[w])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in graph.initializers else None
        if node.op_type == "Conv":
            layers.append(
                WeightedLayer(
                    node.name, "Conv", w, bias, x, y, x_shape[1], y_shape[1], w_shape[2:], int(attrs.get("group", 1)),
                    prod(x_shape[2:]), prod(y_shape[2:]), w_shape,
                )
            )
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or len(w_shape) != 2:
                continue
            trans_b = bool(attrs.get("transB", 0))
            c_out, c_in = w_shape if trans_b else w_shape[::-1]
            layers.append(WeightedLayer(node.name, "Gemm", w, bias, x, y, c_in, c_out, (), 1, 1, 1, w_shape, trans_b))
        elif len(w_shape) == 2 and len(x_shape) == 2:
            c_in, c_out = w_shape
            layers.append(WeightedLayer(node.name, "MatMul", w, None, x, y, c_in, c_out, (), 1, 1, 1, w_shape, False))
    return layers
