"""--budgets (issue 17): one search, a nested family of models, one per cost budget."""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from adans_toolchain.cli.compile import main
from adans_toolchain.errors import ConfigError, SearchStateError
from adans_toolchain.pipeline import family
from adans_toolchain.pipeline.compile import compile_model
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.progress import Progress
from adans_toolchain.plan import Plan
from adans_toolchain.search.budgets import (
    CappedScore, clamp, is_nested, pareto_front, point_within, rank_candidates, split_iterations,
)
from adans_toolchain.search.scoring import AdaNSScore

BUDGETS = (0.8, 0.6, 0.4)
TINY = ["--val-limit", "60", "--holdout", "0", "--bn-recalibrate", "16", "--samples", "3", "--iterations", "3",
        "--boundary-rounds", "0", "--round-to", "4", "--max-accuracy-drop", "15", "--seed", "0",
        "--measure-batches", "1", "--measure-budget", "0.1"]


def make(**settings) -> CompileConfig:
    return CompileConfig(model="m", data="d", out="o", **settings)


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"budgets": (0.8, 1.2)}, r"--budgets 1.2: a budget is a fraction of the baseline's cost, in \(0, 1\]"),
    ({"budgets": (0.0, 0.5)}, "--budgets 0: a budget is a fraction"),
    ({"budgets": (-0.5,)}, "--budgets -0.5: a budget is a fraction"),
    ({"budgets": ()}, "--budgets needs at least one budget"),
    ({"budgets": (0.8, 0.6, 0.8)}, "--budgets must be distinct to two decimals .* 0.80 is given more than once"),
    ({"budgets": (0.801, 0.804)}, "0.80 is given more than once"),
    ({"budgets": (0.5,), "rounds": 2, "train_data": ("t.npz",), "finetune_epochs": 2},
     "--budgets searches one family of models in one round; give --rounds 1"),
    ({"budgets": (0.8, 0.6, 0.4), "iterations": 2}, "give --iterations >= 3 \\(now 2\\)"),
    ({"budgets": (0.5,), "early_rejection": "0.99"}, "--early-rejection 0.99 stops candidates below the accuracy"),
])
def test_budgets_settings_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as e:
        make(**settings)
    assert "\n" not in str(e.value)


def test_budgets_are_sorted_largest_first_and_candidates_run_on_all_of_val():
    cfg = make(budgets=(0.4, 1.0, 0.6), iterations=3)
    assert cfg.budgets == (1.0, 0.6, 0.4) and cfg.early_rejection == "off"
    assert cfg.resume_key()["budgets"] == [1.0, 0.6, 0.4]
    assert make().budgets is None and make().early_rejection == "exact"
    assert "budgets" in make().resume_key() and make().resume_key()["budgets"] is None  # old runs: the same None


# -- the pure parts --------------------------------------------------------------------------------
SCORE = CappedScore(90.0, 100.0, 80.0, 0.2, cost_cap=60.0)


def test_the_capped_score_ranks_accuracy_within_the_cap_and_penalises_cost_above_it():
    assert isinstance(SCORE, AdaNSScore)
    # Within the cap every image counts, above the threshold or below it; cost only breaks ties.
    accuracies = np.array([50.0, 70.0, 79.0, 80.0, 85.0, 89.9])
    fs = SCORE(accuracies, np.full(6, 55.0))
    assert np.all(np.diff(fs) > 0)
    assert SCORE(85.0, 40.0) > SCORE(85.0, 55.0) > SCORE(85.0, 60.0)
    assert SCORE(85.0, 40.0) < SCORE(85.2, 60.0)  # a fifth of a point outweighs 20 % of the cost
    # Above the cap the score falls steeply (a factor e per 2 % over), so the phase gathers under it; the accuracy
    # threshold adds nothing: a plan over the cap that meets it does not outrank one within it far below it.
    assert SCORE(85.0, 61.2) == pytest.approx(SCORE(85.0, 60.0) * np.exp(-1.0), rel=1e-2)
    assert SCORE(89.0, 66.0) < SCORE(60.0, 60.0)
    assert SCORE(0.0, 1e6) > 0 and np.isfinite(SCORE(0.0, 1e6))
    assert list(SCORE.within([59.0, 60.0, 61.0])) == [True, True, False]
    assert SCORE.as_dict()["budget"] == 0.6
    with pytest.raises(ValueError):
        CappedScore(90.0, 100.0, 80.0, 0.2, cost_cap=0.0)


