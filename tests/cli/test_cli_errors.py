"""Every bad input gets one clear line, a non-zero exit, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adans_toolchain.cli.compile import main


def run_cli(capsys, argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adans-compile: error:")]
    return code, lines[0] if lines else err


@pytest.fixture
def base(example_paths, tmp_path):
    return [example_paths["model"], "--arch", "cifar_resnet20", "--data", example_paths["val"], "--val-limit", "40",
            "-o", tmp_path / "out"]


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


def expect_error(capsys, argv, *fragments: str) -> str:
    code, line = run_cli(capsys, argv)
    assert code != 0
    assert line.startswith("adans-compile: error:"), line
    assert "Traceback" not in line
    for f in fragments:
        assert f in line, (f, line)
    return line


def test_missing_model_file(capsys, base, tmp_path):
    expect_error(capsys, [tmp_path / "nope.th", *base[1:]], "does not exist")


def test_truncated_model_file(capsys, base, tmp_path, example_paths):
    cut = tmp_path / "cut.th"
    cut.write_bytes(example_paths["model"].read_bytes()[:5000])
    expect_error(capsys, [cut, *base[1:]], "cut.th")


def test_state_dict_without_arch(capsys, base):
    expect_error(capsys, [base[0], *base[3:]], "--arch")


def test_weights_do_not_fit_arch(capsys, base):
    argv = list(base)
    argv[2] = "cifar_resnet32"
    expect_error(capsys, argv, "do not fit --arch cifar_resnet32", "missing")


def test_unknown_arch(capsys, base):
    argv = list(base)
    argv[2] = "resnet999"
    expect_error(capsys, argv, "unknown architecture")


def test_pickled_module_needs_trust_pickle(capsys, base, tmp_path):
    from adans_toolchain.frontend.architectures.cifar_resnet import cifar_resnet

    path = tmp_path / "whole.pt"
    torch.save(cifar_resnet(20), path)
    expect_error(capsys, [path, *base[3:]], "--trust-pickle")


def test_data_channels_do_not_fit_model(capsys, base, tmp_path):
    gray = write_npz(tmp_path / "gray.npz", np.zeros((8, 1, 32, 32), np.float32), np.zeros(8, np.int64))
    argv = list(base)
    argv[argv.index("--data") + 1] = gray
    expect_error(capsys, argv, "cannot run on the VAL images", "channels")


def test_input_size_does_not_fit_data(capsys, base):
    expect_error(capsys, [*base, "--input-size", "64", "64"], "--input-size")


def test_labels_out_of_range(capsys, base, tmp_path):
    bad = write_npz(tmp_path / "bad.npz", np.zeros((8, 32, 32, 3), np.uint8), np.full(8, 10, np.int64))
    argv = list(base)
    argv[argv.index("--data") + 1] = bad
    expect_error(capsys, argv, "labels range over 10..10", "10 outputs")


def test_empty_data(capsys, base, tmp_path):
    empty = write_npz(tmp_path / "empty.npz", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    argv = list(base)
    argv[argv.index("--data") + 1] = empty
    expect_error(capsys, argv, "no images")


def test_unreadable_data(capsys, base, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    argv = list(base)
    argv[argv.index("--data") + 1] = junk
    expect_error(capsys, argv, "junk.npz")


def test_empty_image_folder(capsys, base, tmp_path):
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    argv = list(base)
    argv[argv.index("--data") + 1] = tmp_path / "folder"
    expect_error(capsys, argv, "no images in ImageFolder layout")


def test_unknown_target_lists_known_ones(capsys, base):
    expect_error(capsys, [*base, "--target", "pdp11"], "unknown target 'pdp11'", "host")


def test_unknown_method(capsys, base):
    expect_error(capsys, [*base, "--methods", "ps,quantum"], "quantum")


def test_threshold_above_baseline(capsys, base):
    # 40 TEST images, all scored (no holdout): the baseline gets some wrong, so 100 % is above it.
    expect_error(capsys, [*base, "--accuracy-threshold", "100.0", "--val-limit", "40", "--holdout", "0",
                          "--data", "adans_toolchain/examples/cifar10_test_500.npz"], "above the baseline")


def _earlier_run(out: Path) -> None:
    """A directory holding a run: config.json as adans-compile writes it marks it (see tests/cli/test_cli_safety.py)."""
    import json

    from adans_toolchain.pipeline.config import CompileConfig

    out.mkdir()
    (out / "config.json").write_text(json.dumps(CompileConfig(model="m.th", data="v.npz", out=str(out)).resume_key()))
    (out / "report.json").write_text("precious")


def test_previous_run_is_not_overwritten(capsys, base, tmp_path):
    out = tmp_path / "out"
    _earlier_run(out)
    expect_error(capsys, base, "already holds a run", "--resume", "--overwrite")
    assert (out / "report.json").read_text() == "precious"


def test_failed_overwrite_keeps_the_previous_run(capsys, base, tmp_path):
    out = tmp_path / "out"
    _earlier_run(out)
    argv = [*base, "--overwrite", "--target", "pdp11"]
    expect_error(capsys, argv, "unknown target")
    assert (out / "report.json").read_text() == "precious"


def test_console_script_exit_code_and_debug_traceback(example_paths, tmp_path):
    argv = [sys.executable, "-m", "adans_toolchain.cli.compile", str(tmp_path / "missing.th"), "--data", str(example_paths["val"]), "-o", str(tmp_path / "o")]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    # Progress lines may precede it, but the error is one line, and the last.
    assert [line for line in lines if "error" in line] == [lines[-1]]
    assert lines[-1].startswith("adans-compile: error:") and "Traceback" not in plain.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_missing_latency_table(capsys, base, tmp_path):
    expect_error(capsys, [*base, "--cost", "latency", "--lut", str(tmp_path / "nope.json")], "--lut", "does not exist", "adans-profile")


@pytest.mark.parametrize("cost", ["macs", "latency"])
def test_unstructured_pruning_alone_needs_a_cost_it_changes(capsys, base, cost):
    line = expect_error(capsys, [*base, "--methods", "pn", "--cost", cost], "unstructured pruning alone", "--cost memory")
    assert ("MACs" if cost == "macs" else "latency") in line
