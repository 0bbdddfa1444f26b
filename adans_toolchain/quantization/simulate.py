"""Simulated int8 (fake quantization) in PyTorch: the float model plus a QuantSpec computes the QDQ model's logits.

The float ONNX graph is interpreted with PyTorch operators (the interpreter
fine-tuning uses, finetune/onnx_module.py) and, where the spec says so:

- an edge read through Q -> DQ gets clamp(round(x / s) + z, qmin, qmax) - z, times s
  (QuantizeLinear rounds half to even, as torch.round does, and saturates);
- a weight or bias is replaced by its dequantized integers, computed with
  ONNX Runtime's own arithmetic (spec.quantize_constant);
- a Relu/Clip the QDQ model folded away is skipped (its consumers read the
  tensor before it, whose quantization clamps at the zero point);
- a quantized graph output is quantized last.

Everything else is float32 in both. What is not simulated: ONNX Runtime's
integer kernels accumulate in int32 and requantize with a float multiplier,
so a value on a rounding boundary can land one step away; the step then
travels through the rest of the network. Those are the differences
validate.py allows (and measures).

`calibrated_spec` computes the parameters the way quantize_static does
(MinMax ranges of the float model over the calibration images, ONNX
Runtime's formulas), from any weights: what a search needs to score an int8
candidate without building its QDQ model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np
import onnx
import torch

from adans_toolchain.analysis.graph import attributes
from adans_toolchain.errors import LoweringError
from adans_toolchain.finetune.onnx_module import _OPS as OPERATORS  # noqa: N811 - the interpreter's operator table
from adans_toolchain.finetune.onnx_module import OnnxModule, store_outputs
from adans_toolchain.quantization.qdq import WEIGHT_RANGE
from adans_toolchain.quantization.spec import (
    ActivationQuant, ConstantQuant, QuantSpec, activation_params, adjust_weight_scale_for_bias, bias_scale, weight_params,
)


def fake_quant(x: torch.Tensor, q: ActivationQuant) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear, in float32."""
    levels = torch.clamp(torch.round(x / q.scale) + q.zero_point, q.qmin, q.qmax)
    return (levels - q.zero_point) * q.scale


