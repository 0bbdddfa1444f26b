"""Quantizing some layers: those get int8 weights, every other layer keeps its float weight and runs in float."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from adans_toolchain.errors import ConfigError
from adans_toolchain.quantization import quantize_model, quantized_nodes, read_spec, validate_int8, weighted_layers

CHOSEN = {"/layer3/layer3.2/conv1/Conv", "/layer3/layer3.2/conv2/Conv", "/linear/Gemm"}


@pytest.fixture(scope="module")
def partial(resnet20):
    layers = {n for n in weighted_layers(resnet20.float_model) if n in CHOSEN or n.endswith("Gemm")}
    assert len(layers) == 3, layers
    int8 = quantize_model(resnet20.float_model, resnet20.calibration, layers)
    return layers, int8


def test_only_the_named_layers_have_integer_weights(resnet20, partial):
    layers, int8 = partial
    spec = read_spec(int8, resnet20.float_model)
    assert spec.layers == frozenset(layers)
    producers = {o: n for n in int8.graph.node for o in n.output}
    inits = {i.name: i for i in int8.graph.initializer}
    floats = {i.name: numpy_helper.to_array(i) for i in resnet20.float_model.graph.initializer}
    for node in int8.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = node.input[1]
        if node.name in layers:
            assert producers[weight].op_type == "DequantizeLinear"
            assert inits[producers[weight].input[0]].data_type == TensorProto.INT8
        else:  # the float initializer itself, unchanged, read directly
            assert weight in inits and inits[weight].data_type == TensorProto.FLOAT
            assert np.array_equal(numpy_helper.to_array(inits[weight]), floats[weight])


def test_a_partly_int8_model_validates_against_its_simulation(resnet20, partial):
    _, int8 = partial
    v = validate_int8(int8, resnet20.float_model, resnet20.check)
    assert v.result.top1_agreement >= 0.99


def test_weight_free_nodes_are_quantized_only_between_int8_layers(resnet20):
    model = resnet20.float_model
    nodes = set(quantized_nodes(model, {"/layer1/layer1.0/conv1/Conv"}))
    # The ReLU after the int8 conv is int8 (folded into its output); the residual Add, which also reads the
    # float stem, and the ReLU after the float conv2 stay float.
    assert nodes == {"/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/Relu"}
    # All layers: every node that computes on activations (the shortcut's constant is none).
    assert set(quantized_nodes(model)) == {n.name for n in model.graph.node if n.op_type != "Constant"}


def test_an_unknown_layer_is_an_error(resnet20):
    with pytest.raises(ConfigError, match="no weighted layer"):
        quantize_model(resnet20.float_model, resnet20.calibration[:8], {"/nope/Conv"})
