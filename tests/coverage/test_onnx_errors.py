"""Bad ONNX input: one clear line, a non-zero exit, no traceback, nothing in OUT touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.cli.compile import main
from tests.coverage.harness import write_random_images


def _conv_classifier(input_shape=("n", 3, 8, 8), outputs=1, out_rank=2) -> onnx.ModelProto:
    """Conv 3->4, GlobalAveragePool, Flatten, Gemm 4->5 (optionally a second output or a 4-D output)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc.weight"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["y"], name="fc", transB=1),
    ]
    n = input_shape[0]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 5])]
    if outputs > 1:
        outs.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, [n, 4]))
    if out_rank == 4:
        outs = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [n, 4, *input_shape[2:]])]
        nodes = nodes[:2]
        inits = inits[:1]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.fixture
def data(tmp_path):
    return write_random_images(tmp_path / "val.npz", 4, 8, classes=5)


@pytest.fixture
def out(tmp_path):
    """An OUT holding a previous run: no failed run may touch it, even with --overwrite."""
    import json

    from adans_toolchain.pipeline.config import CompileConfig

    out = tmp_path / "out"
    out.mkdir()
    # config.json, as adans-compile writes it, is what makes a directory a run that --overwrite may replace.
    (out / "config.json").write_text(json.dumps(CompileConfig(model="m.onnx", data="v.npz", out=str(out)).resume_key()))
    (out / "report.json").write_text("precious")
    return out


def expect_error(capsys, out: Path, argv, *fragments: str) -> str:
    code = main([str(a) for a in argv] + ["-o", str(out), "--overwrite", "--no-measure"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adans-compile: error:")]
    assert code != 0
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert (out / "report.json").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["config.json", "report.json"]
    return lines[0]


def test_the_valid_model_compiles(tmp_path, data):
    """The fixture model itself is fine; each test below breaks one thing."""
    path = _save(_conv_classifier(), tmp_path / "ok.onnx")
    argv = [path, "--data", data, "--samples", "2", "--iterations", "1", "--boundary-rounds", "1",
            "--no-measure", "--max-accuracy-drop", "100", "-o", tmp_path / "ok_out"]
    assert main([str(a) for a in argv]) == 0


def test_truncated_onnx_file(capsys, tmp_path, data, out):
    whole = _conv_classifier().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(whole[: len(whole) // 2])
    line = expect_error(capsys, out, [path, "--data", data], "cut.onnx")
    assert "is the file complete" in line or "not a valid ONNX model" in line


def test_not_an_onnx_file(capsys, tmp_path, data, out):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    expect_error(capsys, out, [path, "--data", data], "junk.onnx")


def test_onnx_that_fails_the_checker(capsys, tmp_path, data, out):
    model = _conv_classifier()
    model.graph.node[1].input[0] = "nowhere"  # reads a tensor nothing produces
    expect_error(capsys, out, [_save(model, tmp_path / "bad.onnx"), "--data", data], "not a valid ONNX model", "onnx.checker")


def test_onnx_input_is_not_an_image_batch(capsys, tmp_path, data, out):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(rng.standard_normal((5, 16)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expect_error(capsys, out, [_save(model, tmp_path / "mlp.onnx"), "--data", data], "not an image batch", "(batch, channels, height, width)")


def test_onnx_with_several_outputs(capsys, tmp_path, data, out):
    model = _conv_classifier(outputs=2)
    expect_error(capsys, out, [_save(model, tmp_path / "two.onnx"), "--data", data], "2 outputs", "'y'", "'f'", "logits")


def test_onnx_with_several_inputs(capsys, tmp_path, data, out):
    model = _conv_classifier()
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 1]))
    expect_error(capsys, out, [_save(model, tmp_path / "two_in.onnx"), "--data", data], "2 inputs", "'mask'")


def test_onnx_channels_last_input(capsys, tmp_path, data, out):
    model = _conv_classifier()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims[1:], (8, 8, 3)):
        d.dim_value = v
    expect_error(capsys, out, [_save(model, tmp_path / "nhwc.onnx"), "--data", data], "channels last")


def test_onnx_returning_feature_maps(capsys, tmp_path, data, out):
    model = _conv_classifier(out_rank=4)
    expect_error(capsys, out, [_save(model, tmp_path / "maps.onnx"), "--data", data], "(batch, classes)")


def test_onnx_fixed_input_size_does_not_fit_the_data(capsys, tmp_path, out):
    model = _conv_classifier(input_shape=("n", 3, 16, 16))
    data = write_random_images(tmp_path / "small.npz", 4, 8, classes=5)
    expect_error(capsys, out, [_save(model, tmp_path / "m16.onnx"), "--data", data], "expects images of shape [3, 16, 16]", "[3, 8, 8]", "--input-size")


def test_onnx_data_channels_do_not_fit(capsys, tmp_path, out):
    model = _conv_classifier()
    gray = tmp_path / "gray.npz"
    np.savez(gray, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    expect_error(capsys, out, [_save(model, tmp_path / "m.onnx"), "--data", gray], "expects images of shape [3, 8, 8]", "[1, 8, 8]", "channels")


def test_onnx_with_symbolic_channels_that_do_not_fit(capsys, tmp_path, out):
    model = _conv_classifier(input_shape=("n", "c", "h", "w"))
    gray = tmp_path / "gray.npz"
    np.savez(gray, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    expect_error(capsys, out, [_save(model, tmp_path / "m.onnx"), "--data", gray], "cannot run on the VAL images", "[1, 8, 8]")


def test_onnx_labels_outside_the_classes(capsys, tmp_path, out):
    data = write_random_images(tmp_path / "ten.npz", 4, 8, classes=10, seed=3)
    labels = np.load(data)["y"]
    np.savez(data, x=np.load(data)["x"], y=np.full_like(labels, 7))
    expect_error(capsys, out, [_save(_conv_classifier(), tmp_path / "m.onnx"), "--data", data], "labels range over 7..7", "5 outputs")


def test_onnx_with_a_fixed_batch_that_cannot_change(capsys, tmp_path, data, out):
    model = _conv_classifier(input_shape=(1, 3, 8, 8))
    # A Reshape to a hard-coded (1, 4) ties the graph to batch 1.
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 4], np.int64), "shape"))
    flatten = model.graph.node[3]
    model.graph.node.remove(flatten)
    model.graph.node.insert(3, helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape"))
    expect_error(capsys, out, [_save(model, tmp_path / "b1.onnx"), "--data", data], "fixed batch size of 1", "dynamic")


def test_arch_with_an_onnx_model(capsys, tmp_path, data, out):
    expect_error(capsys, out, [_save(_conv_classifier(), tmp_path / "m.onnx"), "--arch", "cifar_resnet20", "--data", data], "drop --arch")


def test_float16_onnx(capsys, tmp_path, data, out):
    model = _conv_classifier()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    path = tmp_path / "half.onnx"
    path.write_bytes(model.SerializeToString())  # not checker-valid either way; the error must say why
    line = expect_error(capsys, out, [path, "--data", data], "half.onnx")
    assert "FLOAT16" in line or "not a valid ONNX model" in line
