"""The CLI the way the README runs it, on the bundled example with a tiny budget."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from adans_toolchain.cli.compile import main
from adans_toolchain.evaluation.executors import LocalExecutor, evaluation_chunk
from adans_toolchain.pipeline.compile import ONE_RATE_ROUNDS
from adans_toolchain.plan import Plan
from adans_toolchain.runtime.sessions import run_onnx

TINY = ["--val-limit", "120", "--samples", "6", "--iterations", "3", "--boundary-rounds", "2",
        "--measure-batches", "1", "4", "--measure-budget", "0.3", "--max-accuracy-drop", "10"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, example_paths):
    out = tmp_path_factory.mktemp("compile") / "out"
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--target", "host",
            "--data", str(example_paths["val"]), "--test-data", str(example_paths["test"]), *TINY, "-o", str(out)]
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        assert main(argv) == 0
    (out.parent / "stderr.txt").write_text(log.getvalue())
    return out


def test_the_budget_is_announced_before_the_search_and_kept(compiled):
    log = (compiled.parent / "stderr.txt").read_text()
    announced = re.search(
        r"budget: at most (\d+) one-rate rule \+ (\d+) boundary \+ (\d+) search = (\d+) evaluations .* about \d+ min at [\d.]+ s each", log
    )
    assert announced, log
    assert log.index("budget:") < log.index("one-rate rule (all coordinates): bisection") < log.index("boundary characterisation")
    rule, boundary, search, total = map(int, announced.groups())
    # ResNet-20's shared channel groups give the rule a second variant: 2 x 7 rounds.
    assert search == 6 * 3 and rule == 2 * ONE_RATE_ROUNDS and total == rule + boundary + search
    r = json.loads((compiled / "report.json").read_text())
    spent = r["search"]["boundary"]["evaluations"]
    assert 0 < spent <= boundary


def test_outputs_are_written(compiled):
    for name in ("model.onnx", "baseline.onnx", "plan.json", "history.jsonl", "report.json", "report.md", "config.json"):
        assert (compiled / name).is_file(), name
    onnx.checker.check_model(onnx.load(str(compiled / "model.onnx")), full_check=True)
    Plan.from_json((compiled / "plan.json").read_text())


def test_report_has_the_promised_fields(compiled):
    r = json.loads((compiled / "report.json").read_text())
    for side in ("baseline", "compressed"):
        for key in ("top1_val", "top1_test", "macs", "params"):
            assert key in r[side], (side, key)
    assert r["speedup"]["theoretical"] == pytest.approx(r["baseline"]["macs"] / r["compressed"]["macs"])
    measured = r["speedup"]["measured_host"]
    assert set(k for k in measured if k.startswith("batch_")) == {"batch_1", "batch_4"}
    assert measured["batch_1"]["speedup"] > 0
    assert r["validation"]["max_abs_diff"] <= 1e-4 * r["validation"]["output_scale"]
    assert {g["id"] for g in r["frozen_groups"]} == {"input", "linear"}
    assert all(g["reason"] for g in r["frozen_groups"])
    assert r["seed"] == 0 and r["command"].startswith("adans-compile")
    assert "torch" in r["versions"] and "onnxruntime" in r["versions"]
    # The per-layer table and the search log are there for people.
    md = (compiled / "report.md").read_text()
    assert "| layer | op |" in md and "layer3.2.conv1" in md


def test_the_plan_is_chosen_on_held_back_val_and_the_report_gives_both_accuracies(compiled):
    r = json.loads((compiled / "report.json").read_text())
    val = r["data"]["val"]
    assert val["search_images"] + val["holdout_images"] == val["images"] == 120 and val["holdout_images"] == 36
    sel = r["search"]["selection"]
    assert (sel["search_images"], sel["holdout_images"], sel["fraction"]) == (84, 36, 0.3)
    emitted = sel["emitted"]
    assert {"search_accuracy", "holdout_accuracy", "cost_ratio"} <= set(emitted)
    assert 1 <= len(sel["candidates"]) <= 5
    assert sum(c["chosen"] for c in sel["candidates"]) == (emitted["plan"] != "baseline")
    for c in sel["candidates"]:
        assert {"search_accuracy", "holdout_accuracy", "cost_ratio", "chosen"} <= set(c)
    if r["search"]["best"] is not None:
        chosen = next(c for c in sel["candidates"] if c["chosen"])
        assert r["search"]["best"]["accuracy"] == chosen["search_accuracy"] == emitted["search_accuracy"]
        assert r["search"]["best"]["holdout_accuracy"] == chosen["holdout_accuracy"] == emitted["holdout_accuracy"]
    # The search's threshold and baseline are on SEARCH-VAL; the headline is the emitted model on all of VAL.
    assert r["search"]["baseline_top1_val_substituted"] == sel["baseline_search_accuracy"]
    md = (compiled / "report.md").read_text()
    assert "## Selection on held-back VAL" in md and "on all 120 VAL images" in md


def test_reported_accuracy_is_the_emitted_models(compiled, example_paths):
    r = json.loads((compiled / "report.json").read_text())
    data = np.load(example_paths["test"])
    x = (data["x"].astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], dtype=np.float32
    )
    logits = run_onnx(onnx.load(str(compiled / "model.onnx")), x.transpose(0, 3, 1, 2).astype(np.float32))
    assert 100.0 * np.mean(logits.argmax(1) == data["y"]) == pytest.approx(r["compressed"]["top1_test"])


def test_history_is_written_per_sample(compiled):
    lines = [json.loads(line) for line in (compiled / "history.jsonl").read_text().splitlines()]
    evals = [line for line in lines if line["type"] == "eval"]
    assert len(evals) == 6 * 3
    assert all({"accuracy", "cost", "feasible"} <= set(e["info"]) for e in evals)


def test_resume_of_a_finished_run_evaluates_nothing_new(compiled, example_paths, tmp_path):
    # On a copy: the other tests read the fixture's report as the first run wrote it.
    compiled = Path(shutil.copytree(compiled, tmp_path / "copy"))
    before = (compiled / "state" / "evaluations.jsonl").read_text()
    holdout_before = (compiled / "state" / "holdout_evaluations.jsonl").read_text()
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
            "--test-data", str(example_paths["test"]), *TINY, "--no-measure", "--resume", str(compiled)]
    assert main(argv) == 0
    assert (compiled / "state" / "evaluations.jsonl").read_text() == before
    assert (compiled / "state" / "holdout_evaluations.jsonl").read_text() == holdout_before  # re-scoring not redone
    r = json.loads((compiled / "report.json").read_text())
    assert r["search"]["evaluations"] == 0 and r["search"]["resumed_from_iteration"] == 3


def test_a_run_killed_mid_batch_keeps_finished_chunks_and_resumes_to_the_same_result(
    compiled, example_paths, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "killed"
    common = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
              "--test-data", str(example_paths["test"]), *TINY, "--no-measure"]
    chunk = evaluation_chunk(1)
    # The one-rate rule's points come one at a time (a repeated rate is a cache hit, so fewer
    # than ONE_RATE_ROUNDS may be paid); the bisection then evaluates in chunks.
    calls = {"single": 0, "chunks": 0}
    original = LocalExecutor.screen  # what the cached accuracy calls

    def killed_after_one_chunk(self, plans):
        if len(plans) > 1:
            calls["chunks"] += 1
            if calls["chunks"] > 1:
                raise KeyboardInterrupt  # Ctrl-C during the first bisection round
        else:
            calls["single"] += 1
        return original(self, plans)

    monkeypatch.setattr(LocalExecutor, "screen", killed_after_one_chunk)
    assert main([*common, "-o", str(out)]) == 130
    rule = calls["single"]
    assert 1 <= rule <= 2 * ONE_RATE_ROUNDS  # two variants of the rule
    kept = (out / "state" / "evaluations.jsonl").read_text().splitlines()
    assert len(kept) == rule + chunk  # the first bisection round has more coordinates than one chunk
    err = capsys.readouterr().err
    assert f"{chunk}/" in err and "bisection round 1/2" in err  # the long round shows it advancing
    assert "interrupted" in err

    monkeypatch.setattr(LocalExecutor, "screen", original)
    assert main([*common, "--resume", str(out)]) == 0
    resumed = json.loads((out / "report.json").read_text())
    first = json.loads((compiled / "report.json").read_text())
    assert resumed["search"]["evaluations"] == first["search"]["evaluations"] - rule - chunk
    assert sorted((out / "state" / "evaluations.jsonl").read_text().splitlines()) == sorted(
        (compiled / "state" / "evaluations.jsonl").read_text().splitlines()
    )
    assert Plan.from_json((out / "plan.json").read_text()) == Plan.from_json((compiled / "plan.json").read_text())


def test_report_predicts_latency_on_the_target_and_builds_table_iv(compiled):
    r = json.loads((compiled / "report.json").read_text())
    # No table profiled for this host in the test environment: the roofline estimate, labelled so.
    assert r["baseline"]["latency_source"] == r["compressed"]["latency_source"] == "estimated (roofline)"
    assert r["baseline"]["latency_ms"] > 0 and r["compressed"]["latency_ms"] > 0
    assert r["speedup"]["predicted"] == pytest.approx(r["baseline"]["latency_ms"] / r["compressed"]["latency_ms"])
    t = r["table_iv"]["model"]
    assert t["theoretical"] == r["speedup"]["theoretical"]
    assert t["predicted_for"] == {"target": "host", "batch_size": 1, "threads": r["target"]["threads"]}
    assert t["measured_over_theoretical"]["1"] == pytest.approx(t["measured_host"]["1"] / t["theoretical"])
    layers = {row["layer"]: row for row in r["table_iv"]["layers"]}
    assert set(layers) == {row["layer"] for row in r["layers"]}
    assert layers["layer1.0.conv1"]["predicted_ms"][0] > 0
    assert "Table IV" in (compiled / "report.md").read_text()
    assert "estimated (roofline)" in (compiled / "report.md").read_text()


@pytest.mark.parametrize("cost", ["latency", "memory"])
def test_search_minimises_the_chosen_cost_model(cost, tmp_path, example_paths):
    out = tmp_path / cost
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--target", "cortex-a57", "--cost", cost,
            "--data", str(example_paths["val"]), *TINY, "--no-measure", "--bn-recalibrate", "0", "-o", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["search"]["cost"]["name"] == cost
    assert r["search"]["cost"]["unit"] == ("ms" if cost == "latency" else "bytes")
    # The best sample's cost is what the search model prices the emitted model at, relative to the baseline.
    best = r["search"]["best"]
    if best is not None:
        unit = r["search"]["cost"]["unit"]
        assert best["cost_ratio"] == pytest.approx(r["compressed"]["cost"][unit] / r["baseline"]["cost"][unit], rel=1e-6)
    assert r["table_iv"]["model"]["predicted_for"]["target"] == "cortex-a57"
    assert r["table_iv"]["model"]["predicted_for"]["threads"] == 4


def test_baseline_is_emitted_when_no_candidate_is_cheaper(tmp_path, example_paths, monkeypatch):
    """A cost under which every compressed candidate costs more (as latency can, off the SIMD blocking)."""
    import numpy as np

    from cost_models import CostModel, workload_macs
    from adans_toolchain.pipeline import compile as pipeline

    class PruningIsExpensive(CostModel):
        name, unit = "inverse-macs", "units"

        def estimate(self, workloads):
            return np.array([1e9 / workload_macs(w) for w in workloads])

    monkeypatch.setattr(pipeline, "search_cost_model", lambda cost, target, lut: PruningIsExpensive(target))
    out = tmp_path / "out"
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]), *TINY,
            "--no-measure", "--bn-recalibrate", "0", "-o", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["search"]["feasible_samples"] > 0 and r["search"]["best"] is None
    assert r["compressed"]["macs"] == r["baseline"]["macs"]
    assert any("costs less than the baseline" in n for n in r["notes"])
    assert Plan.from_json((out / "plan.json").read_text()).is_identity
