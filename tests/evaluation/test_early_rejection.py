"""Early rejection (issue 13): the rule's bounds, and evaluators and executors that apply it.

The exact bound must never stop a candidate whose accuracy on all of VAL
meets the threshold; the confidence bound may, with probability at most
1 - confidence. Without a rule, accuracies are what they always were.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adans_toolchain.errors import ConfigError
from adans_toolchain.evaluation.base import ACCURACY, IMAGES, REJECTED, SCREEN_COLUMNS
from adans_toolchain.evaluation.executors import EvaluatorSpec, LocalExecutor, make_executor
from adans_toolchain.evaluation.executors import processes
from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.frontend.onnx_model import OnnxModel
from adans_toolchain.plan import Plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.helpers import export_and_analyse


# -- the rule --------------------------------------------------------------------------
def _final_checks(rule: EarlyRejection, correct_sequence: np.ndarray) -> tuple[bool, int, int]:
    """Run `rule` over one candidate's per-image correctness, as the evaluator does: (rejected, correct, seen)."""
    total = len(correct_sequence)
    running = np.cumsum(correct_sequence)
    for stop in rule.stops(total):
        correct = int(running[stop - 1])
        if rule.should_reject(correct, stop, total):
            return True, correct, stop
    return False, int(running[-1]), total


def test_settings_parse_to_rules():
    assert EarlyRejection.from_setting("off", 90.0) is None
    assert EarlyRejection.from_setting("exact", 90.0) == EarlyRejection(90.0)
    assert EarlyRejection.from_setting("0.999", 90.0) == EarlyRejection(90.0, confidence=0.999)
    for bad in ("maybe", "1", "0", "1.5", "-0.1"):
        with pytest.raises(ValueError):
            EarlyRejection.from_setting(bad, 90.0)
    for checkpoints in ((), (0.5, 0.2), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(ValueError, match="checkpoints"):
            EarlyRejection(90.0, checkpoints)
    assert EarlyRejection(90.0).stops(1000) == (200, 400, 600, 800, 1000)
    assert EarlyRejection(90.0).stops(3) == (1, 2, 3)  # duplicate counts merged, never 0
    assert EarlyRejection(90.0, (0.2,)).stops(1) == (1,)


def test_the_exact_bound_rejects_only_what_cannot_reach_the_threshold():
    rule = EarlyRejection(60.0)
    assert rule.should_reject(39, 100, 1000) is False  # 39 + 900 = 939 of 1000 is still possible
    assert rule.should_reject(0, 400, 1000) is False  # exactly 60 % if every remaining image is right
    assert rule.should_reject(0, 401, 1000) is True
    assert rule.should_reject(10, 1000, 1000) is False  # VAL done: the accuracy is exact, nothing to reject
    assert rule.should_reject(0, 0, 1000) is False


@pytest.mark.parametrize("seed", range(4))
def test_the_exact_bound_never_rejects_a_candidate_that_meets_the_threshold(seed):
    rng = np.random.default_rng(seed)
    rejected_any = 0
    for _ in range(400):
        total = int(rng.integers(1, 400))
        threshold = float(rng.uniform(0, 100))
        rule = EarlyRejection(threshold, tuple(np.sort(rng.choice(np.arange(1, 20), rng.integers(1, 6), replace=False)) / 20))
        # Correctness runs of every shape: i.i.d., front-loaded failures (the worst order), clustered.
        p = float(rng.uniform(0, 1))
        sequence = (rng.random(total) < p).astype(int)
        if rng.random() < 0.5:
            sequence = np.sort(sequence)
        rejected, correct, seen = _final_checks(rule, sequence)
        final = 100.0 * sequence.sum() / total
        if final >= threshold:
            assert not rejected, (total, threshold, rule.checkpoints, sequence.sum())
        if rejected:
            rejected_any += 1
            assert final < threshold and 100.0 * correct / seen < threshold and seen < total
    assert rejected_any > 20


@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_the_confidence_bound_rejects_feasible_candidates_rarely(confidence):
    """Candidates at or just above the threshold (the hardest feasible ones), VAL in random order."""
    rng = np.random.default_rng(7)
    total, threshold, trials = 1000, 70.0, 3000
    rule = EarlyRejection(threshold, confidence=confidence)
    false_rejections = 0
    for _ in range(trials):
        correct = math.ceil(threshold * total / 100) + int(rng.integers(0, 20))  # 70.0 to 71.9 % on all of VAL
        sequence = rng.permutation(np.arange(total) < correct).astype(int)
        false_rejections += _final_checks(rule, sequence)[0]
    assert false_rejections / trials < 1 - confidence
    # ... while a candidate well below the threshold is usually stopped at the first checkpoint.
    below = rng.permutation(np.arange(total) < 500).astype(int)
    assert _final_checks(rule, below)[:3:2] == (True, 200)


def test_the_confidence_bound_stops_more_than_the_exact_bound():
    exact, bound = EarlyRejection(90.0), EarlyRejection(90.0, confidence=0.999)
    assert not exact.should_reject(150, 200, 1000) and bound.should_reject(150, 200, 1000)
    assert not bound.should_reject(180, 200, 1000)  # at the threshold: never


def test_the_setting_is_validated_and_off_resumes_runs_made_before_it():
    from adans_toolchain.pipeline.config import CompileConfig

    def make(**settings):
        return CompileConfig(model="m", data="d", out="o", **settings)

    assert make().early_rejection == "exact" and make().resume_key()["early_rejection"] == "exact"
    assert make(early_rejection="0.999").resume_key()["early_rejection"] == "0.999"
    assert "early_rejection" not in make(early_rejection="off").resume_key()  # as in OUT/config.json of older runs
    with pytest.raises(ConfigError, match="--early-rejection"):
        make(early_rejection="2")


# -- evaluators and executors on the bundled ResNet-20 -------------------------------------
THRESHOLD = 60.0
BATCH = 40
RECORDED = Path(__file__).with_name("data") / "early_rejection_resnet20_200.json"


def _points(space: CompressionSpace) -> np.ndarray:
    """200 random points of the space, scaled so that accuracies spread over the threshold."""
    rng = np.random.default_rng(13)
    return rng.random((200, space.dim)) * rng.uniform(0.0, 0.4, (200, 1))


def _resnet(example_paths: dict):
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    val = load_image_set(example_paths["val"], Preprocessing(), limit=200)
    exported = export_and_analyse(loaded.module, (3, 32, 32))
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(loaded.module, analysis))
    space = CompressionSpace.from_priorities(
        analysis.prunable_groups, {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable_groups}
    )
    return loaded, exported, val, transform, space, space.decode_batch(_points(space))


