"""Fine-tuning the emitted model and emitting it again.

Trains `pre_simplify` itself (interpreted by PyTorch, so exactly the emitted
architecture), writes the trained values back into its initializers,
simplifies again and validates again, now against the fine-tuned module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch

from adans_toolchain.finetune.onnx_module import OnnxModule
from adans_toolchain.finetune.train import FinetuneConfig, FinetuneLog, finetune
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.lowering.emit import VALIDATION_IMAGES, Emitted, simplify
from adans_toolchain.lowering.prune_channels import set_initializers
from adans_toolchain.lowering.validate import validate_lowered


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
    return Finetuned(Emitted(model, trained, validation, pass_log + [{"pass": "finetune", "modified": True, "checked": []}]), log, self_check)
