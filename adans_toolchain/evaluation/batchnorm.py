"""BatchNorm layers whose statistics were folded away, which re-estimation would break.

Re-estimating BatchNorm statistics (--bn-recalibrate) replaces each layer's
running mean and variance with those of the candidate's activations. That
is right when the trained statistics are the activations' statistics. Some
checkpoints carry none: BatchNorm was folded into the preceding weights
(models de-quantized from a fused int8 model, or converted from TensorFlow)
and each layer keeps mean 0 and variance 1 - eps (or 1), so it is a plain
per-channel scale and shift. Re-estimating those statistics does not adapt
the layer, it changes what the model computes: on the de-quantized
torchvision MobileNetV2 of BENCHMARKS.md, re-estimation on 128 images took
the *unpruned* model from 76.9 % to 4.9 % top-1. The pipeline turns
re-estimation off for such a model and says why.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# Folded statistics are exact constants; trained ones are never all this close to them.
_TOLERANCE = 1e-6


def _folded(mean: np.ndarray, var: np.ndarray, eps: float) -> bool:
    """Mean 0 and variance 1 - eps (the divisor is then exactly 1) or 1, in every channel."""
    if not np.all(np.abs(mean) <= _TOLERANCE):
        return False
    return bool(np.all(np.abs(var + eps - 1.0) <= _TOLERANCE) or np.all(np.abs(var - 1.0) <= _TOLERANCE))


def folded_batchnorms(model: torch.nn.Module | onnx.ModelProto) -> tuple[list[str], int]:
    """The names of `model`'s BatchNorm layers whose statistics are folded constants, and how many it has.

    A PyTorch module is read as the evaluator re-estimates it (its BatchNorm modules' buffers); an ONNX
    model by its BatchNormalization nodes' mean and variance initializers."""
    layers = _module_statistics(model) if isinstance(model, torch.nn.Module) else _onnx_statistics(model)
    return [name for name, mean, var, eps in layers if _folded(mean, var, eps)], len(layers)


def _module_statistics(module: torch.nn.Module) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    return [
        (name, layer.running_mean.detach().cpu().numpy(), layer.running_var.detach().cpu().numpy(), layer.eps)
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None
    ]


def _onnx_statistics(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    initializers = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        mean, var = (initializers.get(node.input[k]) for k in (3, 4))
        if mean is not None and var is not None:
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            layers.append((node.name or node.output[0], numpy_helper.to_array(mean), numpy_helper.to_array(var), eps))
    return layers


def folded_statistics_note(folded: list[str], total: int) -> str:
    """The report's line when re-estimation is turned off for folded statistics."""
    return (
        f"BatchNorm statistics not re-estimated: {len(folded)} of {total} BatchNorm layers carry folded statistics "
        f"(mean 0, variance 1: the normalisation was folded into the weights, e.g. {folded[0]}), so re-estimating "
        "them would change what the model computes rather than adapt it; candidates keep the layers as trained "
        "(--bn-recalibrate is ignored for this model)"
    )
