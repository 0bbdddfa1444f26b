"""Fine-tuning the emitted model: loss falls, the result still validates, a killed run resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adans_toolchain.finetune.emit import finetune_model
from adans_toolchain.lowering.emit import lower_plan
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.finetune.onnx_module import OnnxModule
from adans_toolchain.finetune.train import FinetuneConfig, finetune
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.helpers import export_and_analyse


@pytest.fixture(scope="module")
def pruned(example_paths):
    torch.manual_seed(0)
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    data = load_image_set(example_paths["val"], Preprocessing(), limit=256)
    exported = export_and_analyse(loaded.module, (3, 32, 32))
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(loaded.module, analysis))
    evaluator = SubstitutionEvaluator(loaded.module, data, transform, batch_size=128)
    space = CompressionSpace.from_priorities(
        analysis.prunable_groups, evaluator.priorities(analysis, analysis.prunable_groups, "l1")
    )
    inner = np.array([0.5 if g.id.startswith("layer") and g.id.endswith("conv1") else 0.0 for g in analysis.prunable_groups])
    plan = space.decode(inner)
    emitted = lower_plan(exported.onnx_model, analysis, plan, transform, evaluator, data.x, threads=1)
    return loaded, data, emitted


CONFIG = FinetuneConfig(epochs=2, lr=0.02, batch_size=64, seed=3)


def test_one_epoch_lowers_the_training_loss_and_still_validates(pruned, tmp_path):
    loaded, data, emitted = pruned
    module = OnnxModule(emitted.pre_simplify, (3, 32, 32))
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(module.eval()(data.x), data.y))
    done = finetune_model(
        emitted.pre_simplify, data, FinetuneConfig(epochs=1, lr=0.02, batch_size=64, augment=False), image_shape=(3, 32, 32),
        check_images=data.x, teacher=None, checkpoint=tmp_path / "ft.pt", device="cpu", threads=1, pass_log=[],
    )
    assert done.self_check < 1e-4  # the interpreter computed what ONNX Runtime computes
    from adans_toolchain.runtime.sessions import run_onnx

    after_logits = run_onnx(done.emitted.model, data.x.numpy())
    after = float(torch.nn.functional.cross_entropy(torch.from_numpy(after_logits), data.y))
    assert after < before
    assert done.emitted.validation.relative_diff < 1e-4
    assert done.emitted.validation.reference == "fine-tuned PyTorch module"
    # Same architecture as the emitted search result: fine-tuning changed values, not shapes.
    shapes = lambda m: sorted((i.name, tuple(i.dims)) for i in m.graph.initializer)  # noqa: E731
    assert shapes(done.emitted.model) == shapes(emitted.model)
    assert [n.op_type for n in done.emitted.model.graph.node] == [n.op_type for n in emitted.model.graph.node]


def test_interrupted_finetune_resumes_to_the_same_weights(pruned, tmp_path):
    _, data, emitted = pruned

    def fresh():
        return OnnxModule(emitted.pre_simplify, (3, 32, 32))

    uninterrupted = fresh()
    finetune(uninterrupted, data, CONFIG, checkpoint=tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_after_first(epoch, loss, acc):
        if epoch == 1:
            raise Killed  # the checkpoint of epoch 1 is already on disk

    interrupted = fresh()
    with pytest.raises(Killed):
        finetune(interrupted, data, CONFIG, checkpoint=tmp_path / "b.pt", on_epoch=kill_after_first)
    resumed = fresh()
    log = finetune(resumed, data, CONFIG, checkpoint=tmp_path / "b.pt")
    assert log.resumed_from_epoch == 1 and log.epochs_done == 2
    # Both epochs timed: the first's seconds came back with the checkpoint.
    assert len(log.epoch_seconds) == 2 and min(log.epoch_seconds) > 0
    for name, value in uninterrupted.trained_initializers().items():
        assert np.array_equal(value, resumed.trained_initializers()[name]), name


def test_checkpoint_of_other_settings_is_refused(pruned, tmp_path):
    from adans_toolchain.errors import SearchStateError

    _, data, emitted = pruned
    finetune(OnnxModule(emitted.pre_simplify, (3, 32, 32)), data, FinetuneConfig(epochs=1, batch_size=64), checkpoint=tmp_path / "c.pt")
    with pytest.raises(SearchStateError):
        finetune(OnnxModule(emitted.pre_simplify, (3, 32, 32)), data, FinetuneConfig(epochs=1, batch_size=32), checkpoint=tmp_path / "c.pt")


def test_training_throughput_is_images_over_the_timed_epochs():
    from adans_toolchain.finetune.train import FinetuneLog
    from adans_toolchain.reporting.report import _training_speed_markdown

    log = FinetuneLog(epochs_done=2, epoch_seconds=[2.0, 3.0])
    assert log.images_per_s(100) == pytest.approx(40.0)
    assert FinetuneLog(epochs_done=2).images_per_s(100) is None  # a checkpoint from before epochs were timed
    said = _training_speed_markdown({"compressed": {"images_per_s": 40.0, "epoch_seconds": [2.0, 3.0]},
                                     "baseline": {"images_per_s": None, "epoch_seconds": []}})
    assert said[0].startswith("Training throughput") and "40 images/s over 2 epochs" in said[0] and "baseline" not in said[0]
