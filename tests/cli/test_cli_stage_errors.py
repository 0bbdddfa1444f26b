"""A failure while loading, exporting or analysing the model is one line that names the stage, the model and what to try.

Unexpected exceptions there become UnhandledModelError (exit 3) keeping the
original type and text; no traceback (and no exporter IR dump) without --debug.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from adans_toolchain.cli.compile import main
from adans_toolchain.errors import UnhandledModelError

ERROR_PREFIX = "adans-compile: error:"
REPOSITORY = Path(__file__).resolve().parents[2]  # where `tests` imports from, for --arch tests.cli...


class HistogramClassifier(nn.Module):
    """Runs in PyTorch, but `aten::histc` has no ONNX export: what an unsupported operator looks like to a user."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.stack([torch.histc(image, bins=10) for image in x]))


def failing_factory() -> nn.Module:
    raise ZeroDivisionError("the factory divided by zero")


@pytest.fixture
def histogram_model(tmp_path) -> list:
    """argv for a compile of HistogramClassifier on 16 tiny images."""
    torch.save(HistogramClassifier().state_dict(), tmp_path / "hist.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", x=rng.integers(0, 255, (16, 8, 8, 3), dtype=np.uint8), y=np.arange(16) % 10)
    return [tmp_path / "hist.pt", "--arch", f"{__name__}:HistogramClassifier", "--data", tmp_path / "val.npz",
            "-o", tmp_path / "out"]


@pytest.fixture
def example(example_paths, tmp_path) -> list:
    return [example_paths["model"], "--arch", "cifar_resnet20", "--data", example_paths["val"], "--val-limit", "20",
            "-o", tmp_path / "out"]


def one_error_line(capfd, argv: list, expected_code: int) -> str:
    """Run the CLI; its output must hold exactly one error line and no traceback. Returns that line."""
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert code == expected_code, err
    errors = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, err
    assert "Traceback" not in out + err and "IR graph" not in out + err
    return errors[0]


def test_unexportable_operator_is_one_line_naming_it(capfd, histogram_model):
    line = one_error_line(capfd, histogram_model, 2)
    assert "does not export to ONNX" in line and "aten::histc" in line and "UnsupportedOperatorError" in line
    assert ".onnx file" in line and "--debug" in line


def test_architecture_that_raises_is_one_line(capfd, histogram_model):
    argv = list(histogram_model)
    argv[argv.index("--arch") + 1] = f"{__name__}:failing_factory"
    line = one_error_line(capfd, argv, 2)
    assert "ZeroDivisionError" in line and "the factory divided by zero" in line and "failing_factory" in line


@pytest.mark.parametrize(
    ("stage", "raised", "expected"),
    [
        ("load_model", ValueError("version should be set to 1 or 2 instead of None\ndetail"),
         "loading the model {model} as --arch cifar_resnet20 failed (ValueError: version should be set to 1 or 2 instead of None); "
         "rerun with --debug"),
        ("export_onnx", RuntimeError("an exporter bug"),
         "exporting {model} to ONNX failed (RuntimeError: an exporter bug); export it to ONNX yourself"),
        ("Graph.from_model", KeyError("Shape"),
         "analysing the ONNX graph of {model} failed (KeyError: 'Shape'); adans does not handle something in this model"),
        ("analyse_channels", IndexError("list index out of range"),
         "analysing the channel groups of {model} failed (IndexError: list index out of range)"),
    ],
)
def test_unexpected_failure_names_stage_model_and_advice(capfd, monkeypatch, example, stage, raised, expected):
    import adans_toolchain.pipeline.compile as pipeline

    def fail(*args, **kwargs):
        raise raised

    if stage == "Graph.from_model":
        monkeypatch.setattr(pipeline.Graph, "from_model", fail)
    else:
        monkeypatch.setattr(pipeline, stage, fail)
    line = one_error_line(capfd, example, 3)
    assert expected.format(model=example[0]) in line, line


def test_debug_shows_the_original_exception(monkeypatch, example):
    import adans_toolchain.pipeline.compile as pipeline

    def fail(*args, **kwargs):
        raise ValueError("version should be set to 1 or 2 instead of None")

    monkeypatch.setattr(pipeline, "load_model", fail)
    with pytest.raises(UnhandledModelError) as raised:
        main([str(a) for a in [*example, "--debug"]])
    assert isinstance(raised.value.__cause__, ValueError)


def test_console_script_prints_no_traceback_for_an_unexportable_model(histogram_model):
    # A separate process: what a user sees on the terminal, the exporter's native output included.
    run = subprocess.run([sys.executable, "-m", "adans_toolchain.cli.compile", *map(str, histogram_model)],
                         capture_output=True, text=True, timeout=300, cwd=REPOSITORY)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and "aten::histc" in errors[0]
    assert "Traceback" not in run.stderr + run.stdout and "IR graph" not in run.stderr + run.stdout
