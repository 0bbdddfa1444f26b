"""Models given as .onnx files are first class: `adans-compile model.onnx --data ...`, no --arch.

Covered: an export that keeps BatchNormalization (re-estimated in ONNX
Runtime), one where BatchNorm was folded into the convolutions at export
(nothing to re-estimate), the dynamo exporter's output (external data
file), and a file exported with a fixed batch size.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from tests.conftest import randomise_batchnorm
from tests.coverage.harness import TINY, compile_and_check, write_random_images
from tests.helpers import build


def _export(module: torch.nn.Module, path, size: int, *, keep_batchnorm: bool, dynamic: bool = True, dynamo: bool = False):
    module = module.eval()
    x = torch.zeros(1, 3, size, size)
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(module, (x,), str(path), dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False)
        return path
    kwargs = {"dynamic_axes": {"image": {0: "n"}, "scores": {0: "n"}}} if dynamic else {}
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(module, (x,), str(path), dynamo=False, training=training, input_names=["image"],
                      output_names=["scores"], opset_version=17, **kwargs)
    return path


def test_onnx_with_batchnorm_squeeze_excitation_and_hardswish(tmp_path):
    path = _export(randomise_batchnorm(build("mobilenet_v3_small"), seed=1), tmp_path / "m.onnx", 64, keep_batchnorm=True)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    data = write_random_images(tmp_path / "val.npz", 4, 64)
    report = compile_and_check([path, "--data", data, *TINY], tmp_path / "out")
    assert report["model"]["description"].startswith("ONNX model m.onnx")
    # BatchNorm statistics were re-estimated (in ONNX Runtime) for the emitted model.
    assert "top1_val_without_bn_recalibration" in report["compressed"]
    assert any("L1 weight norm" in n for n in report["notes"])
    assert report["compressed"]["macs"] < report["baseline"]["macs"]


def test_onnx_with_batchnorm_folded_at_export(tmp_path):
    path = _export(randomise_batchnorm(build("resnet18"), seed=1), tmp_path / "r.onnx", 32, keep_batchnorm=False)
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    data = write_random_images(tmp_path / "val.npz", 4, 32)
    report = compile_and_check([path, "--data", data, *TINY], tmp_path / "out")
    assert any("nothing to re-estimate" in n for n in report["notes"])
    assert "top1_val_without_bn_recalibration" not in report["compressed"]
    assert report["compressed"]["macs"] < report["baseline"]["macs"]


def test_dynamo_export_with_external_data(tmp_path):
    path = _export(randomise_batchnorm(build("cifar_resnet20"), seed=1), tmp_path / "c.onnx", 32, keep_batchnorm=False, dynamo=True)
    assert (tmp_path / "c.onnx.data").is_file()
    data = write_random_images(tmp_path / "val.npz", 4, 32)
    report = compile_and_check([path, "--data", data, "--methods", "d,ps", *TINY], tmp_path / "out")
    assert {"svd", "tucker"} & set(report["search"]["methods"])
    reasons = [g["reason"] for g in report["frozen_groups"]]
    assert len(reasons) == 2, reasons  # input and logits only


def test_fixed_batch_size_is_made_dynamic(tmp_path):
    path = _export(randomise_batchnorm(build("cifar_resnet20"), seed=2), tmp_path / "f.onnx", 32, keep_batchnorm=True, dynamic=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    data = write_random_images(tmp_path / "val.npz", 4, 32)
    report = compile_and_check([path, "--data", data, *TINY], tmp_path / "out")
    assert "fixed batch size 1 was made dynamic" in report["model"]["description"]
    emitted = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert emitted.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_shared_initializers_are_untied(tmp_path):
    """Exporters merge equal initializers; two BatchNorms sharing statistics must still be re-estimated apart."""
    from adans_toolchain.frontend.onnx_model import load_onnx_model

    module = build("cifar_resnet20").eval()  # fresh BatchNorms: all ones and zeros
    path = tmp_path / "shared.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    raw = onnx.load(str(path))
    readers: dict[str, int] = {}
    for node in raw.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    assert any(readers.get(i.name, 0) > 1 for i in raw.graph.initializer)  # the exporter did merge them
    loaded = load_onnx_model(path)
    readers = {}
    for node in loaded.onnx_model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    floats = {i.name for i in loaded.onnx_model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(readers.get(name, 0) <= 1 for name in floats)
    # Same function as before.
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    before = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = loaded.module(torch.from_numpy(x)).numpy()
    assert np.array_equal(before, after)
