"""Executors: same accuracies, same order, whatever runs them; dead workers are retried."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.evaluation.executors import EvaluatorSpec, LocalExecutor, chunk_bounds
from adans_toolchain.evaluation.executors.processes import MultiProcessExecutor
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.evaluation.faults import always_dies, dies_once
from tests.helpers import export_and_analyse


@pytest.mark.parametrize("n,workers", [(0, 3), (1, 4), (7, 3), (10, 2), (9, 9), (5, 1)])
def test_chunks_cover_the_batch_in_order(n, workers):
    bounds = chunk_bounds(n, workers)
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert len(bounds) <= max(workers, 1)


@pytest.fixture(scope="module")
def setup(example_paths):
    torch.set_num_threads(1)
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    val = load_image_set(example_paths["val"], Preprocessing(), limit=48)
    exported = export_and_analyse(loaded.module, (3, 32, 32))
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(loaded.module, analysis))
    calibration = val.subset(32)
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=16, calibration=calibration)
    space = CompressionSpace.from_priorities(analysis.prunable_groups, {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable_groups})
    plans = space.decode_batch(np.random.default_rng(0).random((7, space.dim)) * 0.5)
    spec = EvaluatorSpec.from_module(loaded.module, val=val, calibration=calibration, analysis=analysis,
                                     weights=transform.weights, batch_size=16)
    return evaluator, spec, plans


def test_worker_processes_match_local_and_survive_a_death(setup, tmp_path):
    evaluator, spec, plans = setup
    local = LocalExecutor(evaluator).accuracy(plans)
    assert len(set(local.tolist())) > 1  # the plans really differ
    failing = dies_once(spec, tmp_path / "died")
    with MultiProcessExecutor(failing, ["cpu", "cpu"]) as executor:
        remote = executor.accuracy(plans)
    assert (tmp_path / "died").exists()  # a worker really died mid-batch
    assert np.array_equal(local, remote)


def test_workers_that_keep_dying_are_reported(setup):
    _, spec, plans = setup
    with MultiProcessExecutor(always_dies(spec), ["cpu"], retries=1) as executor:
        with pytest.raises(RuntimeError, match=r"workers on \['cpu'\] died 2 times in a row"):
            executor.accuracy(plans)


def test_ray_actors_match_local_and_survive_a_death(setup, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
    from adans_toolchain.evaluation.executors.ray_executor import RayExecutor

    evaluator, spec, plans = setup
    local = LocalExecutor(evaluator).accuracy(plans)
    failing = dies_once(spec, tmp_path / "died")
    executor = RayExecutor(failing, workers=2)
    try:
        remote = executor.accuracy(plans)
        again = executor.accuracy(plans[::-1])
    finally:
        executor.close()
    assert (tmp_path / "died").exists()
    assert np.array_equal(local, remote)
    assert np.array_equal(local[::-1], again)
