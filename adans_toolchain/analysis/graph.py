"""A read-only view of an ONNX graph with concrete shapes for every tensor.

Shapes come from running the graph once in ONNX Runtime with every
intermediate tensor exposed as an output. That is exact where symbolic shape
inference gives up (shapes computed at run time by Shape/Gather/Concat
chains), and it yields the values of the small integer tensors that feed
Reshape, Pad and Slice too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

# Batch size used to discover shapes; 2 (not 1) so that the batch axis of an
# activation cannot be confused with a broadcast axis of size one.
PROBE_BATCH = 2


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Graph:
    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constants and small integer tensors

    @classmethod
    def from_model(cls, model: onnx.ModelProto, image_shape: tuple[int, ...] | None = None) -> "Graph":
        graph = cls(model)
        graph._probe(image_shape)
        return graph

    # -- structure ---------------------------------------------------------
    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    @cached_property
    def initializers(self) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer}

    @cached_property
    def producer(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.model.graph.node for out in n.output if out}

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        result: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.model.graph.node:
            for name in n.input:
                if name:
                    result[name].append(n)
        return result

    @property
    def input_name(self) -> str:
        return self.model.graph.input[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    @cached_property
    def activations(self) -> frozenset[str]:
        """Tensors that depend on the model input (everything else is a constant)."""
        live = {i.name for i in self.model.graph.input}
        for n in self.model.graph.node:  # ONNX requires topological order
            if any(i in live for i in n.input if i):
                live.update(o for o in n.output if o)
        return frozenset(live)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.values

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return self.initializers[name]
        return self.values.get(name)

    # -- shape probing -----------------------------------------------------
    def _probe(self, image_shape: tuple[int, ...] | None) -> None:
        from adans_toolchain.runtime.sessions import make_session

        graph_input = self.model.graph.input[0]
        if image_shape is None:
            dims = graph_input.type.tensor_type.shape.dim
            image_shape = tuple(d.dim_value for d in dims[1:])
        feed_shape = (PROBE_BATCH, *image_shape)
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        inferred = onnx.shape_inference.infer_shapes(probe)
        elem_types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
        elem_types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
        existing = {o.name for o in probe.graph.output}
        for n in probe.graph.node:
            for out in n.output:
                if out and out not in existing and elem_types.get(out):
                    probe.graph.output.append(onnx.helper.make_tensor_value_info(out, elem_types[out], None))
                    existing.add(out)
        session = make_session(probe, threads=1, optimize=False)
        rng = np.random.default_rng(0)
        feed = {graph_input.name: rng.standard_normal(feed_shape).astype(np.float32)}
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(names, feed)
        self.shapes = {graph_input.name: feed_shape}
        for name, value in zip(names, outputs):
            value = np.asarray(value)
            self.shapes[name] = tuple(int(d) for d in value.shape)
            if name not in self.activations or (value.dtype.kind in "iub" and value.size <= 64):
                self.values[name] = value
        for name, value in self.initializers.items():
            self.shapes[name] = tuple(value.shape)