def test_iterations_are_split_among_the_budgets_with_the_remainder_to_the_smallest():
    assert split_iterations(3, 3) == [1, 1, 1]
    assert split_iterations(8, 3) == [2, 3, 3]
    assert split_iterations(20, 1) == [20]
    assert sum(split_iterations(17, 4)) == 17
    with pytest.raises(ValueError):
        split_iterations(2, 3)


def test_nesting_and_clamping_are_coordinate_wise():
    assert is_nested((3, 5, 0), (3, 4, 0)) and not is_nested((3, 3, 1), (3, 4, 0))
    assert list(clamp(np.array([0.1, 0.7]), np.array([0.4, 0.2]))) == [0.4, 0.7]


def test_point_within_finds_the_least_compression_under_the_cap():
    def cost(xs):  # falls as compression grows, in steps of a tenth (like rounded channel counts)
        return 100.0 - 10.0 * np.floor(np.atleast_2d(xs).sum(axis=1) * 5)

    start, end = np.zeros(2), np.ones(2)
    p = point_within(start, end, cost, 70.0)
    assert cost(p)[0] <= 70.0 and cost(p - 1e-3)[0] > 70.0
    assert point_within(start, end, cost, 100.0) is start
    assert point_within(start, np.full(2, 0.05), cost, 70.0) is None
    skewed = point_within(start, end, cost, 70.0, weights=np.array([1.0, 0.25]))
    assert cost(skewed)[0] <= 70.0 and skewed[0] > skewed[1]


def test_the_pareto_front_and_the_ranking_of_candidates():
    costs, accuracies = [1.0, 0.8, 0.6, 0.7, 0.6], [90.0, 85.0, 70.0, 60.0, 75.0]
    assert pareto_front(costs, accuracies) == [4, 1, 0]
    assert rank_candidates([70.0, 80.0, 80.0, 80.0], [0.5, 0.6, 0.4, 0.4]) == [2, 3, 1, 0]


# -- choosing members: nesting by clamping, accuracy never rising ------------------------------------
class _Space:
    """Two coordinates of ten states each; cost falls by 5 % per state removed."""

    dim = 2

    def states(self, x):
        return tuple(int(min(np.floor(v * 10 + 1e-9), 9)) for v in np.asarray(x))


def _cost(run, xs):
    return np.array([1.0 - 0.05 * sum(_Space().states(x)) for x in np.atleast_2d(xs)])


def _candidate(states, accuracy):
    x = (np.array(states, dtype=np.float64) + 0.5) / 10
    cost = float(_cost(None, x)[0])
    return family.Candidate(",".join(map(str, states)), x, tuple(states), accuracy, cost, cost, 0.8, 1)


def _run():
    return SimpleNamespace(space=_Space(), cfg=SimpleNamespace(rescore_top=5, cost="macs"),
                           score=SimpleNamespace(baseline_cost=1.0), inputs=SimpleNamespace(holdout=None),
                           progress=Progress(quiet=True))


def test_a_more_accurate_plan_not_nested_in_the_larger_member_is_clamped_and_evaluated_again(monkeypatch):
    monkeypatch.setattr(family.pipeline, "points_cost", _cost)
    evaluated = []

    def accuracy(xs):
        evaluated.append(_Space().states(xs[0]))
        return np.array([76.0])

    cands = [_candidate((4, 0), 90.0),  # 0.80: the member of 0.8
             _candidate((1, 9), 80.0),  # 0.50: the most accurate within 0.5, but it keeps more of coordinate 0
             _candidate((5, 5), 70.0)]  # 0.50: nested in (4, 0)
    members, clamps = family._choose_members(_run(), (0.8, 0.5), {c.key: c for c in cands}, accuracy, allowance=10)
    assert clamps == 1 and evaluated == [(4, 9)]
    small = members[1].candidate
    assert small.states == (4, 9) and small.accuracy == 76.0 and small.clamped_from is cands[1]
    assert is_nested(small.states, members[0].candidate.states) and small.cost_ratio <= 0.5
    assert small.source()["kind"] == "clamped" and small.source()["clamped_to_member_of"] == 0.8


