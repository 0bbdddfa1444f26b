"""The latency model: table lookups, layout replay, staircase, fallbacks, roofline, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.plan.workload import graph_workload, plan_workloads
from adans_toolchain.plan import GroupPruning, Plan
from cost_models import (
    LookupTable,
    LookupTableMismatchError,
    RooflineUnavailableError,
    UnsupportedOperatorError,
    executed_kernels,
    make_cost_model,
    structure_fingerprint,
    workload_macs,
)
from cost_models.kernels import Kernel
from cost_models.roofline import kernel_bytes, kernel_flops
from tests.cost_models.fixtures import affine_ms, conv, make_target, synthetic_table, unary


def keep_first(resnet20, group_id: str, kept: int) -> Plan:
    g = {g.id: g for g in resnet20.analysis.groups}[group_id]
    return Plan((GroupPruning(g.id, g.size, tuple(range(kept))),))


def test_prediction_is_the_sum_of_table_entries(synthetic_lut, resnet20):
    target, path = synthetic_lut
    model = make_cost_model("latency", target, lut_path=path, missing="error")
    work = graph_workload(resnet20.analysis.graph)
    pred = model.predict(work)
    expected = sum(affine_ms(k) for k in executed_kernels(work))
    assert pred.total_ms == pytest.approx(expected, rel=1e-12)
    assert all(k.how == "measured" for k in pred.kernels)  # the baseline's channel counts are grid points
    assert model.describe()["latency_source"] == "measured table"
    assert model.unit == "ms"


def test_interpolated_plans_match_the_smooth_function(synthetic_lut, resnet20, resnet20_space):
    target, path = synthetic_lut
    model = make_cost_model("latency", target, lut_path=path, missing="error")
    plan = resnet20_space.decode(np.random.default_rng(3).random(resnet20_space.dim) * 0.8)
    work = plan_workloads(resnet20.analysis, [plan])[0]
    pred = model.predict(work)
    assert any(k.how == "interpolated" for k in pred.kernels)
    # affine in MACs and bytes, which are bilinear in the channel counts: interpolation is exact
    assert pred.total_ms == pytest.approx(sum(affine_ms(k) for k in executed_kernels(work)), rel=1e-9)


def staircase_ms(kernel: Kernel) -> float:
    counts = kernel.channels(kernel.default_axes())
    aligned = all(c % 8 == 0 for c in counts if c > 3)
    return affine_ms(kernel) * (0.6 if aligned else 1.0)


def test_staircase_makes_aligned_counts_cheaper(tmp_path, resnet20, resnet20_specs):
    """Where the table shows multiples of 8 to be faster, 16 kept channels cost less than 15."""
    target = make_target()
    path = tmp_path / "stairs.json"
    synthetic_table(resnet20_specs.values(), target, ms=staircase_ms).save(path)
    latency = make_cost_model("latency", target, lut_path=path, missing="error")
    macs = make_cost_model("macs", target)
    plans = [keep_first(resnet20, "layer1.0.conv1", k) for k in (16, 15, 14, 9, 8)]
    works = plan_workloads(resnet20.analysis, plans)
    t16, t15, t14, t9, t8 = latency.estimate(works)
    assert t16 < t15 and t8 < t9  # the staircase
    assert t14 < t15 and t9 < t14  # and monotone between steps
    m16, m15, *_ = macs.estimate(works)
    assert m15 < m16  # MACs alone would prefer 15


def test_layout_changes_are_replayed_as_reorders(tmp_path):
    # x(3 ch) -conv1-> a(8) -conv2-> b(8) -conv3-> c(8); blocked when both channel counts are multiples of 8.
    work = (conv("c1", "x", "a", 3, 8, 16), conv("c2", "a", "b", 8, 8, 16), conv("c3", "b", "c", 8, 8, 16))

    class Spec:  # one family (the three convs share it), measured at the three kernels' channel counts
        def __init__(self, kernels: list[Kernel]):
            self.kernel, self.axes = kernels[0], kernels[0].default_axes()
            self._points = sorted({k.channels(self.axes) for k in kernels})

        def points(self):
            return self._points

    kernels = executed_kernels(work)
    target = make_target()
    path = tmp_path / "blocked.json"
    specs = [Spec(list(kernels))]

    def layout(k):
        return "blocked" if k.input_shape[1] % 8 == 0 and k.output_shape[1] % 8 == 0 else "plain"

    synthetic_table(specs, target, layout=layout).save(path)
    pred = make_cost_model("latency", target, lut_path=path, missing="error").predict(work)
    # a is produced plain and read blocked; c leaves the model blocked and must be made plain.
    assert sorted((t, d) for t, d, _ in pred.reorders) == [("a", "ReorderInput"), ("c", "ReorderOutput")]
    assert pred.total_ms == pytest.approx(sum(affine_ms(k) for k in kernels) + pred.reorder_ms)
    assert pred.nodes == 3 + 2


def test_missing_family_is_an_error_or_a_reported_estimate(tmp_path, resnet20, resnet20_specs):
    target = make_target()
    specs = [s for s in resnet20_specs.values() if s.kernel.pattern != "Gemm"]
    path = tmp_path / "nogemm.json"
    synthetic_table(specs, target).save(path)
    work = graph_workload(resnet20.analysis.graph)
    with pytest.raises(UnsupportedOperatorError, match="no entry for Gemm"):
        make_cost_model("latency", target, lut_path=path, missing="error").estimate([work])
    model = make_cost_model("latency", target, lut_path=path)
    cost = model.estimate([work])[0]
    gemm = [k for k in executed_kernels(work) if k.pattern == "Gemm"][0]
    without = sum(affine_ms(k) for k in executed_kernels(work) if k.pattern != "Gemm")
    assert cost - without == pytest.approx(affine_ms(gemm), rel=1e-3)  # the Gemm is not free: the fit recovers it
    assert any("not in the table" in n and "Gemm" in n for n in model.notes)
    assert model.describe()["latency_source"] == "measured table + roofline fallback"


def test_unknown_operator_raises(synthetic_lut, tmp_path, monkeypatch):
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))
    work = (conv("c1", "x", "a", 3, 8, 16), unary("FancyOp", "f", "a", "y", (1, 8, 16, 16)))
    with pytest.raises(UnsupportedOperatorError, match="FancyOp"):
        make_cost_model("latency", make_target()).estimate([work])  # roofline
    target, path = synthetic_lut
    with pytest.raises(UnsupportedOperatorError, match="FancyOp"):
        make_cost_model("latency", target, lut_path=path).estimate([work])  # table, fallback cannot cost it either


def test_roofline_without_a_table_is_reported_as_estimated(tmp_path, monkeypatch):
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))
    target = make_target()
    model = make_cost_model("latency", target)
    assert model.describe()["latency_source"] == "estimated (roofline)"
    assert any(n.startswith("estimated (roofline)") for n in model.notes)
    work = (conv("c1", "x", "y", 64, 64, 16),)
    k = executed_kernels(work)[0]
    flops, nbytes = kernel_flops(k), kernel_bytes(k)
    assert flops == 2 * workload_macs(work)
    assert nbytes == 4 * (64 * 256 * 2 + 64 * 64 * 9)
    expected = max(flops / 64e9, nbytes / 20e9) * 1e3 + 0.005
    assert model.estimate([work])[0] == pytest.approx(expected)


def test_roofline_needs_a_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))
    with pytest.raises(RooflineUnavailableError, match="adans-profile --target testcpu"):
        make_cost_model("latency", make_target(peak_gflops=None))


def test_the_default_table_location_is_used(tmp_path, monkeypatch, resnet20_specs):
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))
    target = make_target()
    synthetic_table(resnet20_specs.values(), target).save(tmp_path / "testcpu.json")
    model = make_cost_model("latency", target)
    assert model.describe()["latency_source"] == "measured table"
    assert model.describe()["lut"]["path"] == str(tmp_path / "testcpu.json")


def test_a_table_for_another_runtime_is_refused(tmp_path, resnet20_specs):
    target = make_target()
    table = synthetic_table(resnet20_specs.values(), target)
    table.header["threads"] = 4
    table.save(tmp_path / "t.json")
    with pytest.raises(LookupTableMismatchError, match="threads 4 != 2.*Re-profile"):
        make_cost_model("latency", target, lut_path=tmp_path / "t.json")
    # the host target must match this machine's ONNX Runtime exactly
    host_like = synthetic_table(resnet20_specs.values(), make_target(id="host"), device="Some other CPU, 64 cores")
    host_like.header["onnxruntime"] = "0.0.1"
    host_like.save(tmp_path / "h.json")
    from targets import load_target

    with pytest.raises(LookupTableMismatchError, match="onnxruntime 0.0.1"):
        make_cost_model("latency", load_target("host"), lut_path=tmp_path / "h.json", threads=2)


def test_a_batch_the_table_lacks_is_refused(synthetic_lut, resnet20):
    target, path = synthetic_lut
    model = make_cost_model("latency", target, lut_path=path)
    with pytest.raises(LookupTableMismatchError, match="not 4"):
        model.estimate([graph_workload(resnet20.analysis.graph, batch=4)])


def test_calibration_scales_only_the_model_it_was_measured_on(synthetic_lut, resnet20):
    target, path = synthetic_lut
    table = LookupTable.load(path)
    work = graph_workload(resnet20.analysis.graph)
    fp = structure_fingerprint(executed_kernels(work))
    table.calibration = [{"model": "r20", "fingerprint": fp, "batch": 1, "ratio": 0.5, "apply": True}]
    table.save(path)
    plain = make_cost_model("latency", target, lut_path=path, calibrate=False).estimate([work])[0]
    assert make_cost_model("latency", target, lut_path=path).estimate([work])[0] == pytest.approx(0.5 * plain)
    other = (conv("c1", "x", "y", 3, 16, 32),)
    assert make_cost_model("latency", target, lut_path=path).predict(other).scale == 1.0
