"""The CLI the way the README runs it, on the bundled example with a tiny budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from adans_toolchain.cli import main
from adans_toolchain.plan import Plan
from adans_toolchain.validate import run_onnx

TINY = ["--val-limit", "120", "--samples", "6", "--iterations", "3", "--boundary-rounds", "2",
        "--measure-batches", "1", "4", "--measure-budget", "0.3", "--max-accuracy-drop", "10"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, example_paths):
    out = tmp_path_factory.mktemp("compile") / "out"
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--target", "host",
            "--data", str(example_paths["val"]), "--test-data", str(example_paths["test"]), *TINY, "-o", str(out)]
    assert main(argv) == 0
    return out


def test_outputs_are_written(compiled):
    for name in ("model.onnx", "baseline.onnx", "plan.json", "history.jsonl", "report.json", "report.md", "config.json"):
        assert (compiled / name).is_file(), name
    onnx.checker.check_model(onnx.load(str(compiled / "model.onnx")), full_check=True)
    Plan.from_json((compiled / "plan.json").read_text())


def test_report_has_the_promised_fields(compiled):
    r = json.loads((compiled / "report.json").read_text())
    for side in ("baseline", "compressed"):
        for key in ("top1_val", "top1_test", "macs", "params"):
            assert key in r[side], (side, key)
    assert r["speedup"]["theoretical"] == pytest.approx(r["baseline"]["macs"] / r["compressed"]["macs"])
    measured = r["speedup"]["measured_host"]
    assert set(k for k in measured if k.startswith("batch_")) == {"batch_1", "batch_4"}
    assert measured["batch_1"]["speedup"] > 0
    assert r["validation"]["max_abs_diff"] <= 1e-4 * r["validation"]["output_scale"]
    assert {g["id"] for g in r["frozen_groups"]} == {"input", "linear"}
    assert all(g["reason"] for g in r["frozen_groups"])
    assert r["seed"] == 0 and r["command"].startswith("adans-compile")
    assert "torch" in r["versions"] and "onnxruntime" in r["versions"]
    # The per-layer table and the search log are there for people.
    md = (compiled / "report.md").read_text()
    assert "| layer | op |" in md and "layer3.2.conv1" in md


def test_reported_accuracy_is_the_emitted_models(compiled, example_paths):
    r = json.loads((compiled / "report.json").read_text())
    data = np.load(example_paths["test"])
    x = (data["x"].astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], dtype=np.float32
    )
    logits = run_onnx(onnx.load(str(compiled / "model.onnx")), x.transpose(0, 3, 1, 2).astype(np.float32))
    assert 100.0 * np.mean(logits.argmax(1) == data["y"]) == pytest.approx(r["compressed"]["top1_test"])


def test_history_is_written_per_sample(compiled):
    lines = [json.loads(line) for line in (compiled / "history.jsonl").read_text().splitlines()]
    evals = [line for line in lines if line["type"] == "eval"]
    assert len(evals) == 6 * 3
    assert all({"accuracy", "cost", "feasible"} <= set(e["info"]) for e in evals)


def test_resume_of_a_finished_run_evaluates_nothing_new(compiled, example_paths, capsys):
    before = (compiled / "state" / "evaluations.jsonl").read_text()
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
            "--test-data", str(example_paths["test"]), *TINY, "--no-measure", "--resume", str(compiled)]
    assert main(argv) == 0
    assert (compiled / "state" / "evaluations.jsonl").read_text() == before
    r = json.loads((compiled / "report.json").read_text())
    assert r["search"]["evaluations"] == 0 and r["search"]["resumed_from_iteration"] == 3
