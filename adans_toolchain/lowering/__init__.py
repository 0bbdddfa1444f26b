"""Lowering: graph surgery that turns the winning Plan into a physically smaller ONNX model.

Every change is a pass with a `check` ("can I?", returning a reason or None)
kept apart from `apply` ("do it"), in the style of onnxscript's passes.
"""

from adans_toolchain.lowering.base import LoweringPass, PassResult, run_passes
from adans_toolchain.lowering.decompose import DecomposePass
from adans_toolchain.lowering.prune_channels import PruneChannelsPass
from adans_toolchain.lowering.simplify import CheckModelPass, SimplifyPass

__all__ = ["CheckModelPass", "DecomposePass", "LoweringPass", "PassResult", "PruneChannelsPass", "SimplifyPass", "run_passes"]
