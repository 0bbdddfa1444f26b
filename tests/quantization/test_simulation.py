"""The simulation (float model + fake quantization in PyTorch) computes what ONNX Runtime computes for the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from adans_toolchain.errors import ValidationError
from adans_toolchain.quantization import calibrated_spec, simulate_logits, validate_int8
from adans_toolchain.quantization.qdq import WEIGHT_RANGE
from adans_toolchain.quantization.spec import quantize_constant
from adans_toolchain.quantization.validate import MIN_AGREEMENT, TOLERANCE
from adans_toolchain.runtime.sessions import run_onnx
from tests.helpers import with_a_weight_scale_tripled


def _floats(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_simulation_agrees_with_onnx_runtime(name, request):
    q = request.getfixturevalue(name)
    v = validate_int8(q.int8, q.float_model, q.check)  # raises on a mismatch
    r = v.result
    assert r.images == len(q.check)
    # The stated tolerance: top-1 agreement >= 99 %, every logit within 5 % of the largest |logit|.
    assert MIN_AGREEMENT == 0.99 and TOLERANCE == 0.05
    assert r.top1_agreement >= MIN_AGREEMENT
    assert r.max_abs_diff <= TOLERANCE * r.output_scale
    # One-step rounding differences (the integer kernels), not a systematic error: tiny on average.
    assert v.mean_abs_diff <= 2e-3 * r.output_scale


def test_resnet20_int8_keeps_its_accuracy(resnet20):
    """Not a tolerance of the implementation but a sanity check of the scheme: int8 costs ResNet-20 little."""
    float_top1 = np.mean(run_onnx(resnet20.float_model, resnet20.check).argmax(1) == resnet20.labels)
    int8_top1 = np.mean(run_onnx(resnet20.int8, resnet20.check).argmax(1) == resnet20.labels)
    assert int8_top1 >= float_top1 - 0.02


def test_the_spec_is_what_onnx_runtime_stores(resnet20):
    spec, floats = resnet20.spec, _floats(resnet20.float_model)
    weighted = [n.name for n in resnet20.float_model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert spec.layers == frozenset(weighted)
    # Every ReLU follows a quantized tensor and is folded into its clamp.
    assert spec.removed == frozenset(n.name for n in resnet20.float_model.graph.node if n.op_type == "Relu")
    for (node, index), c in spec.constants.items():
        # The integers ONNX Runtime stored are ONNX Runtime's formula applied to the float weights: the simulation
        # quantizes the float model itself, bit for bit.
        assert np.array_equal(quantize_constant(floats[c.initializer], c.scale, c.zero_point, c.axis, c.dtype), c.stored)
        if index == 1:
            assert c.dtype == np.int8 and c.axis is not None and not c.zero_point.any()
            assert WEIGHT_RANGE[0] <= c.stored.min() and c.stored.max() <= WEIGHT_RANGE[1]
        else:
            assert index == 2 and c.dtype == np.int32
    for a in spec.activations.values():
        assert (a.qmin, a.qmax) == (0, 255) and 0 <= a.zero_point <= 255


def test_calibrated_parameters_equal_the_stored_ones(resnet20):
    """What a search would compute for a candidate (no QDQ model) is what quantize_static stores."""
    computed = calibrated_spec(resnet20.float_model, resnet20.spec, resnet20.calibration)
    stored = resnet20.spec
    assert set(computed.activations) == set(stored.activations) and set(computed.constants) == set(stored.constants)
    for key, a in stored.activations.items():
        b = computed.activations[key]
        assert b.zero_point == a.zero_point, key
        assert b.scale == pytest.approx(a.scale, rel=1e-5), key  # ranges: ORT's and PyTorch's float sums
    for key, c in stored.constants.items():
        np.testing.assert_allclose(computed.constants[key].scale, c.scale, rtol=1e-5, err_msg=str(key))
    # Scales a few ulps apart move a value on a rounding boundary by one step, as the integer kernels do.
    a, b = (simulate_logits(resnet20.float_model, spec, resnet20.check[:200]) for spec in (computed, stored))
    assert np.mean(a.argmax(1) == b.argmax(1)) >= MIN_AGREEMENT
    assert np.max(np.abs(a - b)) <= TOLERANCE * np.max(np.abs(b))


def test_a_runtime_that_computes_something_else_fails_validation(resnet20):
    """One weight scale changed in the int8 model (as a saturating kernel or a wrong scale would): an error."""
    tampered = with_a_weight_scale_tripled(resnet20.int8, resnet20.spec)
    with pytest.raises(ValidationError, match="differs from its simulation"):
        validate_int8(tampered, resnet20.float_model, resnet20.check[:200], spec=resnet20.spec)


def test_the_int8_model_is_valid_onnx_and_a_quarter_of_the_size(resnet20):
    onnx.checker.check_model(resnet20.int8, full_check=True)
    ratio = len(resnet20.int8.SerializeToString()) / len(resnet20.float_model.SerializeToString())
    assert 0.25 < ratio < 0.35  # one byte per weight, plus scales, int32 biases and the graph
