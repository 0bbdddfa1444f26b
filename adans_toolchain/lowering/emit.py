"""From the winning Plan to the ONNX files a user deploys.

Prune channels, factorise layers (graph surgery) -> `pre_simplify`;
onnxsim + checker -> the emitted model; validated numerically against the
parameter-substituted model (a mismatch is an error). Fine-tuning the
emitted model lives in finetune/emit.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.lowering import CheckModelPass, DecomposePass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.lowering.prune_channels import set_initializers
from adans_toolchain.plan import Plan
from adans_toolchain.lowering.validate import ValidationResult, validate_lowered

VALIDATION_IMAGES = 256


@dataclass(frozen=True)
class Emitted:
    model: onnx.ModelProto  # simplified, what is written to model.onnx
    pre_simplify: onnx.ModelProto  # after graph surgery, BatchNorm still separate (what fine-tuning trains)
    validation: ValidationResult
    pass_log: list[dict]


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    return run_passes(model, [CheckModelPass(), SimplifyPass(), CheckModelPass()])[0]


def lower_plan(
    onnx_model: onnx.ModelProto,
    analysis: ChannelAnalysis,
    plan: Plan,
    transform,
    evaluator,
    check_images: torch.Tensor,
    *,
    threads: int,
) -> Emitted:
    pre, model, log = lower_float(onnx_model, analysis, plan, transform, evaluator)
    x = check_images[:VALIDATION_IMAGES]
    # Only when the plain tolerance is exceeded: how much float32 rounding moves this plan's logits (validate.py).
    validation = validate_lowered(
        model, evaluator.logits(plan, x), x.numpy(), threads=threads,
        float64_reference=lambda n: evaluator.float64_logits(plan, x[:n]),
    )
    return Emitted(model, pre, validation, log)


def lower_float(onnx_model: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan, transform, evaluator
                ) -> tuple[onnx.ModelProto, onnx.ModelProto, list[dict]]:
    """(pre_simplify, simplified model, pass log) of `plan`'s float part: pruned and factorised, not yet validated.

    The one lowering both the emitted model and the int8 search's candidates
    (quantization/searched.py) go through, so an int8 candidate is scored on
    the float model that is emitted for it.
    """
    # The emitted model carries the values the candidate was scored with:
    # re-estimated BatchNorm statistics and magnitude-pruned weights.
    source = set_initializers(onnx_model, {**evaluator.batchnorm_statistics(plan), **transform.sparse_weights(plan)})
    pre, log = run_passes(
        source,
        [PruneChannelsPass(analysis, plan), DecomposePass(analysis, plan, transform.factorizations), CheckModelPass()],
    )
    model, simplify_log = run_passes(pre, [SimplifyPass(), CheckModelPass()])
    return pre, model, log + simplify_log