class SimulatedInt8(torch.nn.Module):
    """The float ONNX model run in PyTorch with the spec's quantization (see the module docstring).

    `weights` (by initializer name) replace the float model's values before
    quantization, as substitution does for search candidates.
    """

    def __init__(self, float_model: onnx.ModelProto, spec: QuantSpec, image_shape: tuple[int, ...] | None = None,
                 *, weights: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        try:
            self.graph = OnnxModule(float_model, image_shape).eval()
        except LoweringError as e:  # its message speaks of fine-tuning, whose interpreter this is
            raise LoweringError(f"the int8 simulation cannot run this model ({e}); run without --quantize int8") from e
        self.spec = spec
        names = {n.name for n in self.graph.nodes}
        stray = sorted({node for node, _ in (*spec.activations, *spec.constants)} - names)
        if stray:
            raise LoweringError(f"the int8 spec names node(s) {stray[:3]} the float model does not run")
        self.floats = {name: self.graph.params[key].detach().numpy() for name, key in self.graph.param_names.items()}
        self.floats.update({name: np.asarray(v) for name, v in (weights or {}).items()})
        self.constants = {key: torch.from_numpy(c.dequantized(self.floats[c.initializer])) for key, c in spec.constants.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, quantize=True)

    def float_forward(self, x: torch.Tensor, observe: dict[str, list[float]] | None = None) -> torch.Tensor:
        """The float model (with `weights`); `observe` maps tensor names to [min, max] seen so far, updated in place."""
        return self._run(x, quantize=False, observe=observe)

    def _run(self, x: torch.Tensor, *, quantize: bool, observe: dict[str, list[float]] | None = None) -> torch.Tensor:
        graph, spec = self.graph, self.spec
        env: dict[str, object] = {graph.input_name: x}
        if observe is not None:
            _observe(observe, graph.input_name, x)
        for node in graph.nodes:
            if quantize and node.name in spec.removed:
                env[node.output[0]] = graph._value(env, node.input[0])
                continue
            inputs = []
            for index, name in enumerate(node.input):
                key = (node.name, index)
                if not name:
                    inputs.append(None)
                elif quantize and key in self.constants:
                    inputs.append(self.constants[key])
                elif name in self.floats and name not in env:
                    inputs.append(torch.from_numpy(self.floats[name]))
                else:
                    value = graph._value(env, name)
                    inputs.append(fake_quant(value, spec.activations[key]) if quantize and key in spec.activations else value)
            store_outputs(env, node, OPERATORS[node.op_type](graph, node, inputs, attributes(node)))
            if observe is not None:
                for name in node.output:
                    if name and name in env:
                        _observe(observe, name, env[name])
        out = env[graph.output_name]
        if quantize and graph.output_name in spec.outputs:
            out = fake_quant(out, spec.outputs[graph.output_name])
        return out


def _observe(observe: dict[str, list[float]], name: str, value) -> None:
    if name in observe and torch.is_tensor(value) and value.is_floating_point() and value.numel():
        seen = observe[name]
        seen[0] = min(seen[0], float(value.min()))
        seen[1] = max(seen[1], float(value.max()))


def _batches(x, batch_size: int):
    x = torch.as_tensor(x)
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


def simulate_logits(float_model: onnx.ModelProto, spec: QuantSpec, x, *, image_shape: tuple[int, ...] | None = None,
                    batch_size: int = 250, weights: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of the simulated int8 model on images `x` (NCHW float)."""
    module = SimulatedInt8(float_model, spec, image_shape or tuple(torch.as_tensor(x).shape[1:]), weights=weights)
    with torch.no_grad():
        return torch.cat([module(b) for b in _batches(x, batch_size)]).numpy()


def calibrated_spec(float_model: onnx.ModelProto, structure: QuantSpec, images, *, image_shape: tuple[int, ...] | None = None,
                    batch_size: int = 250, weights: Mapping[str, np.ndarray] | None = None) -> QuantSpec:
    """`structure`'s edges with parameters computed as quantize_static computes them, from `weights` and `images`.

    Activations: MinMax ranges of the float model over `images` (each from
    the tensor ONNX Runtime calibrates it by), then compute_scale_zp. Weights:
    symmetric per channel over WEIGHT_RANGE, enlarged where the int32 bias
    needs it. Biases: input scale x weight scale. Equal to what a QDQ model
    built from the same weights and images stores, up to the last bit of a
    range (ONNX Runtime's float kernels and PyTorch's sum in different orders).
    """
    module = SimulatedInt8(float_model, replace(structure, constants={}), image_shape or tuple(torch.as_tensor(images).shape[1:]),
                           weights=weights)
    quants = {**structure.activations, **{("", i): q for i, q in enumerate(structure.outputs.values())}}
    ranges = {q.range_of: [np.inf, -np.inf] for q in quants.values()}
    with torch.no_grad():
        for batch in _batches(images, batch_size):
            module.float_forward(batch, observe=ranges)

    def calibrated(q: ActivationQuant) -> ActivationQuant:
        rmin, rmax = ranges[q.range_of]
        scale, zero_point = activation_params(np.float32(rmin), np.float32(rmax), q.qmin, q.qmax)
        return replace(q, scale=scale, zero_point=zero_point)

    activations = {key: calibrated(q) for key, q in structure.activations.items()}
    outputs = {name: calibrated(q) for name, q in structure.outputs.items()}
    # Constants that are neither a weight nor its bias (a Pad's fill value) are quantized from their own value,
    # which no candidate changes: their parameters stay the structure's.
    layers = structure.layers
    constants = {key: c for key, c in structure.constants.items() if key[0] not in layers or key[1] not in (1, 2)}
    for (node, index), c in structure.constants.items():
        if index != 1:
            continue
        if c.dtype != np.int8 or c.axis is None:
            raise LoweringError(f"node '{node}': only per-channel int8 weights can be calibrated, not {c.dtype}")
        value = module.floats[c.initializer]
        scale, zero_point = weight_params(value, c.axis, *WEIGHT_RANGE)
        bias = structure.constants.get((node, 2))
        if bias is not None:
            input_scale = activations[(node, 0)].scale
            scale = adjust_weight_scale_for_bias(input_scale, scale, module.floats[bias.initializer])
            constants[(node, 2)] = ConstantQuant(bias_scale(input_scale, scale), np.zeros(scale.shape, np.int32), 0, np.dtype(np.int32),
                                                 bias.initializer)
        constants[(node, 1)] = ConstantQuant(scale, zero_point, c.axis, np.dtype(np.int8), c.initializer)
    return replace(structure, activations=activations, constants=constants, outputs=outputs)
