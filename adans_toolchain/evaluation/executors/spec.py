"""What a remote worker needs to rebuild the evaluator: a picklable recipe.

TorchScript modules do not pickle, so they travel as the bytes of
torch.jit.save; ordinary modules pickle with their class (which the worker
must be able to import, as for any PyTorch checkpoint).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, replace

import torch

from adans_toolchain.frontend.data import ImageSet


@dataclass(frozen=True)
class EvaluatorSpec:
    module: object  # nn.Module, or bytes of a TorchScript archive
    val: ImageSet
    calibration: ImageSet | None
    analysis: object  # ChannelAnalysis
    weights: dict
    batch_size: int
    precision: str = "fp32"
    slicing: bool = False
    device: str = "cpu"
    threads: int = 1
    early_rejection: object = None  # evaluation.rejection.EarlyRejection: workers apply the same rule

    @classmethod
    def from_module(cls, module: torch.nn.Module, **kwargs) -> "EvaluatorSpec":
        if isinstance(module, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.jit.save(module, buffer)
            module = buffer.getvalue()
        return cls(module=module, **kwargs)

    def on(self, device: str, threads: int) -> "EvaluatorSpec":
        return replace(self, device=device, threads=threads)

    def build(self):
        from adans_toolchain.evaluation.substitution import SubstitutionEvaluator
        from adans_toolchain.transforms.plan_transform import PlanTransform

        torch.set_num_threads(self.threads)
        module = self.module
        if isinstance(module, bytes):
            module = torch.jit.load(io.BytesIO(module), map_location="cpu")
        else:
            # A spec sent to worker processes carries its tensors in shared memory
            # (torch's multiprocessing pickler): workers on the CPU would all
            # substitute plans into one copy of the weights. Each gets its own.
            module = copy.deepcopy(module)
        transform = PlanTransform(self.analysis, self.weights)
        evaluator = SubstitutionEvaluator(
            module, self.val, transform, device=self.device, batch_size=self.batch_size,
            calibration=self.calibration, precision=self.precision, slicing=self.slicing,
        )
        evaluator.early_rejection = self.early_rejection
        return evaluator
