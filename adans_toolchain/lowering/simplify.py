"""Clean-up passes: onnxsim simplification and the ONNX checker."""

from __future__ import annotations

from collections import Counter

import onnx

from adans_toolchain.errors import LoweringError
from adans_toolchain.lowering.base import Condition, LoweringPass, PassResult


# onnxoptimizer's fuse_pad_into_conv miscomputes the Conv pads on a chain of
# TF "SAME"-padded convolutions (a stride-2 conv on an even input pads 0
# before and 1 after; after constant folding several Pad nodes share one
# pads constant): the fused model silently computes something else (found on
# TF-slim MobileNetV1, 28 % of the output scale; a single padded conv is
# fused correctly; see tests/lowering/test_simplify.py). ONNX Runtime fuses Pad into Conv itself
# when it loads the model, so skipping it here costs no speed.
SKIPPED_OPTIMIZERS = ("fuse_pad_into_conv",)


class SimplifyPass(LoweringPass):
    """onnxsim: constant folding, dead-node removal, Conv+BatchNorm fusion."""

    name = "onnxsim"

    def ensures(self, source: onnx.ModelProto) -> list[Condition]:
        signature = _signature(source)
        return [
            Condition("graph inputs and outputs keep their names, types and shapes", lambda model: _same_signature(signature, model)),
            Condition("no foldable BatchNormalization is left after a Conv", _no_foldable_batchnorm),
        ]

    def apply(self, model: onnx.ModelProto) -> PassResult:
        import onnxsim

        try:
            simplified, ok = onnxsim.simplify(model, skipped_optimizers=list(SKIPPED_OPTIMIZERS))
        except Exception as e:  # noqa: BLE001 - onnxsim raises bare RuntimeErrors
            raise LoweringError(f"onnxsim failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if not ok:
            raise LoweringError("onnxsim could not verify the simplified model")
        return PassResult(simplified, True)


class CheckModelPass(LoweringPass):
    """Changes nothing: its whole work is its ensure, so the log records the check."""

    name = "onnx-checker"

    def ensures(self, source: onnx.ModelProto) -> list[Condition]:
        return [Condition("onnx.checker passes with full shape inference", _checker)]

    def apply(self, model: onnx.ModelProto) -> PassResult:
        return PassResult(model, False)


def _checker(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return f"the lowered model is not valid ONNX: {str(e).splitlines()[0]}"
    return None


def _signature(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    # Initializers listed as inputs (old exporters) are not part of what a caller feeds.
    constants = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in constants]
    return [(v.name, v.type.SerializeToString()) for v in (*inputs, *model.graph.output)]


def _same_signature(signature: list[tuple[str, bytes]], model: onnx.ModelProto) -> str | None:
    now = _signature(model)
    changed = [name for (name, t), (name2, t2) in zip(signature, now) if (name, t) != (name2, t2)]
    if len(now) != len(signature) or changed:
        return f"inputs/outputs changed: {changed or [n for n, _ in now]}"
    return None


def _no_foldable_batchnorm(model: onnx.ModelProto) -> str | None:
    # onnxoptimizer's fuse_bn_into_conv folds a BatchNormalization into the
    # Conv before it when the BN is that Conv's only reader and all the
    # parameters are float constants; a BN elsewhere (after an Add, a Concat) stays.
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    constants = {i.name for i in model.graph.initializer if i.data_type in floats}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = Counter([i for n in model.graph.node for i in n.input] + [o.name for o in model.graph.output])
    for n in model.graph.node:
        conv = producers.get(n.input[0]) if n.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or readers[n.input[0]] != 1 or len(n.output) != 1:
            continue
        if all(i in constants for i in (*n.input[1:], *conv.input[1:]) if i):
            return f"BatchNormalization '{n.name}' after Conv '{conv.name}' was not folded"
    return None
