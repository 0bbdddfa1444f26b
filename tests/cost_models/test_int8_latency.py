"""The latency model at int8: int8 layers priced from the table's int8 entries, float ones from float entries."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from adans_toolchain.errors import ConfigError
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.costing import check_latency_precisions
from adans_toolchain.plan.workload import graph_workload
from adans_toolchain.profiling.grid import GridRule
from adans_toolchain.profiling.profiler import ModelToProfile, plan_families
from cost_models import LookupTable, LookupTablePrecisionError, executed_kernels, make_cost_model, with_weight_bits
from cost_models.kernels import Kernel
from cost_models.lut import DEQUANTIZE, QUANTIZE
from cost_models.roofline import kernel_bytes
from cost_models import structure_fingerprint
from tests.cost_models.fixtures import CONVERSION_MS_PER_ELEMENT, affine_ms, conv, make_target, synthetic_table


@pytest.fixture(scope="module")
def specs_with_int8(resnet20):
    model = ModelToProfile("cifar_resnet20", resnet20.onnx_model, resnet20.analysis, resnet20.image_shape)
    return plan_families([model], (1,), GridRule(align=8), ("fp32", "int8"))


def int8_faster_except_the_first_layer(kernel: Kernel) -> float:
    """int8 at 40 % of float, but 10x float for the 3-channel stem (as on a core where small int8 convolutions lose)."""
    if not kernel.quantized:
        return affine_ms(kernel)
    return affine_ms(kernel) * (10.0 if kernel.input_shape[1] == 3 else 0.4)


@pytest.fixture
def int8_lut(tmp_path, specs_with_int8):
    target = make_target()
    path = tmp_path / "int8.json"
    synthetic_table(specs_with_int8.values(), target, ms=int8_faster_except_the_first_layer).save(path)
    return target, path


def conv_names(work) -> list[str]:
    return [op.name for op in work if op.op_type == "Conv"]


def test_int8_layers_are_priced_from_int8_entries_and_the_others_from_float(int8_lut, resnet20):
    target, path = int8_lut
    model = make_cost_model("latency", target, lut_path=path)
    work = graph_workload(resnet20.analysis.graph)
    quantized = conv_names(work)[1:3]  # the first residual block
    mixed = with_weight_bits(work, quantized, 8)
    prediction = model.predict(mixed)
    for kernel, price in zip(executed_kernels(mixed), prediction.kernels):
        assert price.how == "measured" and price.precision == kernel.precision
        assert price.ms == pytest.approx(int8_faster_except_the_first_layer(kernel))
    assert {p.name for p in prediction.kernels if p.precision == "int8"} == set(quantized)
    # the block reads the stem's output (its first conv and its residual: one quantize) and its output is read
    # in float (by the next block's conv and residual: one dequantize)
    conversions = [(d, ms) for _, d, ms in prediction.reorders]
    assert sorted(d for d, _ in conversions) == [DEQUANTIZE, QUANTIZE]
    assert all(ms == pytest.approx(CONVERSION_MS_PER_ELEMENT * 16 * 32 * 32) for _, ms in conversions)
    assert prediction.total_ms == pytest.approx(prediction.kernel_ms + prediction.reorder_ms)


def test_a_latency_search_keeps_float_where_int8_is_slower_on_the_target(int8_lut, resnet20):
    target, path = int8_lut
    model = make_cost_model("latency", target, lut_path=path)
    work = graph_workload(resnet20.analysis.graph)
    convs = conv_names(work)
    all_float, all_int8 = work, with_weight_bits(work, convs, 8)
    int8_but_the_stem = with_weight_bits(work, convs[1:], 8)
    costs = model.estimate([all_float, all_int8, int8_but_the_stem])
    # The table says the stem is slower in int8: the cheapest plan keeps it float, although that moves the
    # quantize from the 3-channel image to the stem's 16-channel output.
    assert costs[2] < costs[1] < costs[0]
    def quantized_elements(work) -> set[int]:
        return {round(ms / CONVERSION_MS_PER_ELEMENT) for _, d, ms in model.predict(work).reorders if d == QUANTIZE}

    image, stem_output = 3 * 32 * 32, 16 * 32 * 32
    assert image in quantized_elements(all_int8) and stem_output not in quantized_elements(all_int8)
    assert stem_output in quantized_elements(int8_but_the_stem) and image not in quantized_elements(int8_but_the_stem)


def test_int8_families_missing_from_an_int8_table_are_estimated_from_int8_points(tmp_path, specs_with_int8, resnet20):
    target = make_target()
    path = tmp_path / "no-int8-gemm.json"
    keep = [s for s in specs_with_int8.values() if not (s.kernel.quantized and s.kernel.pattern == "Gemm")]
    synthetic_table(keep, target, ms=int8_faster_except_the_first_layer).save(path)
    model = make_cost_model("latency", target, lut_path=path)
    work = graph_workload(resnet20.analysis.graph)
    gemm = next(op.name for op in work if op.op_type == "Gemm")
    price = next(p for p in model.predict(with_weight_bits(work, [gemm], 8)).kernels if p.name == gemm)
    assert price.how == "estimated" and price.precision == "int8"
    assert any("not in the table" in n and "Gemm" in n for n in model.notes)


def test_a_table_without_int8_entries_is_refused_for_int8(synthetic_lut, resnet20, tmp_path):
    target, path = synthetic_lut  # float only, as every table profiled before int8
    model = make_cost_model("latency", target, lut_path=path)
    work = graph_workload(resnet20.analysis.graph)
    model.estimate([work])  # float layers: priced as always
    with pytest.raises(LookupTablePrecisionError, match=r"no int8 kernels.*--precisions float,int8"):
        model.estimate([with_weight_bits(work, conv_names(work)[:1], 8)])
    with pytest.raises(ConfigError) as refused:
        check_latency_precisions("latency", ("ps", "int8"), "host", str(path))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--cost latency --methods ps,int8: the latency table")
    assert f"re-profile it with adans-profile --target host --precisions float,int8 ... -o {path}" in message
    check_latency_precisions("latency", ("ps",), "host", str(path))  # no int8: nothing to check
    check_latency_precisions("memory", ("ps", "int8"), "host", str(path))  # memory prices int8 without a table


def test_the_compile_configuration_refuses_an_int8_latency_search_on_a_float_table(synthetic_lut, int8_lut):
    _, float_path = synthetic_lut
    _, int8_path = int8_lut

    def config(lut):
        return CompileConfig(model="m", data="d", out="o", cost="latency", methods=("ps", "int8"), lut=str(lut))

    with pytest.raises(ConfigError, match="has no int8 kernels"):
        config(float_path)
    assert config(int8_path).cost == "latency"


def test_old_tables_load_and_price_float_as_before(synthetic_lut, resnet20, int8_lut):
    target, path = synthetic_lut
    data = json.loads(path.read_text())
    assert data["format"] == "adans-lut/1" and "precisions" not in data["header"]
    assert not any("precision" in f["fields"] for f in data["families"])
    table = LookupTable.load(path)
    assert table.precisions() == {"fp32"}
    work = graph_workload(resnet20.analysis.graph)
    kernels = executed_kernels(work)
    assert all("precision" not in k.family_fields and k.family_key in table.families for k in kernels)
    old = make_cost_model("latency", target, lut_path=path).estimate([work])[0]
    assert old == pytest.approx(sum(affine_ms(k) for k in kernels))
    # The same float kernels cost the same from a table that also holds int8 entries.
    int8_target, int8_path = int8_lut
    assert make_cost_model("latency", int8_target, lut_path=int8_path).estimate([work])[0] == pytest.approx(old)
    # Calibration is keyed by structure, not precision: it scales float and int8 plans of one model alike.
    int8_work = with_weight_bits(work, conv_names(work), 8)
    assert structure_fingerprint(executed_kernels(int8_work)) == structure_fingerprint(kernels)


def test_the_roofline_prices_int8_at_one_byte_and_states_its_compute_assumption(tmp_path, monkeypatch):
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path))  # no table: roofline
    work = (conv("c1", "x", "y", 64, 64, 16),)
    int8 = with_weight_bits(work, ["c1"], 8)
    kernel = executed_kernels(int8)[0]
    assert kernel_bytes(kernel) == 64 * 256 * 2 + 64 * 64 * 9  # uint8 activations, int8 weights (no bias)
    memory_bound = make_cost_model("latency", make_target(peak_gflops=1e6))  # 20 GB/s, 5 us per kernel
    assert memory_bound.estimate([int8])[0] == pytest.approx(kernel_bytes(kernel) / 20e6 + 0.005)
    assert memory_bound.estimate([work])[0] == pytest.approx(4 * kernel_bytes(kernel) / 20e6 + 0.005)
    assert any("int8 assumed at the fp32 peak" in n for n in memory_bound.notes)
    compute_bound = make_cost_model("latency", make_target(memory_bandwidth_gbs=None))
    assert compute_bound.estimate([int8])[0] == pytest.approx(compute_bound.estimate([work])[0])
    faster = make_cost_model("latency", replace(make_target(memory_bandwidth_gbs=None), peak_int8_gops=256.0))
    flops = 2 * 64 * 64 * 9 * 256
    assert faster.estimate([int8])[0] == pytest.approx(flops / 256e6 + 0.005)
    assert any("int8 peak 256 GOP/s" in n for n in faster.notes)
