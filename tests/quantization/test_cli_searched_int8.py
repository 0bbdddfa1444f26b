"""`adans-compile --methods ps,int8` end to end on a tiny budget: the plan's int8 layers are searched, the emitted
model_int8.onnx quantizes exactly them, is validated against its simulation, and the report lists each layer's
precision."""

from __future__ import annotations

import contextlib
import io
import json

import onnx
import pytest

from adans_toolchain.cli.compile import main
from adans_toolchain.errors import ConfigError
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.plan import Plan
from adans_toolchain.quantization import read_spec
from tests.quantization.test_cli_int8 import TINY


def _run(argv: list) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, example_paths):
    out = tmp_path_factory.mktemp("searched_int8") / "out"
    stdout = _run([example_paths["model"], "--arch", "cifar_resnet20", "--data", example_paths["val"], *TINY,
                   "--methods", "ps,int8", "--cost", "memory", "--no-measure", "-o", out])
    return out, stdout


def test_the_plan_chooses_int8_layers_and_model_int8_quantizes_exactly_them(compiled):
    out, stdout = compiled
    plan = Plan.from_json((out / "plan.json").read_text())
    assert plan.int8_layers, "with a 10-point allowance the search keeps some layers int8"
    float_model, int8 = onnx.load(str(out / "model.onnx")), onnx.load(str(out / "model_int8.onnx"))
    assert not any(n.op_type == "QuantizeLinear" for n in float_model.graph.node)
    spec = read_spec(int8, float_model)
    r = json.loads((out / "report.json").read_text())
    # The layer table names each layer's node (the emitted model keeps it; its weight is renamed by BatchNorm folding).
    assert {row["node"] for row in r["layers"] if row["precision"] == "int8"} == set(spec.layers)
    q = r["int8"]
    assert q["searched"] is True and q["validation"]["top1_agreement"] >= 0.99
    assert q["validation"]["relative_diff"] <= q["validation"]["tolerance"]
    assert set(q["layers"]) == set(spec.layers)
    assert "int8" in r["search"]["methods"]
    # The layer table gives every layer's precision, as the plan says.
    precision = {row["layer"] + ".weight": row["precision"] for row in r["layers"]}
    assert {layer for layer, p in precision.items() if p == "int8"} == set(plan.int8_layers)
    md = (out / "report.md").read_text()
    assert "## int8 (precision searched per layer)" in md and "| precision |" in md
    assert f"int8: {out / 'model_int8.onnx'}" in stdout


@pytest.mark.parametrize("extra, message", [
    (["--cost", "macs"], "MACs cannot price it"),
    (["--cost", "memory", "--quantize", "int8"], "give one of them"),
    (["--cost", "memory", "--executor", "ray"], "--executor local"),
])
def test_what_searched_int8_cannot_be_combined_with_is_refused(extra, message):
    settings = {"cost": "macs", "quantize": None, "executor": "local"}
    for flag, value in zip(extra[::2], extra[1::2]):
        settings[flag.removeprefix("--")] = value
    with pytest.raises(ConfigError, match=message):
        CompileConfig(model="m", data="d", out="o", methods=("ps", "int8"), **settings)
