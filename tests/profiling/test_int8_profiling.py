"""int8 kernels in the profiler: QDQ graphs ONNX Runtime fuses, timed beside float ones, written and read back."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from adans_toolchain.cli.profile import _precisions
from adans_toolchain.cli.profile import main as profile_main
from adans_toolchain.plan.workload import graph_workload
from adans_toolchain.profiling.graphs import UnsupportedKernelError, kernel_graph
from adans_toolchain.profiling.grid import GridRule
from adans_toolchain.profiling.profiler import ModelToProfile, plan_families, profile
from adans_toolchain.profiling.timing import time_graphs
from adans_toolchain.runtime.sessions import session_options
from cost_models import LookupTable, OpWorkload, make_cost_model, with_weight_bits
from cost_models.kernels import Kernel
from cost_models.lut import DEQUANTIZE, QUANTIZE, QUANTIZED
from targets import load_target
from tests.helpers import build, export_and_analyse
from tests.profiling.test_profiler import FAST, TINY_GRID

# What ONNX Runtime's CPU provider runs for a fused QDQ layer (1.32 on x86: its integer convolution channels-last
# in the com.microsoft domain, QGemm, QLinearMatMul, QLinearAdd for a residual).
FUSED_INT8 = {"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "ConvInteger", "MatMulInteger"}


def optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    path = tmp_path / "optimized.onnx"
    ort.InferenceSession(model.SerializeToString(), session_options(1, optimized_path=str(path)),
                         providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def matmul_kernel() -> Kernel:
    op = OpWorkload("MatMul", "mm", (1, 64), (1, 32), weight_shape=(64, 32), input_names=("x", "w"),
                    output_names=("y",))
    return Kernel("MatMul", (op,), "x", None, (), "y")


@lru_cache(maxsize=1)
def kernels_to_check() -> list[tuple[Kernel, tuple[str, ...], tuple[int, ...]]]:
    """One kernel of each weighted kind the tables cover: Conv+Relu, Conv+Add+Relu, depthwise Conv+Clip, Conv, Gemm, MatMul."""
    found = {}
    for name in ("cifar_resnet20", "mobilenet_v2"):
        exported = export_and_analyse(build(name).eval(), (3, 32, 32))
        model = ModelToProfile(name, exported.onnx_model, exported.analysis, (3, 32, 32))
        for spec in plan_families([model], (1,), GridRule(align=8), ("fp32", "int8")).values():
            k = spec.kernel
            if k.quantized:
                found.setdefault((k.pattern, k.is_depthwise), (k, spec.axes, spec.points()[-1]))
    mm = matmul_kernel().with_weight_bits(8)
    found[("MatMul", False)] = (mm, mm.default_axes(), mm.channels(mm.default_axes()))
    return list(found.values())


def test_int8_kernel_graphs_are_qdq_models_that_onnx_runtime_fuses(tmp_path):
    checked = set()
    for kernel, axes, point in kernels_to_check():
        g = kernel_graph(kernel, point, axes)
        onnx.checker.check_model(g.model, full_check=True)
        types = [n.op_type for n in g.model.graph.node]
        assert g.quantized and "QuantizeLinear" in types and "DequantizeLinear" in types
        weights = [t for t in g.model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
        assert weights and all(-64 <= v <= 64 for v in onnx.numpy_helper.to_array(weights[0]).flat)  # INT8_SCHEME range
        fused = optimized(g.model, tmp_path)
        fused_types = {n.op_type for n in fused.graph.node}
        assert fused_types & FUSED_INT8, (kernel.pattern, fused_types)
        assert not fused_types & {"Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm"}, (kernel.pattern, fused_types)
        assert len(fused.graph.node) < len(g.model.graph.node)
        session = ort.InferenceSession(g.model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
        out = session.run(None, {k: np.random.default_rng(0).standard_normal(s).astype(np.float32) for k, s in g.feeds.items()})[0]
        assert out.shape == g.output_shape == kernel.with_channels(axes, point).output_shape
        checked.add(kernel.pattern + (" depthwise" if kernel.is_depthwise else ""))
    assert {"Conv+Relu", "Conv+Add+Relu", "Conv+Clip depthwise", "Conv", "Gemm", "MatMul"} <= checked


def test_int8_timing_leaves_the_float_boundary_out_of_the_kernel():
    kernel, axes, point = next((k, a, p) for k, a, p in kernels_to_check() if k.pattern == "Conv+Add+Relu")
    float_graph, int8_graph = kernel_graph(kernel.with_weight_bits(32), point, axes), kernel_graph(kernel, point, axes)
    timed_float, timed_int8 = time_graphs([float_graph, int8_graph], FAST)
    assert timed_int8.in_layout == timed_int8.out_layout == QUANTIZED and timed_float.in_layout != QUANTIZED
    # The kernel is the integer convolution and the integer Add; the input's quantize and the output's dequantize
    # (and the transposes beside them) are the boundary, timed apart.
    assert {t.split(":")[-1] for t in timed_int8.node_types} == {"QLinearConv", "QLinearAdd"}
    assert timed_int8.in_reorder_ms > 0 and timed_int8.out_reorder_ms > 0 and timed_int8.min_ms > 0


def test_int8_graphs_exist_only_for_weighted_kernels():
    relu = OpWorkload("Relu", "r", (1, 8, 4, 4), (1, 8, 4, 4), weight_bits=8, input_names=("x",), output_names=("y",))
    with pytest.raises(UnsupportedKernelError, match="int8"):
        kernel_graph(Kernel("Relu", (relu,), "x", None, (), "y"), (8,), ("c",))


@pytest.fixture(scope="module")
def tiny():
    from tests.profiling.test_profiler import tiny_module

    exported = export_and_analyse(tiny_module(), (3, 8, 8))
    return ModelToProfile("tiny", exported.onnx_model, exported.analysis, (3, 8, 8))


def test_int8_entries_are_written_resumed_into_a_float_table_and_priced(tiny, tmp_path):
    host = load_target("host")
    out = tmp_path / "host.json"
    log = []
    float_table = profile([tiny], host, out, threads=1, rule=TINY_GRID, timing=FAST, calibration="off", progress=log.append)
    assert float_table.precisions() == {"fp32"}
    float_points = {k: dict(f.points) for k, f in float_table.families.items()}
    # The same table resumed with int8: the float points stay as they were, the int8 families are added.
    table = profile([tiny], host, out, threads=1, rule=TINY_GRID, timing=FAST, calibration="off", progress=log.append,
                    precisions=("fp32", "int8"))
    assert all(table.families[k].points == points for k, points in float_points.items())
    data = json.loads(out.read_text())
    assert data["format"] == "adans-lut/1" and data["header"]["precisions"] == ["fp32", "int8"]
    int8_patterns = {f["fields"]["pattern"] for f in data["families"] if f["fields"].get("precision") == "int8"}
    assert int8_patterns == {"Conv+Relu", "Gemm"}  # the weighted kernels only
    patterns = {f["fields"]["pattern"] for f in data["families"]}
    assert {QUANTIZE, DEQUANTIZE} <= patterns
    read_back = LookupTable.load(out)
    assert read_back.precisions() == {"fp32", "int8"}

    model = make_cost_model("latency", host, lut_path=out, threads=1)
    work = graph_workload(tiny.analysis.graph)
    convs = [op.name for op in work if op.op_type == "Conv"]
    base = model.predict(work)
    assert all(k.precision == "fp32" and k.how == "measured" for k in base.kernels)
    assert not any(d in (QUANTIZE, DEQUANTIZE) for _, d, _ in base.reorders)
    mixed = model.predict(with_weight_bits(work, convs[1:], 8))  # the second convolution in int8
    by_name = {k.name: k for k in mixed.kernels}
    assert by_name[convs[1]].precision == "int8" and by_name[convs[1]].how == "measured"
    assert by_name[convs[0]].precision == "fp32" and by_name[convs[0]].ms == next(k.ms for k in base.kernels if k.name == convs[0])
    int8_family = next(f for f in read_back.kernel_families("int8") if f.fields["pattern"] == "Conv+Relu")
    assert by_name[convs[1]].ms == pytest.approx(min(p.measurement.min_ms for c, p in int8_family.points.items() if c == (8, 8)))
    # Float meets int8 at its input and output: one quantize, one dequantize.
    assert sorted(d for _, d, _ in mixed.reorders if d in (QUANTIZE, DEQUANTIZE)) == [DEQUANTIZE, QUANTIZE]
    assert model.describe()["lut"]["precisions"] == ["fp32", "int8"]


def test_precisions_on_the_command_line(capsys):
    assert _precisions("float,int8") == ("fp32", "int8") and _precisions("int8") == ("fp32", "int8")
    assert _precisions("float") == ("fp32",)
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, as for any malformed option
        profile_main(["--builtin", "cifar_resnet20", "--precisions", "float,int4"])
    assert exit_.value.code == 2
    assert "unknown precision 'int4'" in capsys.readouterr().err
