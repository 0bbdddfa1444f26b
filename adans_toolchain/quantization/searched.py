"""Per-layer precision searched with pruning and decomposition (--methods ...,int8): scoring and naming int8 plans.

A plan's int8 layers are named by their weights in the analysed graph (as
decompositions are); the QDQ model names nodes of the *lowered* float model.
`int8_nodes` maps one to the other: a layer's node, or every factor node a
decomposition lowered it to (analysis.factors.origin_layer).

`SearchedInt8` scores an int8 candidate the honest way, the way it will be
emitted: its float part is lowered exactly as the emitted model is
(lowering.emit.lower_float: channels pruned, layers factorised, BatchNorm
statistics re-estimated, simplified); ONNX Runtime's quantizer quantizes
exactly the plan's layers of that model, calibrated on fixed calibration
images (`search_calibration`); the spec read back from the QDQ model drives
the fake-quant simulation (simulate.py), which computes what ONNX Runtime
computes (validate.py checks that on every compile). Building the QDQ model
per candidate costs about a second on CIFAR ResNet-20; deriving the Q/DQ
placement without the quantizer would re-implement its rules and could
drift from them. The emitted model_int8.onnx is then the very model the
search scored: same lowered float model, same calibration images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.factors import origin_layer
from adans_toolchain.errors import LoweringError
from adans_toolchain.lowering.emit import lower_float
from adans_toolchain.plan import Plan
from adans_toolchain.quantization.qdq import quantize_model, weighted_layers
from adans_toolchain.quantization.simulate import SimulatedInt8
from adans_toolchain.quantization.spec import QuantSpec, read_spec

# Calibration images of a searched int8 plan: few enough that quantizing each candidate stays cheap (MinMax
# needs no more than the range the images reach), the same for every candidate and for the emitted model.
SEARCH_CALIBRATION_IMAGES = 256


def search_calibration(bn_images, search_val) -> tuple[object, str]:
    """(images, where from) that calibrate every int8 candidate and the emitted int8 model: the first
    SEARCH_CALIBRATION_IMAGES of the BatchNorm re-estimation images, or of SEARCH-VAL when re-estimation is off.
    Both are `frontend.data.ImageSet`s; the first images of a fixed set, so every candidate sees the same ones."""
    if bn_images is not None:
        return bn_images.subset(SEARCH_CALIBRATION_IMAGES), "the BatchNorm re-estimation images"
    return search_val.subset(SEARCH_CALIBRATION_IMAGES), "the searched VAL images"


def int8_nodes(lowered: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan) -> list[str]:
    """The weighted nodes of `lowered` (the plan's lowered float model) that the plan runs in int8, in graph order.

    Raises LoweringError when an int8 layer of the plan has no weighted node in the lowered model.
    """
    int8_weights = set(plan.int8_layers)
    origins = {n.name: n.input[1] for n in analysis.graph.nodes if len(n.input) > 1 and n.input[1] in int8_weights}
    nodes = [name for name in weighted_layers(lowered) if origin_layer(name) in origins]
    missing = sorted(int8_weights - {origins[origin_layer(name)] for name in nodes})
    if missing:
        raise LoweringError(f"int8 layer(s) {missing[:3]} of the plan have no Conv/Gemm/MatMul node in the lowered model "
                            "(simplification renamed or removed them): cannot quantize them")
    return nodes


@dataclass(frozen=True)
class QuantizedPlan:
    float_model: onnx.ModelProto  # the plan's float part, lowered and simplified (model.onnx)
    int8: onnx.ModelProto  # its QDQ model, the plan's int8 layers quantized (model_int8.onnx)
    spec: QuantSpec  # read back from `int8`, in `float_model`'s names
    nodes: tuple[str, ...]  # the weighted nodes of `float_model` quantized


def quantize_plan(float_model: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan, calibration: np.ndarray) -> QuantizedPlan:
    """The QDQ model of `float_model` (the lowered float part of `plan`) with exactly the plan's int8 layers quantized."""
    nodes = int8_nodes(float_model, analysis, plan)
    int8 = quantize_model(float_model, calibration, set(nodes))
    return QuantizedPlan(float_model, int8, read_spec(int8, float_model), tuple(nodes))


class SearchedInt8:
    """evaluation.base.Int8Candidates for a search: an int8 plan's logits are its simulated QDQ model's.

    `onnx_model`, `analysis` and `transform` are the search's (what the
    emitted model is lowered from); `calibration` the images every candidate
    is calibrated on (`search_calibration`).
    """

    def __init__(self, onnx_model: onnx.ModelProto, analysis: ChannelAnalysis, transform, calibration,
                 image_shape: tuple[int, ...]) -> None:
        self.onnx_model, self.analysis, self.transform = onnx_model, analysis, transform
        self.calibration = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
        if not len(self.calibration):
            raise LoweringError("int8 calibration needs at least one image")
        self.image_shape = tuple(image_shape)

    def quantized(self, evaluator, plan: Plan) -> QuantizedPlan:
        """`plan` lowered as it will be emitted (statistics from `evaluator`), then quantized."""
        _, float_model, _ = lower_float(self.onnx_model, self.analysis, plan, self.transform, evaluator)
        return quantize_plan(float_model, self.analysis, plan, self.calibration)

    def simulated(self, evaluator, plan: Plan) -> Callable[[np.ndarray], np.ndarray]:
        q = self.quantized(evaluator, plan)
        module = SimulatedInt8(q.float_model, q.spec, self.image_shape)

        def logits(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        return logits
