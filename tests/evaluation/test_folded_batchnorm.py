"""BatchNorm statistics folded into the weights are recognised; a PyTorch model gets them back (the same function),
an ONNX model has re-estimation turned off."""

from __future__ import annotations

import numpy as np
import torch

from adans_toolchain.evaluation.batchnorm import folded_batchnorms, restore_folded_statistics
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import ImageSet, Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.pipeline.compile import _restore_folded_statistics, _without_folded_statistics
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
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


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_restoring_folded_statistics_keeps_the_function_and_measures_each_input():
    module = _fold_statistics(_resnet20())
    x, images = _images(8, seed=0), _images(64)
    before = module(x)
    stem_input = module.conv1(images)  # bn1's input, as the model computes it
    restored = restore_folded_statistics(module, images, batch_size=16)
    assert len(restored) == 19 and folded_batchnorms(module)[0] == []
    assert torch.allclose(module(x), before, atol=1e-4)
    assert torch.allclose(module.bn1.running_mean, stem_input.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(module.bn1.running_var, stem_input.transpose(0, 1).flatten(1).var(dim=1), rtol=1e-4)
    assert not module.training


def test_a_model_with_trained_statistics_or_without_affine_layers_is_left_as_it_is():
    trained = _resnet20()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    assert restore_folded_statistics(trained, _images(16), batch_size=16) == []
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items())
    no_affine = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, affine=False)).eval()
    assert len(folded_batchnorms(no_affine)[0]) == 1  # a fresh layer looks folded
    assert restore_folded_statistics(no_affine, _images(16), batch_size=16) == []


def _top1_pruned(module: torch.nn.Module, plan_x: float, val: ImageSet, calibration: ImageSet | None,
                 priorities: dict | None = None) -> tuple[float, dict]:
    """Top-1 on `val` of `module` with every channel group pruned at `plan_x` (channels in `priorities` order)."""
    analysis = export_and_analyse(module, SHAPE).analysis
    evaluator = SubstitutionEvaluator(module, val, PlanTransform(analysis, original_weights(module, analysis)),
                                      batch_size=250, calibration=calibration)
    groups = analysis.prunable_groups
    priorities = priorities or evaluator.priorities(analysis, groups, "l1")
    space = CompressionSpace.from_priorities(groups, priorities)
    return float(evaluator.accuracy([space.decode(np.full(space.dim, plan_x))])[0]), priorities


def test_restored_statistics_let_reestimation_recover_a_pruned_folded_model(example_paths):
    """The bundled (trained) ResNet-20 with its BatchNorm folded, every group pruned by the same channels: kept as
    folded it scores as the trained model without re-estimation; restored and re-estimated, at least as well as the
    trained model re-estimated."""
    images = load_image_set(example_paths["val"], Preprocessing(), limit=1000)
    calibration, val = images.part(0, 256, "calibration"), images.part(500, 1000, "VAL")

    def model():
        return load_model(example_paths["model"], "cifar_resnet20", False).module.eval()

    trained_reestimated, priorities = _top1_pruned(model(), 0.3, val, calibration)
    trained_kept, _ = _top1_pruned(model(), 0.3, val, None, priorities)
    folded = _fold_statistics(model())
    folded_kept, _ = _top1_pruned(folded, 0.3, val, None, priorities)
    assert restore_folded_statistics(folded, calibration.x, batch_size=250)
    restored_reestimated, _ = _top1_pruned(folded, 0.3, val, calibration, priorities)
    assert abs(folded_kept - trained_kept) <= 0.2  # the fold changes nothing the plan sees
    assert trained_reestimated >= trained_kept + 5  # re-estimation matters at this rate (the test's premise)
    assert restored_reestimated >= folded_kept + 5
    # Matched to the original's statistics on the calibration images rather than replaced (measured: 60.8 against
    # 56.6 for the trained model re-estimated, 32.4 kept), at least as good within the noise of 500 images.
    assert restored_reestimated >= trained_reestimated - 3


def test_the_compile_restores_a_folded_pytorch_model_only_when_statistics_will_be_used():
    search_val = ImageSet(_images(40), torch.zeros(40, dtype=torch.long), "val")
    calibration = search_val.subset(32)
    module = _fold_statistics(_resnet20())
    assert _restore_folded_statistics(module, None, search_val, CompileConfig(model="m", data="d", out="o")) == ()
    assert len(folded_batchnorms(module)[0]) == 19  # no re-estimation, no fine-tuning: left folded
    notes = _restore_folded_statistics(module, calibration, search_val, CompileConfig(model="m", data="d", out="o"))
    assert len(notes) == 1 and "19 of 19 BatchNorm layers carried folded statistics" in notes[0]
    assert "32 calibration images" in notes[0] and folded_batchnorms(module)[0] == []
    # Fine-tuning alone measures them on SEARCH-VAL.
    module = _fold_statistics(_resnet20())
    notes = _restore_folded_statistics(module, None, search_val, CompileConfig(model="m", data="d", out="o", finetune_epochs=1))
    assert "40 SEARCH-VAL images" in notes[0] and folded_batchnorms(module)[0] == []
