"""Float models and images for the int8 tests: the bundled ResNet-20 (real weights, CIFAR-10) and a random MobileNetV2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
import torchvision

from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.lowering.emit import simplify
from adans_toolchain.quantization import quantize_model, read_spec
from adans_toolchain.quantization.spec import QuantSpec
from tests.conftest import randomise_batchnorm


@dataclass
class Quantized:
    float_model: onnx.ModelProto  # as the compile emits it (onnxsim'd, BatchNorm folded)
    int8: onnx.ModelProto
    spec: QuantSpec
    calibration: np.ndarray
    check: np.ndarray  # images the int8 model is validated on, disjoint from `calibration`
    labels: np.ndarray | None = None


@pytest.fixture(scope="session")
def resnet20_images(example_paths) -> tuple[np.ndarray, np.ndarray]:
    val = load_image_set(example_paths["val"], Preprocessing(), limit=700)  # the CLI's default normalisation
    return val.x.numpy(), val.y.numpy()


@pytest.fixture(scope="session")
def resnet20_float(example_paths) -> onnx.ModelProto:
    torch.manual_seed(0)
    loaded = load_model(example_paths["model"], "cifar_resnet20")
    return simplify(export_onnx(loaded.module, (3, 32, 32)))


@pytest.fixture(scope="session")
def resnet20(resnet20_float, resnet20_images) -> Quantized:
    x, y = resnet20_images
    calibration, check = x[:200], x[200:]
    int8 = quantize_model(resnet20_float, calibration)
    return Quantized(resnet20_float, int8, read_spec(int8, resnet20_float), calibration, check, y[200:])


@pytest.fixture(scope="session")
def mobilenet_v2() -> Quantized:
    torch.manual_seed(0)
    module = randomise_batchnorm(torchvision.models.mobilenet_v2(weights=None, num_classes=10), seed=3)
    model = simplify(export_onnx(module, (3, 64, 64)))
    x = np.random.default_rng(0).standard_normal((300, 3, 64, 64)).astype(np.float32)
    calibration, check = x[:100], x[100:]
    int8 = quantize_model(model, calibration)
    return Quantized(model, int8, read_spec(int8, model), calibration, check)
