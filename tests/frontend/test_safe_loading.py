"""Safe loading: weights_only checkpoints, TorchScript, pickles only when trusted, checked ONNX, built-in names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from adans_toolchain.errors import ModelLoadError
from adans_toolchain.frontend.loading import build_architecture, builtin_arch_names, load_model
from adans_toolchain.frontend.architectures.cifar_resnet import cifar_resnet
from tests.conftest import randomise_batchnorm

SHARED_IMAGENET = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet"


class _Payload:
    """Unpickling this touches a file: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": cifar_resnet(20).state_dict(), "hook": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path, "cifar_resnet20")
    assert not marker.exists()
    # Trusted, it loads (and the payload ran, which is what trusting means).
    loaded = load_model(path, "cifar_resnet20", trust_pickle=True)
    assert loaded.source == "state_dict" and marker.exists()


def test_plain_checkpoint_loads_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in cifar_resnet(20).state_dict().items()}, "best_prec1": 91.7}, path)
    loaded = load_model(path, "cifar_resnet20")
    assert loaded.source == "state_dict" and calls == [True]


def test_whole_pickled_module_only_with_trust_pickle(tmp_path):
    path = tmp_path / "whole.pt"
    module = randomise_batchnorm(cifar_resnet(20))
    torch.save(module, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.source == "pickle"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), module(x))


def test_torchscript_archive_loads_and_compiles(tmp_path):
    from tests.coverage.harness import TINY, compile_and_check, write_random_images

    module = randomise_batchnorm(cifar_resnet(20), seed=3)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = load_model(path)
    assert loaded.source == "torchscript"
    data = write_random_images(tmp_path / "val.npz", 4, 32)
    report = compile_and_check([path, "--data", data, *TINY], tmp_path / "out")
    assert "TorchScript" in report["model"]["description"]
    assert any("L1 weight norm" in n for n in report["notes"])  # no module hooks in a ScriptModule


def test_onnx_files_go_through_the_checker(tmp_path, monkeypatch):
    from adans_toolchain.frontend import onnx_model
    from adans_toolchain.frontend.export import export_onnx

    path = tmp_path / "m.onnx"
    onnx.save(export_onnx(cifar_resnet(20), (3, 32, 32)), str(path))
    checked = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: (checked.append(m), real(m, *a, **k))[1])
    loaded = load_model(path)
    assert checked == [str(path)]
    assert loaded.source == "onnx" and loaded.onnx_model is loaded.module.model
    assert isinstance(loaded.module, onnx_model.OnnxModel)
    # state_dict() is the initializers, by name (what PlanTransform reads).
    state = loaded.module.state_dict()
    assert {i.name for i in loaded.onnx_model.graph.initializer} == set(state)
    from onnx import numpy_helper

    for init in loaded.onnx_model.graph.initializer:
        assert np.array_equal(state[init.name].numpy(), numpy_helper.to_array(init))


def test_googlenet_builds_without_aux_heads_and_drops_them_from_checkpoints(tmp_path):
    import torchvision

    with_aux = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pt"
    torch.save(with_aux.state_dict(), path)
    loaded = load_model(path, "torchvision:googlenet")
    assert loaded.module.aux1 is None and loaded.module.aux2 is None
    state = loaded.module.state_dict()
    assert not any(k.startswith(("aux1.", "aux2.")) for k in state)
    assert torch.equal(state["conv1.conv.weight"], with_aux.state_dict()["conv1.conv.weight"])


def test_tf_mobilenet_v1_builtin_names():
    names = builtin_arch_names()
    assert "tf_mobilenet_v1_0.5_160" in names and "tf_mobilenet_v1_0.75_192" in names
    for name, width in (("tf_mobilenet_v1_0.5_160", 16), ("tf_mobilenet_v1_0.75_192", 24)):
        model = build_architecture(name).eval()
        assert model.features[0].out_channels == width
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1001)
    with pytest.raises(ModelLoadError, match="unknown built-in architecture"):
        build_architecture("tf_mobilenet_v1_1.0_224")


@pytest.mark.skipif(not SHARED_IMAGENET.is_dir(), reason="the project's shared ImageNet weights are not on this machine")
@pytest.mark.parametrize("name", ["tf_mobilenet_v1_0.5_160", "tf_mobilenet_v1_0.75_192"])
def test_tf_mobilenet_v1_builtin_names_load_the_shared_weights(name):
    weights = SHARED_IMAGENET / f"mobilenet_v1_{name.removeprefix('tf_mobilenet_v1_')}.pth"
    loaded = load_model(weights, name)  # strict: every key and shape fits
    assert loaded.source == "state_dict" and name in loaded.description
