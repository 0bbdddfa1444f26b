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
the *unpruned* model from 76.9 % to 4.9 % top-1.

A PyTorch model gets its statistics back instead (`restore_folded_statistics`):
each folded layer is given the mean and variance of its input on a few images
(the model in eval mode, as it computes) and its scale and shift are adjusted so
that it computes the same function. Re-estimation then matches a candidate's
statistics to the original model's on those images, and fine-tuning in training
mode normalises as the layer was trained to. An ONNX model with folded
BatchNormalization nodes keeps them and the pipeline turns re-estimation off,
saying why.
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


def restore_folded_statistics(module: torch.nn.Module, images: torch.Tensor, batch_size: int) -> list[str]:
    """Give `module`'s folded BatchNorm layers their inputs' statistics on `images`, keeping what it computes.

    A layer computes gamma * (x - mean) / sqrt(var + eps) + beta. With (mean, var) replaced by the measured
    (m, v), gamma' = gamma * sqrt((v + eps) / (var + eps)) and beta' = beta + gamma * (m - mean) / sqrt(var + eps)
    give the same output for every x. Returns the names of the layers rewritten (none unless every folded
    layer has a scale and shift to adjust, and none for TorchScript: such a model is left as it is)."""
    if isinstance(module, torch.jit.ScriptModule):  # no forward hooks to measure its layers' inputs
        return []
    folded = set(folded_batchnorms(module)[0])
    layers = {name: layer for name, layer in module.named_modules() if name in folded}
    if not layers or any(layer.weight is None or layer.bias is None for layer in layers.values()):
        return []
    statistics = _input_statistics(module, layers, images, batch_size)
    with torch.no_grad():
        for name, layer in layers.items():
            mean, var = (s.to(layer.running_mean) for s in statistics[name])
            old_divisor = torch.sqrt(layer.running_var + layer.eps)
            layer.bias.add_(layer.weight * (mean - layer.running_mean) / old_divisor)
            layer.weight.mul_(torch.sqrt(var + layer.eps) / old_divisor)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    return list(layers)


@torch.no_grad()
def _input_statistics(module: torch.nn.Module, layers: dict[str, torch.nn.Module], images: torch.Tensor,
                      batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and unbiased variance of each layer's input over `images`, the model in eval mode."""
    sums: dict[str, list] = {}

    def recorder(name: str):
        def record(_layer, inputs, _output):
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # channels first, everything else after
            total = sums.setdefault(name, [0.0, 0.0, 0])
            total[0] = total[0] + x.sum(1)
            total[1] = total[1] + (x * x).sum(1)
            total[2] += x.shape[1]
        return record

    handles = [layer.register_forward_hook(recorder(name)) for name, layer in layers.items()]
    training = module.training
    module.eval()
    try:
        for batch in images.split(batch_size):
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
        module.train(training)
    statistics = {}
    for name, (total, squares, n) in sums.items():
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0.0) * (n / max(n - 1, 1))
        statistics[name] = (mean.float(), var.float())
    return statistics


def restored_statistics_note(restored: list[str], total: int, images: int, source: str) -> str:
    """The report's line when folded statistics were restored."""
    return (
        f"BatchNorm statistics restored: {len(restored)} of {total} BatchNorm layers carried folded statistics (mean "
        f"0, variance 1: the normalisation was folded into the weights, e.g. {restored[0]}); each was given its "
        f"input's mean and variance on {images} {source} images, its scale and shift adjusted so the model computes "
        "the same function, so that re-estimation and fine-tuning adapt them as trained statistics"
    )
