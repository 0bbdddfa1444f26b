"""Honest selection (issue 13): the search ranks on SEARCH-VAL, the emitted plan is chosen on held-back VAL."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.pipeline import compile as pipeline
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.plan import Plan
from adans_toolchain.reporting.facts import HoldoutSelection, RescoredPlan
from adans_toolchain.reporting.report import _selection_markdown
from adans_toolchain.search.holdout import choose_on_holdout, holdout_threshold, split_holdout, top_distinct
from adans_toolchain.search.scoring import AdaNSScore
from adans_toolchain.search.types import Evaluation, SearchResult

LABELS = np.repeat(np.arange(10), [30, 30, 30, 30, 30, 20, 20, 10, 10, 7])  # 217 images, unbalanced


# -- the split -------------------------------------------------------------------
def test_the_split_is_deterministic_disjoint_and_covers_val():
    search, held = split_holdout(LABELS, 0.3, seed=0)
    again_search, again_held = split_holdout(LABELS, 0.3, seed=0)
    assert np.array_equal(search, again_search) and np.array_equal(held, again_held)
    assert not set(search) & set(held)
    assert np.array_equal(np.sort(np.concatenate([search, held])), np.arange(LABELS.size))
    assert len(held) == round(0.3 * LABELS.size)
    assert np.all(np.diff(search) > 0) and np.all(np.diff(held) > 0)  # each part keeps VAL's order
    other_search, _ = split_holdout(LABELS, 0.3, seed=1)
    assert not np.array_equal(search, other_search)


def test_the_split_is_stratified_by_label():
    _, held = split_holdout(LABELS, 0.3, seed=3)
    for label in np.unique(LABELS):
        members = int(np.sum(LABELS == label))
        assert abs(int(np.sum(LABELS[held] == label)) - 0.3 * members) <= 1, label


def test_no_holdout_keeps_every_image_for_the_search():
    search, held = split_holdout(LABELS, 0.0, seed=0)
    assert np.array_equal(search, np.arange(LABELS.size)) and held.size == 0


def test_the_pipeline_split_keeps_one_copy_with_the_search_part_first():
    x = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1)
    val = ImageSet(x, torch.arange(20) % 2, "val.npz")
    full, search, held = pipeline._split_val(val, 0.25, seed=0)
    assert (len(search), len(held), len(full)) == (15, 5, 20)
    assert search.x.data_ptr() == full.x.data_ptr()  # views of the reordered VAL
    assert sorted(full.x.flatten().tolist()) == list(range(20))  # every image once
    s_idx, h_idx = split_holdout(val.y.numpy(), 0.25, 0)
    assert search.x.flatten().tolist() == s_idx.tolist() and held.x.flatten().tolist() == h_idx.tolist()
    assert pipeline._split_val(val, 0.0, seed=0) == (val, val, None)


# -- the choice on the holdout (pure) --------------------------------------------
SCORE = AdaNSScore(baseline_accuracy=90.0, baseline_cost=100.0, accuracy_threshold=88.0, accuracy_floor=2.0)


def test_top_distinct_keeps_one_sample_per_plan_best_first():
    keys = ["a", "b", "a", "c", "d"]
    assert top_distinct(keys, [0.5, 0.9, 0.95, 0.9, 0.1], 3) == [2, 1, 3]  # b before c: the earlier of equals
    assert top_distinct(keys, [1, 2, 3, 4, 5], 10) == [4, 3, 2, 1]


def test_the_search_best_that_overfit_search_val_loses_to_a_plan_that_holds_on_the_holdout():
    # Candidates in search order: the cheapest is the search's best, but on the holdout it falls below the threshold.
    costs = [40.0, 45.0, 60.0]
    choice = choose_on_holdout([85.0, 87.5, 89.0], costs, SCORE, baseline_holdout=89.0, allowed_drop=2.0)
    assert choice.score.accuracy_threshold == 87.0 and choice.score.baseline_accuracy == 89.0
    assert choice.feasible == (False, True, True)
    assert choice.chosen == 1 and choice.outcome == "holdout"  # the cheaper of the two that hold
    assert choice.scores[1] > choice.scores[2] > choice.scores[0]


def test_when_the_search_best_holds_it_is_chosen():
    choice = choose_on_holdout([88.0, 88.0], [40.0, 40.0], SCORE, baseline_holdout=89.0, allowed_drop=2.0)
    assert choice.chosen == 0 and choice.outcome == "holdout"  # ties go to the search's rank


def test_none_feasible_on_the_holdout_emits_the_baseline():
    choice = choose_on_holdout([80.0, 86.0], [40.0, 50.0], SCORE, baseline_holdout=89.0, allowed_drop=2.0)
    assert choice.chosen is None and choice.outcome == "baseline"
    assert choose_on_holdout([], [], SCORE, baseline_holdout=89.0, allowed_drop=2.0).chosen is None


def test_an_absolute_threshold_falls_back_to_the_most_accurate_plan_within_the_allowed_drop():
    # --accuracy-threshold 88 (2 points below the SEARCH-VAL baseline); the holdout is harder: its baseline is 87.
    assert holdout_threshold(87.0, allowed_drop=2.0, absolute=88.0) == 88.0
    choice = choose_on_holdout([84.0, 85.5], [40.0, 50.0], SCORE, baseline_holdout=87.0, allowed_drop=2.0,
                               absolute_threshold=88.0)
    assert choice.feasible == (False, False) and choice.chosen == 1 and choice.outcome == "fallback"
    worse = choose_on_holdout([84.0, 84.5], [40.0, 50.0], SCORE, baseline_holdout=87.0, allowed_drop=2.0,
                              absolute_threshold=88.0)
    assert worse.chosen is None and worse.outcome == "baseline"


# -- _select_plan with a fake search and a fake evaluator ------------------------
class _Space:
    """x[0] names the plan; its cost-model states are x itself."""

    def decode(self, x):
        return Plan((), f"plan-{int(x[0])}")

    def states(self, x):
        return tuple(int(v) for v in x)


class _Evaluator:
    def __init__(self, holdout: dict[str, float]) -> None:
        self.holdout, self.calls = holdout, []

    def accuracy_on(self, plan, data, *, recalibrate=None):
        self.calls.append(plan.model_fingerprint)
        return self.holdout[plan.model_fingerprint]


def _sample(name: int, f: float, accuracy: float, cost_ratio: float, feasible: bool = True, iteration: int = 0):
    return Evaluation(np.array([name, 0.0]), f, iteration,
                      {"accuracy": accuracy, "cost": 100.0 * cost_ratio, "cost_ratio": cost_ratio, "feasible": feasible})


HISTORY = [
    _sample(1, 1.60, 88.4, 0.40, iteration=2),  # the search's best: lucky on SEARCH-VAL
    _sample(1, 1.60, 88.4, 0.40, iteration=3),  # the same plan again (one re-scoring)
    _sample(2, 1.50, 89.0, 0.45, iteration=1),
    _sample(3, 1.30, 89.5, 0.60),
    _sample(4, 1.90, 80.0, 0.20, feasible=False),
    _sample(5, 1.00, 90.0, 0.90),
]
HOLDOUT = {"baseline": 89.0, "plan-1": 85.0, "plan-2": 87.5, "plan-3": 88.5, "plan-5": 89.0}


def _run(tmp_path, holdout: float, evaluator=None, **settings):
    cfg = CompileConfig(model="m", data="d", out=str(tmp_path), holdout=holdout, **settings)
    identity = Plan((), "baseline")
    images = ImageSet(torch.zeros(10, 1, 1, 1), torch.zeros(10, dtype=torch.int64), "val")
    inputs = SimpleNamespace(search_val=images, holdout=images.part(7, 10, "held back") if holdout else None,
                             calibration=None)
    return SimpleNamespace(
        cfg=cfg, identity=identity, inputs=inputs, space=_Space(), score=SCORE, evaluator=evaluator,
        ws=SimpleNamespace(state=tmp_path), progress=SimpleNamespace(step=lambda message: None), stage=None,
    )


def _result(history):
    return SearchResult(np.zeros(2), 0.0, {}, list(history), [])


def test_without_a_holdout_the_selection_is_the_best_feasible_by_score(tmp_path):
    selected = pipeline._select_plan(_run(tmp_path, 0.0), _result(HISTORY))
    assert selected.best is HISTORY[0] and selected.plan.model_fingerprint == "plan-1"
    assert selected.selection is None and selected.notes == ()


def test_with_a_holdout_the_plan_that_holds_there_is_emitted_and_the_scoring_is_cached(tmp_path):
    evaluator = _Evaluator(HOLDOUT)
    run = _run(tmp_path, 0.3, evaluator, rescore_top=3)
    selected = pipeline._select_plan(run, _result(HISTORY))
    assert selected.best is HISTORY[2] and selected.plan.model_fingerprint == "plan-2"
    sel = selected.selection
    assert [c.search_rank for c in sel.candidates] == [1, 2, 3]  # plan-1 once, the infeasible plan-4 never
    assert [c.holdout_accuracy for c in sel.candidates] == [85.0, 87.5, 88.5]
    assert [c.chosen for c in sel.candidates] == [False, True, False]
    assert sel.holdout_threshold == 87.0 and sel.baseline_holdout_accuracy == 89.0 and sel.outcome == "holdout"
    assert sel.as_dict()["differs_from_search_best"] is True
    assert sel.as_dict()["emitted"] == {"plan": "search rank 2", "search_accuracy": 89.0, "holdout_accuracy": 87.5,
                                        "cost_ratio": 0.45}
    assert any("not its best" in n for n in selected.notes)
    assert sorted(evaluator.calls) == ["baseline", "plan-1", "plan-2", "plan-3"]
    # A resume reads the holdout accuracies back instead of evaluating again.
    again = _Evaluator(HOLDOUT)
    assert pipeline._select_plan(_run(tmp_path, 0.3, again, rescore_top=3), _result(HISTORY)).best is HISTORY[2]
    assert again.calls == []
    records = [json.loads(line) for line in (tmp_path / pipeline.HOLDOUT_CACHE).read_text().splitlines()]
    assert {r["key"] for r in records} == {"baseline", "1,0", "2,0", "3,0"}


def test_when_the_best_plans_fail_on_the_holdout_plans_with_more_margin_are_tried(tmp_path):
    evaluator = _Evaluator(HOLDOUT)
    run = _run(tmp_path, 0.3, evaluator, rescore_top=1)
    selected = pipeline._select_plan(run, _result(HISTORY))
    # plan-1 (0.4 points over the SEARCH-VAL threshold) fails there; plan-2, 1.0 over it, is the best of the next batch.
    assert [c.search_rank for c in selected.selection.candidates] == [1, 2]
    assert selected.best is HISTORY[2] and selected.selection.outcome == "holdout"
    assert evaluator.calls == ["baseline", "plan-1", "plan-2"]


def test_with_no_plan_feasible_on_the_holdout_the_baseline_is_emitted_with_a_note(tmp_path):
    failing = {**HOLDOUT, "plan-1": 80.0, "plan-2": 80.0, "plan-3": 80.0, "plan-5": 80.0}
    run = _run(tmp_path, 0.3, _Evaluator(failing), rescore_top=1)
    selected = pipeline._select_plan(run, _result(HISTORY))
    assert selected.best is None and selected.plan.is_identity
    assert selected.selection.outcome == "baseline" and selected.selection.as_dict()["differs_from_search_best"]
    # One plan per margin (0, 0.5, 1.0, 1.5 points over the threshold): plan-1, plan-2, plan-3, plan-5.
    assert [c.search_rank for c in selected.selection.candidates] == [1, 2, 3, 4]
    assert any("none of the 4 plans of the search re-scored" in n and "uncompressed baseline" in n for n in selected.notes)


def test_with_no_feasible_candidate_the_report_still_has_the_baselines_holdout_accuracy(tmp_path):
    history = [_sample(4, 1.9, 80.0, 0.2, feasible=False)]
    selected = pipeline._select_plan(_run(tmp_path, 0.3, _Evaluator(HOLDOUT)), _result(history))
    assert selected.plan.is_identity and selected.selection.candidates == ()
    assert selected.selection.as_dict()["emitted"]["holdout_accuracy"] == 89.0
    assert not selected.selection.as_dict()["differs_from_search_best"]


def test_the_report_shows_the_selection_table():
    sel = HoldoutSelection(
        fraction=0.3, search_images=84, holdout_images=36, rescore_top=2, baseline_search_accuracy=90.0,
        baseline_holdout_accuracy=89.0, search_threshold=88.0, holdout_threshold=87.0,
        candidates=(RescoredPlan(1, 2, 88.4, 85.0, 0.4, 1.6, 0.5, False, False),
                    RescoredPlan(2, 1, 89.0, 87.5, 0.45, 1.5, 0.9, True, True)),
        outcome="holdout", calibration_from_search_part=True,
    )
    text = "\n".join(_selection_markdown({"search": {"selection": sel.as_dict()}, "data": {"val": {"images": 120}}}))
    assert "## Selection on held-back VAL" in text and "84 images" in text and "36 held back" in text
    assert "| 2 | 1 | 89.00 % | 87.50 % | 45.0% |" in text and "**yes**" in text
    assert "it differs from what the search alone would have emitted" in text
    assert "on all 120 VAL images" in text

