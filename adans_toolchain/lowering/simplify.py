"""Clean-up passes: onnxsim simplification and the ONNX checker."""

from __future__ import annotations

import onnx

from adans_toolchain.errors import LoweringError
from adans_toolchain.lowering.base import LoweringPass, PassResult


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
    ensures = ("constant subgraphs folded", "dead nodes removed")

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
    name = "onnx-checker"
    ensures = ("onnx.checker passes with full shape inference",)

    def apply(self, model: onnx.ModelProto) -> PassResult:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise LoweringError(f"the lowered model is not valid ONNX: {str(e).splitlines()[0]}") from e
        return PassResult(model, False)
