"""Post-training int8 QDQ models from onnxruntime.quantization.quantize_static.

The scheme (INT8_SCHEME), and why:

- QDQ format: QuantizeLinear/DequantizeLinear pairs around float operators.
  ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv (and Add, pooling,
  Gemm likewise) when it loads the model, and the same file stays a valid,
  readable ONNX graph whose quantization parameters can be read back.
- Weights int8, symmetric, per output channel, over [-64, 64]
  (`reduce_range`). On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels
  add pairs of products in int16 with saturation (vpmaddubsw): with the full
  [-127, 127] range, 255 x 127 x 2 overflows and the int8 model silently
  computes something else. Measured on the development machine (AVX2, no
  VNNI), CIFAR ResNet-20: full range agreed with the Q/DQ arithmetic on 95 %
  of the images (logits off by up to 16); [-64, 64] on 99.6 %, the rest
  being one-step rounding differences. 7-bit weights cannot saturate on any
  CPU, so the file is right wherever it runs; a weight still takes one byte.
- Activations uint8, asymmetric, per tensor (ONNX Runtime's recommendation
  for x86; a ReLU output uses all 256 levels). int8 activations were not
  fused on the development machine and ran slower than float.
- Calibration MinMax over the calibration images: the range is a running
  min/max, so the simulation (simulate.calibrated_spec) computes the same
  parameters for any candidate in one pass, exactly; a percentile needs
  histograms per tensor and its clipping is a second knob to tune.
- Which nodes: the weighted layers asked for (Conv, Gemm, MatMul with a
  constant weight; all of them by default) and every weight-free node
  (Relu, Add, pooling, ...) all of whose nearest weighted producers are
  quantized, so a chain of int8 layers stays int8 in between
  (`quantized_nodes`). Every other layer keeps its float weight and runs in
  float.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from adans_toolchain.errors import ConfigError, LoweringError
from adans_toolchain.quantization.spec import NODES_METADATA

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
WEIGHT_RANGE = (-64, 64)  # symmetric int8 over 7 bits: ORT's reduce_range (see the module docstring)
ACTIVATION_RANGE = (0, 255)  # uint8

INT8_SCHEME = {
    "format": "QDQ (QuantizeLinear/DequantizeLinear around float operators; ONNX Runtime fuses them into integer kernels)",
    "weights": f"int8, symmetric, per output channel, range [{WEIGHT_RANGE[0]}, {WEIGHT_RANGE[1]}] (reduce_range: no int16 "
               "saturation in x86 kernels without VNNI)",
    "bias": "int32, scale = input scale x weight scale",
    "activations": "uint8, asymmetric, per tensor",
    "calibration": "MinMax over the calibration images",
    "tool": "onnxruntime.quantization.quantize_static",
}


def weighted_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes int8 can apply to: Conv, Gemm, and MatMul with a constant weight, in graph order."""
    constants = {i.name for i in model.graph.initializer}
    layers = [n.name for n in model.graph.node
              if n.op_type in ("Conv", "Gemm") or (n.op_type == "MatMul" and n.input[1] in constants)]
    _check_names(model)
    return layers


def _check_names(model: onnx.ModelProto) -> None:
    names = [n.name for n in model.graph.node]
    if not all(names) or len(set(names)) != len(names):
        raise LoweringError("int8 quantization needs every node named once (the simulation maps nodes by name)")


def quantized_nodes(model: onnx.ModelProto, layers: Iterable[str] | None = None) -> list[str]:
    """The nodes to quantize: `layers` (every weighted layer when None) and the weight-free nodes between them.

    A weight-free node is quantized when every weighted layer it reads from
    (nearest upstream, through weight-free nodes) is quantized and it reads
    from at least one: ReLU after an int8 Conv, a residual Add of two int8
    branches, the pooling after them.
    """
    weighted = weighted_layers(model)
    chosen = set(weighted if layers is None else layers)
    unknown = sorted(chosen - set(weighted))
    if unknown:
        raise ConfigError(f"no weighted layer (Conv, Gemm, MatMul) named {unknown[:3]} in the model; "
                          f"its layers are {weighted[:3]}{' ...' if len(weighted) > 3 else ''}")
    if not chosen:
        raise ConfigError("no layer to quantize")
    graph_input = "\0input"  # the model's input: a node fed by it alone is not between int8 layers
    sources: dict[str, frozenset[str]] = {i.name: frozenset({graph_input}) for i in model.graph.input}
    weighted_set = set(weighted)
    nodes = []
    for node in model.graph.node:
        upstream = frozenset().union(*(sources.get(i, frozenset()) for i in node.input if i))
        if node.name in weighted_set:
            if node.name in chosen:
                nodes.append(node.name)
            produced = frozenset({node.name})
        else:
            if upstream and upstream <= chosen:
                nodes.append(node.name)
            produced = upstream
        for out in node.output:
            if out:
                sources[out] = produced
    return nodes


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader over an array of images."""

    def __init__(self, name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def quantize_model(model: onnx.ModelProto, images, layers: set[str] | None = None, *, batch_size: int = 50) -> onnx.ModelProto:
    """The QDQ int8 model of float `model` (INT8_SCHEME), activations calibrated on `images` (NCHW float).

    `layers`: node names of the weighted layers to quantize (None: all of them);
    the others keep float weights. The nodes quantized are recorded in the
    model's metadata (read_spec uses them). `model` is not modified.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.float32)
    if not len(images):
        raise ConfigError("int8 calibration needs at least one image")
    nodes = quantized_nodes(model, layers)
    source = onnx.ModelProto()
    source.CopyFrom(model)  # quantize_static writes a ModelProto's tensors out as external data, in place
    with tempfile.TemporaryDirectory(prefix="adans-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference and the metadata quantize_static looks for. The optimisation step is skipped: the
        # model is already simplified (constants folded, BatchNorm folded), and it would rename what the simulation reads.
        quant_pre_process(source, str(pre), skip_optimization=True, skip_symbolic_shape=True)
        try:
            quantize_static(
                str(pre), str(out), _Batches(model.graph.input[0].name, images, batch_size),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime.quantization raises whatever it meets
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LoweringError(f"onnxruntime.quantization could not quantize the model ({type(e).__name__}: {first})") from e
        quantized = onnx.load(str(out))
    entry = quantized.metadata_props.add()
    entry.key, entry.value = NODES_METADATA, json.dumps(nodes)
    return quantized
