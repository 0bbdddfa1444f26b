"""Post-training int8 quantization (issue 15): QDQ models from ONNX Runtime, and their exact simulation.

`qdq.quantize_model` builds the int8 model with onnxruntime.quantization
(QDQ format: QuantizeLinear/DequantizeLinear pairs around float operators,
which ONNX Runtime fuses into integer kernels when it loads the model).
`spec.QuantSpec` is what such a model quantizes, keyed by the *float*
model's node names: every activation read through a Q/DQ pair, every
constant stored as integers, every activation the quantizer folded away.
`simulate.SimulatedInt8` runs the float model with those fake-quantized
edges in PyTorch, so a search can score int8 candidates without building
a QDQ model for each; `validate.validate_int8` checks on every compile
that ONNX Runtime's int8 model computes what the simulation computes.
`cost` gives weight bytes and MACs by precision for the cost models.
"""

from adans_toolchain.quantization.qdq import INT8_SCHEME, quantize_model, quantized_nodes, weighted_layers
from adans_toolchain.quantization.simulate import SimulatedInt8, calibrated_spec, simulate_logits
from adans_toolchain.quantization.spec import QuantSpec, read_spec
from adans_toolchain.quantization.validate import Int8Validation, validate_int8

__all__ = [
    "INT8_SCHEME", "Int8Validation", "QuantSpec", "SimulatedInt8", "calibrated_spec", "quantize_model", "quantized_nodes",
    "read_spec", "simulate_logits", "validate_int8", "weighted_layers",
]