@pytest.fixture(scope="module")
def resnet(example_paths):
    return _resnet(example_paths)


def _recorded() -> dict:
    return json.loads(RECORDED.read_text())


def record(example_paths: dict) -> None:
    """Evaluate the 200 plans on all of VAL (no rule) and write RECORDED (minutes on a CPU):
    python -m tests.evaluation.test_early_rejection"""
    loaded, _, val, transform, space, plans = _resnet(example_paths)
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=BATCH)
    full = evaluator.screen(plans)
    RECORDED.write_text(json.dumps({
        "what": "top-1 of each plan of test_early_rejection's `resnet` fixture on all of its VAL images, no rule",
        "images": len(val), "torch": torch.__version__,
        "plans": [space.states(x) for x in _points(space)],
        "correct": [int(round(a * len(val) / 100)) for a in full[:, ACCURACY]],
    }) + "\n")


def test_exact_rejection_keeps_every_feasible_candidate_over_200_recorded_plans(resnet):
    """200 random plans, their full accuracies recorded once (RECORDED): the exact rule stops none that meets the threshold."""
    loaded, _, val, transform, space, plans = resnet
    recorded = _recorded()
    assert recorded["images"] == len(val) and recorded["plans"] == [list(space.states(x)) for x in _points(space)]
    full = 100.0 * np.array(recorded["correct"]) / len(val)
    one_image = 100.0 / len(val)  # the recording may come from other arithmetic (another CPU, torch version)
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=BATCH)
    evaluator.early_rejection = EarlyRejection(THRESHOLD)
    screened = evaluator.screen(plans)
    assert screened.shape == (len(plans), len(SCREEN_COLUMNS))
    assert evaluator.images == int(screened[:, IMAGES].sum()) and evaluator.evaluations == len(plans)
    rejected = screened[:, REJECTED] == 1
    assert np.array_equal(rejected, screened[:, IMAGES] < len(val))
    assert 40 <= rejected.sum() <= len(plans) - 40 and (full >= THRESHOLD).sum() >= 40  # both outcomes exercised
    assert (screened[rejected, ACCURACY] < THRESHOLD).all()  # the partial estimate ranks it as infeasible
    assert (full[rejected] < THRESHOLD + one_image).all()  # no rejected plan meets the threshold on all of VAL
    assert not rejected[full >= THRESHOLD + one_image].any()
    assert (np.abs(screened[~rejected, ACCURACY] - full[~rejected]) <= one_image + 1e-9).all()  # kept: full VAL
    assert screened[:, IMAGES].sum() < 0.9 * len(plans) * len(val)  # and it saves evaluation
    # On this machine, kept plans score exactly what they score without a rule (a few, checked live).
    kept = np.flatnonzero(~rejected)[:4]
    evaluator.early_rejection = None
    assert np.array_equal(evaluator.accuracy([plans[i] for i in kept]), screened[kept, ACCURACY])


