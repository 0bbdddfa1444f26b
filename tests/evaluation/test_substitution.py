"""Substitution evaluation: exact restore, BatchNorm re-estimation semantics."""

from __future__ import annotations

import numpy as np
import torch

from adans_toolchain.evaluation.substitution import SubstitutionEvaluator
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.plan import Plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.evaluation.substitution import original_weights
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.conftest import randomise_batchnorm
from tests.helpers import build, export_and_analyse


def _setup(calibration_images: int = 40):
    module = randomise_batchnorm(build("cifar_resnet20"))
    exported = export_and_analyse(module, (3, 32, 32))
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randn(30, 3, 32, 32, generator=g), torch.randint(0, 10, (30,), generator=g), "val")
    cal = ImageSet(torch.randn(calibration_images, 3, 32, 32, generator=g), torch.zeros(calibration_images, dtype=torch.long), "cal")
    analysis = exported.analysis
    evaluator = SubstitutionEvaluator(module, data, PlanTransform(analysis, original_weights(module, analysis)), batch_size=16, calibration=cal)
    space = CompressionSpace.from_priorities(analysis.prunable_groups, {x.id: np.arange(x.size, dtype=float) for x in analysis.prunable_groups})
    return module, evaluator, space


def test_substitution_restores_every_tensor_exactly():
    module, evaluator, space = _setup()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    plan = space.decode(np.full(space.dim, 0.5))
    with evaluator.substituted(plan):
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("running_mean") for k in changed)  # re-estimated
    assert any(k.endswith("conv2.weight") for k in changed)  # consumer columns zeroed
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reestimation_changes_only_running_statistics():
    module, evaluator, space = _setup()
    plan = space.decode(np.full(space.dim, 0.3))
    with evaluator.substituted(plan, recalibrate=False):
        plain = {k: v.clone() for k, v in module.state_dict().items()}
    with evaluator.substituted(plan):
        recal = {k: v.clone() for k, v in module.state_dict().items()}
    differ = {k for k in plain if not torch.equal(plain[k], recal[k])}
    assert differ and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in differ)
    assert not module.training and all(not m.training for m in module.modules())


def test_reestimation_is_deterministic_and_exact_for_the_calibration_set():
    module, evaluator, space = _setup(calibration_images=48)  # 3 equal batches of 16
    plan = space.decode(np.full(space.dim, 0.3))
    first = evaluator.batchnorm_statistics(plan)
    second = evaluator.batchnorm_statistics(plan)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    # With equal batches, the running mean is the mean over all calibration images.
    captured = {}
    stem_bn = module.bn1
    handle = stem_bn.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0].detach().clone()))
    with evaluator.substituted(plan, recalibrate=False):
        module(evaluator.calibration)
    handle.remove()
    expected = captured["x"].mean(dim=(0, 2, 3)).numpy()
    assert np.allclose(first["bn1.running_mean"], expected, atol=1e-5)


def test_baseline_keeps_its_trained_statistics():
    module, evaluator, space = _setup()
    identity = Plan(())
    assert not evaluator.recalibrates(identity)
    assert evaluator.batchnorm_statistics(identity) == {}
    assert evaluator.recalibrates(space.decode(np.full(space.dim, 0.2)))


def test_recalibrated_emitted_model_still_validates():
    from adans_toolchain.lowering import PruneChannelsPass, SimplifyPass, run_passes
    from adans_toolchain.lowering.prune_channels import set_initializers
    from adans_toolchain.lowering.validate import validate_lowered

    module, evaluator, space = _setup()
    plan = space.decode(np.full(space.dim, 0.4))
    model = evaluator.transform.analysis.graph.model
    source = set_initializers(model, evaluator.batchnorm_statistics(plan))
    lowered, _ = run_passes(source, [PruneChannelsPass(evaluator.transform.analysis, plan), SimplifyPass()])
    x = evaluator.x[:8]
    result = validate_lowered(lowered, evaluator.logits(plan, x), x.numpy())
    assert result.relative_diff < 1e-4
    # ...and differs from the model with the trained statistics.
    with evaluator.substituted(plan, recalibrate=False):
        stale = module(x).detach().numpy()
    assert np.abs(stale - evaluator.logits(plan, x)).max() > 1e-3
