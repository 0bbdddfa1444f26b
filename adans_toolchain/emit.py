"""From the winning Plan to the ONNX files a user deploys.

lower: prune channels, factorise layers (graph surgery) -> `pre_simplify`;
       onnxsim + checker -> the emitted model; validated numerically against
       the parameter-substituted PyTorch model (a mismatch is an error).
fine-tune (optional): train `pre_simplify` itself (interpreted by PyTorch,
       so exactly the emitted architecture), write the trained values back
       into its initializers, simplify again and validate again, now against
       the fine-tuned module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from .analysis.channels import ChannelAnalysis
from .finetune.onnx_module import OnnxModule
from .finetune.train import FinetuneConfig, FinetuneLog, finetune
from .frontend.data import ImageSet
from .lowering import CheckModelPass, DecomposePass, PruneChannelsPass, SimplifyPass, run_passes
from .lowering.prune_channels import set_initializers
from .plan import Plan
from .validate import ValidationResult, validate_lowered

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
    # The emitted model carries the values the candidate was scored with:
    # re-estimated BatchNorm statistics and magnitude-pruned weights.
    source = set_initializers(onnx_model, {**evaluator.batchnorm_statistics(plan), **transform.sparse_weights(plan)})
    pre, log = run_passes(
        source,
        [PruneChannelsPass(analysis, plan), DecomposePass(analysis, plan, transform.factorizations), CheckModelPass()],
    )
    model, simplify_log = run_passes(pre, [SimplifyPass(), CheckModelPass()])
    x = check_images[:VALIDATION_IMAGES]
    validation = validate_lowered(model, evaluator.logits(plan, x), x.numpy(), threads=threads)
    return Emitted(model, pre, validation, log + simplify_log)


@dataclass(frozen=True)
class Finetuned:
    emitted: Emitted
    log: FinetuneLog
    self_check: float  # max |interpreted - ONNX Runtime| before training, relative to the output scale


def finetune_model(
    pre_simplify: onnx.ModelProto,
    train: ImageSet,
    config: FinetuneConfig,
    *,
    image_shape: tuple[int, ...],
    check_images: torch.Tensor,
    teacher: torch.nn.Module | None,
    checkpoint: Path,
    device: str,
    threads: int,
    pass_log: list[dict],
    on_epoch: Callable | None = None,
    on_batch: Callable | None = None,
) -> Finetuned:
    module = OnnxModule(pre_simplify, image_shape).eval()
    x = check_images[:VALIDATION_IMAGES]
    # The interpreter must compute what ONNX Runtime computes before we trust its training.
    with torch.no_grad():
        interpreted = module(x).numpy()
    self_check = validate_lowered(
        pre_simplify, interpreted, x.numpy(), threads=threads, reference="ONNX graph interpreted by PyTorch"
    ).relative_diff
    log = finetune(module, train, config, teacher=teacher, checkpoint=checkpoint, device=device, on_epoch=on_epoch, on_batch=on_batch)
    module = module.cpu().eval()
    trained = set_initializers(pre_simplify, module.trained_initializers())
    model = simplify(trained)
    with torch.no_grad():
        reference = module(x).numpy()
    validation = validate_lowered(model, reference, x.numpy(), threads=threads, reference="fine-tuned PyTorch module")
    return Finetuned(Emitted(model, trained, validation, pass_log + [{"pass": "finetune", "modified": True, "ensures": []}]), log, self_check)


def top1(model: onnx.ModelProto, data: ImageSet, *, threads: int, batch_size: int) -> float:
    from .validate import run_onnx

    logits = run_onnx(model, data.x.numpy(), threads=threads, batch_size=batch_size)
    return float(100.0 * np.mean(logits.argmax(1) == data.y.numpy()))
