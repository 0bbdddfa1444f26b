"""--max-evaluations caps the evaluations a compile pays for (one-rate rule, boundary, search), resume included;
the one-rate rule is reported beside the searched result and starts the search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adans_toolchain.cli.compile import main

TINY = ["--val-limit", "120", "--samples", "6", "--iterations", "3", "--boundary-rounds", "2",
        "--no-measure", "--max-accuracy-drop", "10"]
# 7 one-rate rule + at most 30 boundary (12 groups x 2 rounds + 6 diagonal) + 18 search evaluations:
# this cap leaves the search at least two and cuts it short.
CAP = 46  # the rule (2 variants x 7) and the boundary complete; the search is cut short


def _compile(example_paths, cap: int, *where: str) -> int:
    """A tiny compile under a cap; `where` is ("-o", OUT) or ("--resume", OUT)."""
    return main([str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
                 "--test-data", str(example_paths["test"]), *TINY, "--max-evaluations", str(cap), *where])


def _paid(out: Path) -> int:
    return len((out / "state" / "evaluations.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def capped(tmp_path_factory, example_paths):
    out = tmp_path_factory.mktemp("capped") / "out"
    assert _compile(example_paths, CAP, "-o", str(out)) == 0
    return out


def test_the_cap_is_honoured_exactly(capped):
    assert _paid(capped) == CAP
    r = json.loads((capped / "report.json").read_text())
    s = r["search"]
    assert s["max_evaluations"] == CAP and s["evaluations"] == CAP
    assert s["one_rate_rule"]["complete"] and s["boundary"]["complete"]
    assert s["history_samples"] < 6 * 3  # the search was cut short
    assert f"Evaluations were capped at {CAP} (--max-evaluations); it stopped the search early." in (capped / "report.md").read_text()


def test_the_rule_starts_the_search_and_is_reported_beside_it(capped):
    r = json.loads((capped / "report.json").read_text())
    rule = r["search"]["one_rate_rule"]
    # ResNet-20 has channel groups shared across blocks, so the rule tries both variants, 7 rounds each.
    assert 0 < rule["rate"] < 1 and rule["evaluations"] == 14 and not rule["lowered"]
    assert rule["variant"] in ("all coordinates", "shared channel groups kept whole")
    assert rule["top1_val"] >= r["search"]["accuracy_threshold"] and rule["top1_test"] is not None
    assert 0 < rule["macs_ratio"] < 1 and rule["searched"]["macs_ratio"] == r["compressed"]["macs"] / r["baseline"]["macs"]
    journal = [json.loads(line) for line in (capped / "history.jsonl").read_text().splitlines()]
    first = next(e for e in journal if e["type"] == "eval")
    mask = json.loads((capped / "state" / "one_rate.json").read_text())["mask"] or [True] * len(first["x"])
    assert first["x"] == [rule["rate"] * m for m in mask] and first["info"]["accuracy"] == rule["top1_val"]
    assert "## One-rate rule vs search" in (capped / "report.md").read_text()


def test_a_resume_with_the_same_cap_pays_for_nothing_and_a_larger_cap_goes_on(capped, example_paths, tmp_path, capsys):
    out = Path(shutil.copytree(capped, tmp_path / "copy"))
    assert _compile(example_paths, CAP, "--resume", str(out)) == 0
    assert _paid(out) == CAP
    assert json.loads((out / "report.json").read_text())["search"]["evaluations"] == 0
    summary = capsys.readouterr().out
    assert "one-rate rule (r = " in summary and "; searched: " in summary
    assert _compile(example_paths, CAP + 4, "--resume", str(out)) == 0
    assert _paid(out) == CAP + 4


def test_the_rule_is_also_reported_at_the_searched_plans_cost(capped, capsys):
    """The searched plan here is cheaper than the rule, so the rule is pushed to the same cost and scored."""
    r = json.loads((capped / "report.json").read_text())
    rule = r["search"]["one_rate_rule"]
    searched, at_cost = rule["searched"], rule["at_searched_cost"]
    assert searched["cost_ratio"] < rule["cost_ratio"]
    assert at_cost["rate"] > rule["rate"] and at_cost["variant"] == rule["variant"]
    # The rate whose cost is nearest the searched plan's (costs move in steps of one unit per group).
    assert abs(at_cost["cost_ratio"] - searched["cost_ratio"]) < 0.05
    assert at_cost["top1_test"] is not None and at_cost["evaluations"] == 0
    assert "one-rate rule at the searched cost" in (capped / "report.md").read_text()