def test_without_a_rule_accuracy_is_what_it_always_was(resnet):
    loaded, _, val, transform, _, plans = resnet
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=40)
    few = plans[:6]
    screened = evaluator.screen(few)
    assert np.array_equal(screened[:, IMAGES], np.full(6, len(val))) and not screened[:, REJECTED].any()
    # accuracy_on is the unchanged single-pass path: all of VAL in its stored order.
    assert screened[:, ACCURACY].tolist() == [evaluator.accuracy_on(p, val) for p in few]
    assert np.array_equal(evaluator.accuracy(few), screened[:, ACCURACY])
    # A rule is not applied by accuracy_on, and clearing it restores the full pass.
    evaluator.early_rejection = EarlyRejection(THRESHOLD)
    assert [evaluator.accuracy_on(p, val) for p in few] == screened[:, ACCURACY].tolist()
    assert any("early rejection" in n for n in evaluator.notes)
    evaluator.early_rejection = None
    assert not any("early rejection" in n for n in evaluator.notes)


def test_onnx_and_pytorch_evaluators_reject_the_same_plans(resnet):
    loaded, exported, val, transform, _, plans = resnet
    calibration = val.subset(64)
    rule = EarlyRejection(THRESHOLD)
    pytorch = SubstitutionEvaluator(loaded.module, val, transform, batch_size=40, calibration=calibration)
    onnx = OnnxEvaluator(OnnxModel(exported.onnx_model), val, transform, batch_size=40, calibration=calibration, threads=1)
    pytorch.early_rejection = onnx.early_rejection = rule
    few = plans[:8]
    ours, theirs = pytorch.screen(few), onnx.screen(few)
    assert 0 < ours[:, REJECTED].sum() < len(few)
    assert np.array_equal(ours[:, [IMAGES, REJECTED]], theirs[:, [IMAGES, REJECTED]])
    one_image = 100.0 / ours[:, IMAGES]
    assert (np.abs(ours[:, ACCURACY] - theirs[:, ACCURACY]) <= one_image + 1e-9).all()


def test_worker_processes_apply_the_evaluators_rule(resnet, monkeypatch):
    loaded, _, val, transform, _, plans = resnet
    val = val.subset(60)
    rule = EarlyRejection(THRESHOLD)
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=20)
    evaluator.early_rejection = rule
    few = plans[:6]
    local = LocalExecutor(evaluator).screen(few)
    assert 0 < local[:, REJECTED].sum() < len(few)
    spec = EvaluatorSpec.from_module(loaded.module, val=val, calibration=None, analysis=transform.analysis,
                                     weights=transform.weights, batch_size=20)
    # make_executor hands the workers the evaluator's rule (no GPU here: two CPU workers).
    monkeypatch.setattr(processes, "visible_gpus", lambda: ["cpu", "cpu"])
    with make_executor("multi-gpu", evaluator, lambda: spec) as executor:
        assert executor.spec.early_rejection == rule
        remote = executor.screen(few)
        assert np.array_equal(executor.accuracy(few), local[:, ACCURACY])
    assert np.array_equal(local, remote)


def test_an_evaluator_counts_images(resnet):
    loaded, _, val, transform, _, plans = resnet
    val = val.subset(40)
    evaluator = SubstitutionEvaluator(loaded.module, val, transform, batch_size=40)
    evaluator.accuracy([Plan(()), plans[0]])
    assert (evaluator.evaluations, evaluator.images) == (2, 80)


if __name__ == "__main__":
    from tests.conftest import EXAMPLES

    record({"model": EXAMPLES / "resnet20.th", "val": EXAMPLES / "cifar10_val_1000.npz"})
