"""Costs by precision: int8 weights take one byte plus a scale and zero point per output channel; MACs split."""

from __future__ import annotations

import pytest

from cost_models import MemoryCostModel, macs_by_precision, weight_bytes_by_precision, with_weight_bits, workload_memory_bytes
from cost_models.workload import OpWorkload
from targets import load_target

from adans_toolchain.quantization import weighted_layers
from adans_toolchain.quantization.cost import precision_costs


def _conv(name: str, c_in: int, c_out: int, x: str, y: str) -> OpWorkload:
    return OpWorkload("Conv", name, (1, c_in, 8, 8), (1, c_out, 8, 8), weight_shape=(c_out, c_in, 3, 3), kernel=(3, 3),
                      strides=(1, 1), dilations=(1, 1), has_bias=True, input_names=(x, "w_" + name, "b_" + name),
                      output_names=(y,), attributes=(("pads", (1, 1, 1, 1)),))


WORKLOAD = (_conv("a", 8, 16, "x", "y1"), _conv("b", 16, 16, "y1", "y2"))


def test_int8_weights_are_one_byte_plus_scales_and_int32_biases():
    int8 = with_weight_bits(WORKLOAD, {"a"})
    assert weight_bytes_by_precision(WORKLOAD) == {"fp32": 4 * (16 * 8 * 9 + 16) + 4 * (16 * 16 * 9 + 16)}
    assert weight_bytes_by_precision(int8) == {
        "int8": 16 * 8 * 9 + 4 * 16 + 16 * (4 + 1),  # weights, int32 bias, float32 scale + int8 zero point per channel
        "fp32": 4 * (16 * 16 * 9 + 16),
    }


def test_macs_are_split_by_the_precision_each_layer_runs_in():
    split = macs_by_precision(with_weight_bits(WORKLOAD, {"b"}))
    assert split == {"fp32": 64 * 16 * 8 * 9, "int8": 64 * 16 * 16 * 9}
    assert macs_by_precision(WORKLOAD) == {"fp32": sum(split.values())}


def test_int8_lowers_the_memory_cost_and_float_is_unchanged():
    model = MemoryCostModel(load_target("host"))
    before, after = model.estimate([WORKLOAD, with_weight_bits(WORKLOAD, {"a", "b"})])
    assert after < before
    assert before == workload_memory_bytes(WORKLOAD)  # a float workload is priced as before


def test_only_weighted_operators_can_change_precision():
    with pytest.raises(ValueError, match="no weighted operator"):
        with_weight_bits(WORKLOAD, {"relu"})


def test_resnet20_int8_costs(resnet20):
    layers = weighted_layers(resnet20.float_model)
    costs = precision_costs(resnet20.float_model, layers, (3, 32, 32))
    float_bytes, int8_bytes = costs["weight_bytes"]["float"]["fp32"], costs["weight_bytes"]["int8"]["int8"]
    assert set(costs["weight_bytes"]["int8"]) == {"int8"}
    assert 0.25 < int8_bytes / float_bytes < 0.28  # a quarter, plus scales and 32-bit biases
    assert costs["memory_bytes"]["int8"] < costs["memory_bytes"]["float"]
    assert set(costs["macs"]) == {"int8"} and costs["macs"]["int8"] > 40_000_000
