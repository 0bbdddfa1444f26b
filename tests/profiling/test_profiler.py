"""The profiler: single-kernel graphs, timing, and a tiny table built end to end and read back."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adans_toolchain.plan.workload import graph_workload, plan_workloads
from adans_toolchain.plan import GroupPruning, Plan
from adans_toolchain.cli.profile import main as profile_main
from adans_toolchain.profiling.graphs import UnsupportedKernelError, kernel_graph
from adans_toolchain.profiling.grid import GridRule, axis_grid
from adans_toolchain.profiling.profiler import ModelToProfile, plan_families, profile
from adans_toolchain.profiling.timing import TimingConfig, time_graphs
from cost_models import LookupTable, LookupTableMismatchError, make_cost_model
from cost_models.latency import BLOCKED_RESIDUAL
from targets import load_target
from targets.host import device_name
from tests.helpers import build, export_and_analyse

FAST = TimingConfig(threads=1, warmup=1, rounds=1, min_runs=2, max_runs=3, ms_per_pack=1.0)
TINY_GRID = GridRule(align=4, dense_limit=4, aligned_points=0, unaligned_points=0, small_all=2)


def tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()


@pytest.fixture(scope="module")
def tiny():
    exported = export_and_analyse(tiny_module(), (3, 8, 8))
    return ModelToProfile("tiny", exported.onnx_model, exported.analysis, (3, 8, 8))


def test_axis_grid_rule():
    rule = GridRule(align=8)
    assert axis_grid(16, rule) == list(range(1, 17))
    g = axis_grid(96, rule)
    assert all(m in g for m in range(8, 65, 8))  # every multiple of 8 up to the dense limit
    assert 1 in g and 7 in g and 96 in g and 95 in g
    assert axis_grid(96, rule, variable=False) == [96]
    with pytest.raises(ValueError, match="probe"):
        axis_grid(96, GridRule())


@pytest.mark.parametrize("name,shape", [("cifar_resnet20", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32))])
def test_every_family_builds_and_runs(name, shape):
    exported = export_and_analyse(build(name).eval(), shape)
    specs = plan_families([ModelToProfile(name, exported.onnx_model, exported.analysis, shape)], (1,), GridRule(align=8))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for spec in specs.values():
        points = spec.points()
        for p in (points[0], points[len(points) // 2], points[-1]):
            variants = [None] + ([BLOCKED_RESIDUAL] if spec.kernel.residual else [])
            for variant in variants:
                try:
                    g = kernel_graph(spec.kernel, p, spec.axes, variant=variant)
                except UnsupportedKernelError:
                    assert spec.kernel.pattern == "Pad"  # a Pad cannot shrink its channels
                    continue
                session = ort.InferenceSession(g.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
                feeds = {k: np.zeros(s, np.float32) for k, s in g.feeds.items()}
                out = session.run(None, feeds)[0]
                assert out.shape == g.output_shape, (spec.kernel.pattern, p, variant)
                assert spec.kernel.with_channels(spec.axes, p).output_shape == g.output_shape


def test_timing_packs_report_each_kernel(tiny):
    k = [k for k in plan_families([tiny], (1,), TINY_GRID).values() if k.kernel.pattern == "Conv+Relu" and k.axes == ("c_in", "c_out")][0]
    graphs = [kernel_graph(k.kernel, p, k.axes) for p in [(8, 8), (3, 3), (4, 8)]]
    timings = time_graphs(graphs, FAST)
    assert len(timings) == 3
    for t in timings:
        assert t.min_ms > 0 and t.median_ms >= t.min_ms and t.repeats >= 2 and t.nodes >= 1
        blocked_kernel = any("nchwc" in n for n in t.node_types)
        assert (t.in_layout == "blocked") <= blocked_kernel  # a boundary reorder only feeds a blocked kernel
        assert (t.out_layout == "blocked") == (t.out_reorder_ms is not None)


def test_profile_end_to_end_and_read_back(tiny, tmp_path):
    host = load_target("host")
    out = tmp_path / "host.json"
    log = []
    table = profile([tiny], host, out, threads=1, rule=TINY_GRID, timing=FAST, calibration="check",
                    calibration_budget_s=0.2, progress=log.append)
    assert out.is_file()
    data = json.loads(out.read_text())
    h = data["header"]
    assert data["format"] == "adans-lut/1"
    assert h["target"] == "host" and h["device"] == device_name() and h["threads"] == 1 and h["batch_sizes"] == [1]
    assert h["onnxruntime"] == ort.__version__ and h["date"] and h["timing"]["method"] == "node-profile"
    assert h["grid"]["align"] == 4 and h["models"][0]["name"] == "tiny"
    assert {"per_node_ms", "run_overhead"} <= set(data["runtime"])
    patterns = {f["fields"]["pattern"] for f in data["families"]}
    assert {"Conv+Relu", "GlobalAveragePool", "Flatten", "Gemm"} <= patterns
    entry = data["calibration"][0]
    assert entry["model"] == "tiny" and entry["measured_ms"] > 0 and entry["predicted_ms"] > 0 and entry["apply"] is False
    # The latency model reads it back and prices the baseline and a pruned plan.
    model = make_cost_model("latency", host, lut_path=out, threads=1)
    base = model.predict(graph_workload(tiny.analysis.graph))
    assert base.total_ms > 0 and all(k.how == "measured" for k in base.kernels)
    group = tiny.analysis.prunable_groups[0]
    plan = Plan((GroupPruning(group.id, group.size, tuple(range(2))),))  # 2 channels: between grid points 1 and 3
    pruned = model.predict(plan_workloads(tiny.analysis, [plan])[0])
    assert any(k.how == "interpolated" for k in pruned.kernels)
    # Resuming measures nothing again; resuming with other settings is refused.
    before = sum(len(f.points) for f in table.families.values())
    again = profile([tiny], host, out, threads=1, rule=TINY_GRID, timing=FAST, calibration="off", progress=log.append)
    assert sum(len(f.points) for f in again.families.values()) == before
    with pytest.raises(LookupTableMismatchError, match="threads"):
        profile([tiny], host, out, threads=2, rule=TINY_GRID, timing=FAST, calibration="off", progress=log.append)
    # A model that reads the table with other threads is refused too.
    with pytest.raises(LookupTableMismatchError, match="threads 1 != 2"):
        make_cost_model("latency", host, lut_path=out, threads=2)
    assert LookupTable.load(out).header["skipped"] == []


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_cli(tmp_path, capsys):
    path = tmp_path / "tiny.pt"
    torch.jit.trace(tiny_module(), torch.zeros(1, 3, 8, 8)).save(str(path))
    out = tmp_path / "cli.json"
    code = profile_main(["--model", str(path), "--input-size", "8", "8", "--threads", "1", "--align", "4",
                         "--dense-limit", "4", "--rounds", "1", "--max-runs", "2", "--ms-per-pack", "1",
                         "--calibration", "off", "-o", str(out)])
    assert code == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    assert profile_main(["--target", "no-such-device", "--builtin", "cifar_resnet20"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert profile_main(["-o", str(out)]) == 2
    assert "nothing to profile" in capsys.readouterr().err


def test_alignment_is_probed_from_the_runtime():
    from adans_toolchain.profiling.profiler import probe_alignment

    align, how = probe_alignment(load_target("host"), FAST)
    assert align in (1, 2, 4, 8, 16, 32) and how
