"""`adans-compile --quantize int8` end to end on a tiny budget: model_int8.onnx beside model.onnx, validated,
scored, measured and reported; also for a model given as an ONNX file (added on --resume)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch

from adans_toolchain.cli.compile import main
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.runtime.sessions import run_onnx

TINY = ["--val-limit", "100", "--samples", "2", "--iterations", "1", "--boundary-rounds", "0", "--bn-recalibrate", "50",
        "--holdout", "0", "--max-accuracy-drop", "10", "--threads", "1"]


def _run(argv: list) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def _top1(model: onnx.ModelProto, path) -> float:
    data = load_image_set(path, Preprocessing())
    return 100.0 * float(np.mean(run_onnx(model, data.x.numpy()).argmax(1) == data.y.numpy()))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, example_paths):
    out = tmp_path_factory.mktemp("int8") / "out"
    stdout = _run([example_paths["model"], "--arch", "cifar_resnet20", "--data", example_paths["val"],
                   "--test-data", example_paths["test"], *TINY, "--measure-batches", "1", "--measure-budget", "0.2",
                   "--quantize", "int8", "-o", out])
    return out, stdout


def test_model_int8_is_written_validated_and_reported(compiled, example_paths):
    out, stdout = compiled
    int8 = onnx.load(str(out / "model_int8.onnx"))
    onnx.checker.check_model(int8, full_check=True)
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    r = json.loads((out / "report.json").read_text())
    q = r["int8"]
    # Every weighted layer of the emitted model (ResNet-20: 19 Conv + 1 Gemm) is int8.
    assert len(q["layers"]) == 20 and q["float_layers"] == []
    v = q["validation"]
    assert v["images"] == 100 and v["top1_agreement"] >= 0.99 and v["relative_diff"] <= v["tolerance"] == 0.05
    # The reported accuracies are the files' own.
    assert q["top1"]["test"]["int8"] == _top1(int8, example_paths["test"])
    assert q["top1"]["test"]["float"] == r["compressed"]["top1_test"]
    assert q["file_bytes"] == {"float": (out / "model.onnx").stat().st_size, "int8": (out / "model_int8.onnx").stat().st_size}
    assert q["file_ratio"] < 0.35
    assert q["costs"]["memory_bytes"]["int8"] < q["costs"]["memory_bytes"]["float"]
    m = q["measured"]["batch_1"]
    assert m["int8_speedup"] == pytest.approx(m["baseline_ms"] / m["int8_ms"]) and m["float_speedup"] > 0
    assert q["scheme"]["weights"].startswith("int8, symmetric, per output channel")
    assert "int8_s" in r["timings_s"]
    md = (out / "report.md").read_text()
    assert "## int8 (post-training quantization)" in md and "| top-1 TEST |" in md
    assert f"int8: {out / 'model_int8.onnx'}" in stdout


def test_an_onnx_model_is_quantized_too_even_when_added_on_resume(tmp_path, example_paths):
    module = load_model(example_paths["model"], "cifar_resnet20").module.eval()
    path = tmp_path / "resnet20.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["image"],
                      output_names=["scores"], opset_version=17, dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}})
    out = tmp_path / "out"
    common = [path, "--data", example_paths["val"], "--test-data", example_paths["test"], *TINY, "--no-measure"]
    _run([*common, "-o", out])
    assert not (out / "model_int8.onnx").exists() and "int8" not in json.loads((out / "report.json").read_text())
    _run([*common, "--quantize", "int8", "--resume", out])  # post-training: the finished search is reused
    r = json.loads((out / "report.json").read_text())
    assert r["model"]["description"].startswith("ONNX model resnet20.onnx")
    q = r["int8"]
    assert q["validation"]["top1_agreement"] >= 0.99 and q["measured"] is None
    assert q["top1"]["test"]["int8"] == _top1(onnx.load(str(out / "model_int8.onnx")), example_paths["test"])
    assert q["top1"]["test"]["int8"] >= q["top1"]["test"]["float"] - 3
