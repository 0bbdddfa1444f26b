"""A tiny search gives the identical history with the local executor and with Ray (two workers)."""

from __future__ import annotations

import json

import pytest

from adans_toolchain.cli.compile import main


def _evaluations(out):
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return [(e["x"], e["f"], e["info"]) for e in lines if e["type"] == "eval"]


def test_local_and_ray_histories_are_identical(example_paths, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
    common = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
              "--val-limit", "40", "--bn-recalibrate", "32", "--batch-size", "16", "--samples", "5", "--iterations", "2",
              "--boundary-rounds", "2", "--max-accuracy-drop", "20", "--no-measure", "--seed", "4"]
    assert main([*common, "-o", str(tmp_path / "local")]) == 0
    assert main([*common, "--executor", "ray", "--workers", "2", "-o", str(tmp_path / "ray")]) == 0
    local, ray = _evaluations(tmp_path / "local"), _evaluations(tmp_path / "ray")
    assert len(local) == 10 and local == ray
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["search"]["executor"]["executor"] == "ray" and report["search"]["executor"]["workers"] == 2
