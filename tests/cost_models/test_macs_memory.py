"""Exact MACs and memory bytes on hand-computed layers."""

from __future__ import annotations

import pytest

from cost_models import MemoryCostModel, UnsupportedOperatorError, executed_kernels, op_macs, workload_macs
from cost_models.memory import peak_activation_bytes, weight_storage_bytes, workload_memory_bytes
from tests.cost_models.fixtures import add, bn, conv, gemm, make_target, unary


@pytest.mark.parametrize(
    "op,expected",
    [
        # regular 3x3: every output element sums c_in * 9 products
        (conv("c", "x", "y", 3, 16, 32), 16 * 32 * 32 * 3 * 9),
        # depthwise 3x3: one input channel per output channel
        (conv("c", "x", "y", 32, 32, 16, groups=32), 32 * 16 * 16 * 1 * 9),
        # grouped (4 groups of 8 input channels), 3x3
        (conv("c", "x", "y", 32, 64, 8, groups=4), 64 * 8 * 8 * 8 * 9),
        # 1x1
        (conv("c", "x", "y", 64, 128, 8, k=1), 128 * 8 * 8 * 64),
        # strided 3x3: output 16x16
        (conv("c", "x", "y", 16, 32, 32, stride=2), 32 * 16 * 16 * 16 * 9),
        # fully connected, batch 2
        (gemm("fc", "x", "y", 64, 10, batch=2), 2 * 10 * 64),
    ],
    ids=["regular", "depthwise", "grouped", "1x1", "strided", "gemm"],
)
def test_exact_macs(op, expected):
    assert op_macs(op) == expected


def test_factorised_pair_macs():
    # Tucker-2 style: 1x1 (64->16), 3x3 core (16->16), 1x1 (16->64), 8x8 spatial.
    w = (
        conv("u", "x", "a", 64, 16, 8, k=1),
        conv("core", "a", "b", 16, 16, 8, k=3),
        conv("v", "b", "y", 16, 64, 8, k=1),
    )
    assert workload_macs(w) == 16 * 64 * 64 + 16 * 64 * 16 * 9 + 64 * 64 * 16


def test_zero_mac_ops_and_unknown_op():
    assert op_macs(unary("Relu", "r", "x", "y", (1, 4, 8, 8))) == 0
    with pytest.raises(UnsupportedOperatorError, match="FancyOp"):
        op_macs(unary("FancyOp", "f", "x", "y", (1, 4, 8, 8)))


def tiny_graph():
    # x(1,3,8,8) -Conv3x3(no bias)-> a -BN-> b -Relu-> c -Conv1x1(bias)-> d(1,2,8,8)
    return (
        conv("conv1", "x", "a", 3, 4, 8),
        bn("bn1", "a", "b", 4, 8),
        unary("Relu", "relu", "b", "c", (1, 4, 8, 8)),
        conv("conv2", "c", "d", 4, 2, 8, k=1, bias=True),
    )


def test_memory_bytes_hand_checked():
    w = tiny_graph()
    # Deployed weights: conv1 4*3*3*3 = 108 weights + 4 biases (BN folded), conv2 8 weights + 2 biases, fp32.
    weights = (108 + 4) * 4 + (8 + 2) * 4
    # Kernels: Conv+Relu (x -> c), Conv (c -> d). x = 3*64 floats, c = 4*64, d = 2*64.
    # Peak while the first kernel runs: x and c live = (192 + 256) * 4 = 1792 bytes.
    assert peak_activation_bytes(executed_kernels(w)) == 1792
    assert workload_memory_bytes(w) == weights + 1792
    model = MemoryCostModel(make_target())
    assert model.estimate([w, w]).tolist() == [weights + 1792] * 2
    assert model.unit == "bytes"


def test_memory_frees_tensors_after_last_consumer():
    # x -> a -> b -> c, and a also feeds an Add at the end: a stays live.
    shape = (1, 4, 4, 4)
    n = 4 * 64  # bytes of one tensor
    w = (
        unary("Relu", "r1", "x", "a", shape),
        unary("Sigmoid", "r2", "a", "b", shape),
        unary("Tanh", "r3", "b", "c", shape),
        add("add", "c", "a", "y", shape),
    )
    # While r3 runs: a, b, c live = 3n; while add runs: c, a, y = 3n (b freed).
    assert peak_activation_bytes(executed_kernels(w)) == 3 * n


def test_weight_storage_formats():
    assert weight_storage_bytes(1000, 32, 0.0) == 4000
    # 90 % zeros: bitmask (125 bytes) + 100 values (400 bytes) beats dense.
    assert weight_storage_bytes(1000, 32, 0.9) == 125 + 400
    # 10 % zeros: bitmask + 900 values (3725) still beats dense (4000).
    assert weight_storage_bytes(1000, 32, 0.1) == 125 + 3600
    # 8-bit weights, 5 % zeros: the bitmask costs more than it saves.
    assert weight_storage_bytes(1000, 8, 0.05) == 1000
    assert weight_storage_bytes(1000, 4, 0.0) == 500


def test_memory_prices_unknown_operators_by_shape():
    # Memory needs only shapes: an operator no model knows is priced exactly, no fallback.
    w = (unary("FancyOp", "f", "x", "y", (1, 4, 8, 8)),)
    assert workload_memory_bytes(w) == 2 * 4 * 64 * 4
