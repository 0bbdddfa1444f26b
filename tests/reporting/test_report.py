"""build_report formats facts the pipeline computed: hand-made facts in, report.json and report.md out, no models."""

from __future__ import annotations

import dataclasses
import json

import pytest

from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.reporting.facts import (
    Accuracies,
    BatchNormRecalibration,
    CompileOutcome,
    CompileSubject,
    ModelFacts,
    PredictedLatency,
    SearchFacts,
    SplitAccuracy,
    Storage,
)
from adans_toolchain.reporting.report import build_report, render_markdown, write_report
from adans_toolchain.search.types import IterationSummary

NO_BANDWIDTH = "the roofline has no memory bandwidth for target `host`, so it prices every kernel by its FLOPs, which reduces to MACs"

CFG = CompileConfig(model="resnet20.th", data="val.npz", out="out", test_data="test.npz", command="adans-compile resnet20.th")


def _storage(weights: int, nonzero: int) -> Storage:
    return Storage(weights, nonzero, 4 * weights, (weights + 7) // 8 + 4 * nonzero, 5 * weights, 4 * weights)


SUBJECT = CompileSubject(
    description="cifar_resnet20", input_shape=(3, 32, 32),
    target={"id": "host", "description": "this machine", "batch_size": 1, "threads": 2},
    val_images=120, test_images=500, preprocessing={"mean": [0.5], "std": [0.25]}, versions={"adans": "test"},
)

SEARCH = SearchFacts(
    methods=("ps",), sites=("layer1.0.conv1",), cost={"name": "macs", "unit": "MACs", "target": "host", "notes": []},
    score={"formula": "f", "accuracy_floor": 1.0}, accuracy_threshold=90.0, baseline_accuracy=92.5,
    boundary={"theta": [0.5]}, evaluations=40, cache_hits=2, eval_seconds=20.0, executor="local", precision="fp32",
    resumed_from=0, best={"f": 0.3, "iteration": 2, "accuracy": 91.0, "cost_ratio": 0.5, "feasible": True},
    feasible_samples=10, history_samples=18,
    iterations=(IterationSummary(0, 0.0, 3, 0.1, 0.2, None, 6, 0.5, None),
                IterationSummary(1, 0.2, 3, 0.15, 0.3, 120.0, 12, 0.5, 0.08)),
    bn_recalibration=BatchNormRecalibration(images=100, source="val.npz", from_val=True, applied_to_emitted=True),
)

OUTCOME = CompileOutcome(
    baseline=ModelFacts(macs=40_000_000, params=270_000, cost=40_000_000.0, storage=_storage(270_000, 270_000)),
    compressed=ModelFacts(macs=20_000_000, params=150_000, cost=20_000_000.0, storage=_storage(150_000, 150_000)),
    accuracies=Accuracies(
        val=SplitAccuracy(92.5, 91.0, compressed_without_bn_recalibration=60.0),
        test=SplitAccuracy(91.8, 90.2, compressed_without_bn_recalibration=58.4),
    ),
    validation={"reference": "PyTorch", "images": 120, "max_abs_diff": 1e-6, "relative_diff": 1e-7, "tolerance": 1e-4,
                "top1_agreement": 1.0, "output_scale": 10.0},
    pass_log=[{"pass": "PruneChannelsPass", "modified": True, "checked": []}],
    layers=({"layer": "layer2.0.conv2", "node": "/layer2/conv2", "op": "Conv", "edit": "channels pruned",
             "in_channels": [32, 20], "out_channels": [32, 32], "macs": [1000, 500], "params": [100, 50]},),
    groups=({"id": "layer2.0.conv2", "channels": 16, "kept": 10, "tensors": 5, "producers": 3,
             "members": ["layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"], "prunable": True},
            {"id": "linear", "channels": 10, "kept": 10, "tensors": 1, "producers": 1, "members": ["linear"],
             "prunable": False, "reason": "model output"}),
    measured={"threads": 2, "method": "min", "batch_1": {"baseline_ms": 2.0, "compressed_ms": 1.25, "baseline_median_ms": 2.1,
                                                          "compressed_median_ms": 1.3, "speedup": 1.6, "repeats": 5}},
    latency=PredictedLatency(
        baseline_ms=4.0, compressed_ms=2.0, layers_ms=({"/layer2/conv2": 0.2}, {"/layer2/conv2": 0.1}),
        source="estimated (roofline)", model={"name": "latency", "latency_source": "estimated (roofline)"},
        reduces_to_theoretical=NO_BANDWIDTH,
    ),
)


def _report(**changes) -> dict:
    outcome = dataclasses.replace(OUTCOME, **changes.pop("outcome", {}))
    search = dataclasses.replace(SEARCH, **changes.pop("search", {}))
    return build_report(CFG, SUBJECT, search, outcome, notes=["a note"], timings={"total_s": 3.0})


def test_the_report_is_the_facts_formatted():
    r = _report()
    json.dumps(r)  # everything in it is JSON
    assert r["baseline"]["macs"] == 40_000_000 and r["compressed"]["params"] == 150_000
    assert r["compressed"]["cost"] == {"MACs": 20_000_000.0}
    assert r["compressed"]["storage"]["nonzero_weights"] == 150_000
    assert r["baseline"]["top1_val"] == 92.5 and r["compressed"]["top1_test"] == 90.2
    assert r["compressed"]["top1_val_without_bn_recalibration"] == 60.0
    assert "top1_val_without_bn_recalibration" not in r["baseline"]
    assert r["speedup"]["theoretical"] == 2.0 and r["speedup"]["predicted"] == 2.0
    assert r["speedup"]["measured_host"]["batch_1"]["speedup"] == 1.6
    assert r["baseline"]["latency_ms"] == 4.0 and r["compressed"]["latency_source"] == "estimated (roofline)"
    t = r["table_iv"]["model"]
    assert t["predicted_for"] == {"target": "host", "batch_size": 1, "threads": 2}
    assert t["measured_over_theoretical"] == {"1": pytest.approx(0.8)}
    assert t["predicted_reduces_to_theoretical"] == NO_BANDWIDTH
    assert r["table_iv"]["layers"] == [{"layer": "layer2.0.conv2", "theoretical": 2.0, "predicted_ms": [0.2, 0.1], "predicted": 2.0}]
    assert r["frozen_groups"] == [{"id": "linear", "channels": 10, "reason": "model output"}]
    assert r["search"]["evaluations_per_s"] == 2.0 and r["search"]["best"]["accuracy"] == 91.0
    assert r["search"]["bn_recalibration"]["images"] == 100
    assert [it["e_range"] for it in r["search"]["iterations_log"]] == [None, 0.08]
    assert r["data"]["test"] == {"path": "test.npz", "images": 500}
    assert r["notes"] == ["a note"] and "finetuning" not in r


def test_markdown_says_the_headline_accuracy_uses_re_estimated_batchnorm_and_gives_it_without():
    md = render_markdown(_report(), [])
    assert "BatchNorm statistics re-estimated on 100 VAL images" in md
    assert "with the trained statistics the same plan scores 60.00 % on VAL and 58.40 % on TEST" in md


def test_markdown_names_other_calibration_images_and_says_nothing_when_nothing_was_re_estimated():
    other = BatchNormRecalibration(images=64, source="calib.npz", from_val=False, applied_to_emitted=True)
    assert "re-estimated on 64 images from `calib.npz`" in render_markdown(_report(search={"bn_recalibration": other}), [])
    off = BatchNormRecalibration(images=0, source=None, from_val=False, applied_to_emitted=False)
    plain = _report(search={"bn_recalibration": off},
                    outcome={"accuracies": Accuracies(SplitAccuracy(92.5, 91.0), SplitAccuracy(91.8, 90.2))})
    assert "re-estimated on" not in render_markdown(plain, [])


def test_markdown_says_when_predicted_is_theoretical_in_disguise():
    md = render_markdown(_report(), [])
    assert f"predicted = theoretical: {NO_BANDWIDTH}." in md
    measured_latency = dataclasses.replace(OUTCOME.latency, source="measured (table)", reduces_to_theoretical=None)
    assert "predicted = theoretical" not in render_markdown(_report(outcome={"latency": measured_latency}), [])


def test_group_table_shows_size_and_member_layers():
    md = render_markdown(_report(), [])
    assert "| group | size (channels) | kept | member layers | status |" in md
    assert "| layer2.0.conv2 | 16 | 10 | layer2.0.conv2, layer2.1.conv2, layer2.2.conv2 | searched |" in md
    many = dict(OUTCOME.groups[0], members=[f"l{i}" for i in range(7)])
    assert "| 7 layers: l0, l1, l2, … |" in render_markdown(_report(outcome={"groups": (many,)}), [])


def test_write_report_writes_json_markdown_and_the_convergence_plot(tmp_path):
    r = _report()
    write_report(tmp_path, r, SEARCH.iterations)
    assert json.loads((tmp_path / "report.json").read_text())["speedup"]["theoretical"] == 2.0
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert "![convergence.png](convergence.png)" in (tmp_path / "report.md").read_text()


def test_the_pipeline_detects_a_roofline_without_bandwidth_from_its_parameters(monkeypatch, tmp_path):
    from cost_models import LatencyCostModel
    from targets import load_target

    from adans_toolchain.pipeline.compile import _reduces_to_macs

    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))  # no latency table: the roofline
    a57 = load_target("cortex-a57")
    assert _reduces_to_macs(LatencyCostModel(a57)) is None  # bandwidth known: memory-bound kernels differ from MACs
    bare = dataclasses.replace(a57, memory_bandwidth_gbs=None, kernel_overhead_us=None)
    assert _reduces_to_macs(LatencyCostModel(bare)).endswith("which reduces to MACs")
    with_overhead = dataclasses.replace(a57, memory_bandwidth_gbs=None)
    assert "per-kernel constant" in _reduces_to_macs(LatencyCostModel(with_overhead))


def test_group_table_lists_the_layers_a_group_couples():
    from adans_toolchain.plan import Plan
    from adans_toolchain.plan.layer_table import plan_group_table
    from tests.helpers import build, export_and_analyse

    analysis = export_and_analyse(build("cifar_resnet20"), (3, 32, 32)).analysis
    rows = {row["id"]: row for row in plan_group_table(analysis, Plan((), "x"))}
    # CIFAR option-A shortcuts: the group named after layer2.0.conv2 (32 outputs) couples 16 channels
    # across the stage's residual convolutions.
    group = rows["layer2.0.conv2"]
    assert group["channels"] == 16 and group["producers"] == len(group["members"]) > 1
    assert "layer2.0.conv2" in group["members"] and "layer2.1.conv2" in group["members"]
    assert all(row["kept"] == row["channels"] for row in rows.values())