def test_a_clamped_plan_that_loses_leaves_the_nested_one_and_no_budget_is_left_unreached(monkeypatch):
    monkeypatch.setattr(family.pipeline, "points_cost", _cost)
    cands = [_candidate((4, 0), 90.0), _candidate((1, 9), 80.0), _candidate((5, 5), 70.0)]
    members, _ = family._choose_members(_run(), (0.8, 0.5), {c.key: c for c in cands}, lambda xs: np.array([60.0]),
                                        allowance=10)
    assert members[1].candidate is cands[2]
    with pytest.raises(ConfigError, match=r"--budgets 0.2: no evaluated plan costs at most 20% .* the cheapest evaluated "
                                          r"costs 50.0%"):
        family._choose_members(_run(), (0.8, 0.2), {c.key: c for c in cands}, lambda xs: np.array([60.0]), allowance=10)


def test_a_smaller_member_at_least_as_accurate_is_the_larger_budgets_member_too(monkeypatch):
    monkeypatch.setattr(family.pipeline, "points_cost", _cost)
    # Equal accuracy: the cheaper plan wins in both budgets.
    tied = [_candidate((2, 1), 70.0), _candidate((5, 3), 70.0)]  # 85 % and 60 % of the cost
    members, _ = family._choose_members(_run(), (0.9, 0.6), {c.key: c for c in tied}, lambda xs: np.array([0.0]),
                                        allowance=0)
    assert members[0].candidate is tied[1] and members[1].candidate is tied[1] and members[0].replaced is None
    # A clamped plan, evaluated after the larger member was chosen, can score above it (noise): it is within the
    # larger budget too, so it becomes that budget's member, and accuracy never rises as the budget shrinks.
    cands = [_candidate((4, 0), 80.0), _candidate((1, 9), 75.0), _candidate((5, 5), 60.0)]
    members, clamps = family._choose_members(_run(), (0.8, 0.5), {c.key: c for c in cands}, lambda xs: np.array([82.0]),
                                             allowance=10)
    assert clamps == 1 and members[1].candidate.states == (4, 9)
    assert members[0].candidate is members[1].candidate
    assert "at least as accurate as this budget's own choice (80.00%" in members[0].replaced


# -- the compile ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_budgets(tmp_path_factory, example_paths):
    """ResNet-20 on 60 VAL images (50 TEST), three budgets, one iteration each."""
    work = tmp_path_factory.mktemp("budgets")
    test = np.load(example_paths["test"])
    np.savez(work / "test.npz", x=test["x"][:50], y=test["y"][:50])
    out = work / "out"
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
            "--test-data", str(work / "test.npz"), *TINY, "--budgets", *map(str, BUDGETS), "-o", str(out)]
    log, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(printed):
        assert main(argv) == 0, log.getvalue()
    return out, printed.getvalue()


def _member(out, budget):
    folder = out / "budgets" / f"{budget:.2f}"
    return (json.loads((folder / "report.json").read_text()), Plan.from_json((folder / "plan.json").read_text()),
            onnx.load(str(folder / "model.onnx")))


def test_three_budgets_emit_three_validated_models_each_within_its_budget(three_budgets):
    out, printed = three_budgets
    for b in BUDGETS:
        report, plan, model = _member(out, b)
        onnx.checker.check_model(model, full_check=True)
        assert report["validation"]["relative_diff"] <= report["validation"]["tolerance"]
        unit = report["search"]["cost"]["unit"]
        assert report["compressed"]["cost"][unit] <= b * report["baseline"]["cost"][unit]
        assert report["compressed"]["macs"] <= b * report["baseline"]["macs"]
        assert report["budget"]["budget"] == b and "top1_test" in report["compressed"]
        assert report["speedup"]["measured_host"]["batch_1"]["compressed_ms"] > 0
        for name in ("report.md", "history.jsonl", "convergence.png"):
            assert (out / "budgets" / f"{b:.2f}" / name).is_file(), (b, name)
        assert not (out / "budgets" / f"{b:.2f}" / "baseline.onnx").exists()  # one baseline.onnx, in OUT
    # OUT's own files are the largest budget's member.
    assert (out / "model.onnx").read_bytes() == (out / "budgets" / "0.80" / "model.onnx").read_bytes()
    assert (out / "plan.json").read_text() == (out / "budgets" / "0.80" / "plan.json").read_text()
    assert (out / "baseline.onnx").is_file()
    top = json.loads((out / "report.json").read_text())
    assert [m["budget"] for m in top["family"]["members"]] == list(BUDGETS)
    members = [line for line in printed.splitlines() if line.startswith("budget ")]  # the summary: one line each
    assert [line.split(":")[0] for line in members] == ["budget 0.80", "budget 0.60", "budget 0.40"]
    assert all(line.endswith("model.onnx") for line in members) and "family: " in printed


