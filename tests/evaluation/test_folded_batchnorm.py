"""BatchNorm statistics folded into the weights are recognised, and re-estimation is turned off for them."""

from __future__ import annotations

import torch

from adans_toolchain.evaluation.batchnorm import folded_batchnorms
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.pipeline.compile import _without_folded_statistics
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse

SHAPE = (3, 32, 32)


def _fold_statistics(module: torch.nn.Module) -> torch.nn.Module:
    """Each conv -> BatchNorm pair computing the same function with the statistics in the conv (mean 0, var 1 - eps),
    as a checkpoint de-quantized from a fused int8 model carries them."""
    layers = list(module.modules())
    with torch.no_grad():
        for conv, bn in zip(layers, layers[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                std = torch.sqrt(bn.running_var + bn.eps)
                conv.weight.div_(std.view(-1, 1, 1, 1))
                bn.bias.sub_(bn.weight * bn.running_mean / std)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
    return module.eval()


def _resnet20() -> torch.nn.Module:
    return randomise_batchnorm(build("cifar_resnet20"), seed=3)


def test_trained_statistics_are_not_folded():
    folded, total = folded_batchnorms(_resnet20())
    assert folded == [] and total == 19


def test_folded_statistics_are_found_in_the_module_and_in_its_onnx_export():
    module = _resnet20()
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    before = module(x)
    _fold_statistics(module)
    assert torch.allclose(module(x), before, atol=1e-4)  # the fold keeps the function (the test's own check)
    folded, total = folded_batchnorms(module)
    assert len(folded) == total == 19
    exported = export_and_analyse(module, SHAPE).onnx_model
    bn_nodes = [n for n in exported.graph.node if n.op_type == "BatchNormalization"]
    if bn_nodes:  # the exporter keeps them (it may fold BatchNorm into the convolution itself)
        assert len(folded_batchnorms(exported)[0]) == len(bn_nodes)


def test_one_folded_layer_is_enough_to_turn_reestimation_off_with_a_note():
    module = _resnet20()
    first_bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        first_bn.running_mean.zero_()
        first_bn.running_var.fill_(1.0)
    calibration = ImageSet(torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long), "test")
    onnx_model = export_and_analyse(module, SHAPE).onnx_model
    kept, notes = _without_folded_statistics(calibration, module, onnx_model)
    assert kept is None
    assert len(notes) == 1 and "1 of 19 BatchNorm layers carry folded statistics" in notes[0]
    # A model with its trained statistics keeps its calibration images.
    module = _resnet20()
    kept, notes = _without_folded_statistics(calibration, module, export_and_analyse(module, SHAPE).onnx_model)
    assert kept is calibration and notes == ()