def _conv_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    return {n.name: weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def test_the_members_are_nested_and_accuracy_does_not_rise_as_the_budget_shrinks(three_budgets):
    out, _ = three_budgets
    members = [_member(out, b) for b in BUDGETS]
    for (_, big, big_model), (_, small, small_model) in zip(members, members[1:]):
        for p in big.pruning:  # the plans: every group keeps a subset of the larger member's units
            assert set(small.pruning_for(p.group).keep) <= set(p.keep), p.group
        # The emitted graphs: every convolution (by node name) is no wider in the smaller model.
        big_convs, small_convs = _conv_shapes(big_model), _conv_shapes(small_model)
        assert big_convs.keys() == small_convs.keys() and len(big_convs) == 19
        for node, shape in small_convs.items():
            assert all(s <= b for s, b in zip(shape, big_convs[node])), node
    vals = [report["compressed"]["top1_val"] for report, _, _ in members]
    assert vals == sorted(vals, reverse=True)
    fam = json.loads((out / "budgets" / "family.json").read_text())
    rows = fam["members"]
    assert [r["budget"] for r in rows] == list(BUDGETS)
    assert [r["top1"]["search_val"] for r in rows] == sorted((r["top1"]["search_val"] for r in rows), reverse=True)
    for big, small in zip(rows, rows[1:]):
        assert small["nested_in"] == big["budget"]
        assert all(s["kept"] <= b["kept"] for s, b in zip(small["groups"], big["groups"]))
        for param, axes in small["parameters"].items():  # indices in the original model, a subset of the larger's
            for axis, kept in axes.items():
                outer = big["parameters"].get(param, {}).get(axis)
                assert outer is None or set(kept) <= set(outer), (param, axis)
    for r in rows:
        assert r["cost_ratio"] <= r["budget"] and r["top1"]["test"] is not None and r["measured"]["batch_1"]


def test_the_family_files_describe_every_evaluated_plan_and_the_search_stays_within_its_budget(three_budgets):
    out, _ = three_budgets
    fam = json.loads((out / "budgets" / "family.json").read_text())
    assert (out / "budgets" / "pareto.png").stat().st_size > 10_000
    md = (out / "budgets" / "family.md").read_text()
    assert "## Members" in md and "![pareto.png](pareto.png)" in md and "| 0.40 |" in md
    evaluated = fam["evaluated"]
    assert len(evaluated) >= 10 and any(e["pareto"] for e in evaluated)
    assert sorted(b for e in evaluated for b in e["members"]) == sorted(BUDGETS)
    ev = fam["evaluations"]
    assert ev["paid"] <= 2 * ev["single_compile_at_most"]
    assert [p["iterations"] for p in fam["phases"]] == [1, 1, 1]


def test_a_budget_no_plan_reaches_is_a_one_line_error_and_leaves_no_out(tmp_path, example_paths):
    cfg = CompileConfig(model=str(example_paths["model"]), arch="cifar_resnet20", data=str(example_paths["val"]),
                        out=str(tmp_path / "out"), val_limit=40, holdout=0.0, bn_recalibrate=0, samples=2, iterations=2,
                        round_to=4, budgets=(0.8, 0.01), priority="l1")
    with pytest.raises(ConfigError, match=r"--budgets 0.01 is out of reach: the cheapest plan the search can make .* "
                                          r"costs \d+\.\d% of the baseline's macs; give budgets of at least 0\.\d\d") as e:
        compile_model(cfg, Progress(quiet=True))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_resume_that_splits_the_iterations_otherwise_is_refused(three_budgets, example_paths):
    out, _ = three_budgets
    run = SimpleNamespace(ws=SimpleNamespace(root=out), cfg=SimpleNamespace(iterations=4))
    family._check_split(run, BUDGETS, split_iterations(3, 3))  # as recorded: fine
    with pytest.raises(SearchStateError, match=r"--iterations 4 splits it as \[1, 1, 2\]"):
        family._check_split(run, BUDGETS, split_iterations(4, 3))
