"""Compile a model through the real CLI with a tiny budget and check what it emitted.

Shared by the architecture coverage tests and tools/coverage_table.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch

from adans_toolchain.cli.compile import main
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.runtime.sessions import run_onnx

# Enough to exercise every step (priorities, boundary, search, lowering,
# BatchNorm re-estimation, validation, report) in seconds. One thread: on a
# busy 2-core machine two OpenMP threads make every PyTorch op ~10x slower.
TINY_BUDGET = ["--threads", "1", "--samples", "2", "--iterations", "1", "--boundary-rounds", "1", "--no-measure",
               "--bn-recalibrate", "4"]
TINY = [*TINY_BUDGET, "--max-accuracy-drop", "100"]
# The architecture coverage runs: a 10-point allowance, with labels no prediction matches
# (write_images_the_model_gets_wrong), so the baseline scores 0 % and the allowance admits any plan.
ARCHITECTURE_RUN = [*TINY_BUDGET, "--max-accuracy-drop", "10"]


def write_random_images(path: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """n random uint8 NHWC RGB images with labels in 0..classes-1, as an .npz the CLI reads."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=rng.integers(0, classes, n))
    return path


def write_images_the_model_gets_wrong(
    path: Path, module: torch.nn.Module, n: int, size: int, prep: Preprocessing = Preprocessing(), seed: int = 0
) -> Path:
    """n random uint8 NHWC RGB images, each labelled with a class the model does not predict for it.

    Random weights have no accuracy to keep: top-1 is exactly 0 % before any
    compression, so any accuracy allowance admits every plan, down to one
    unit per group (the extreme plans where lowering and validation are
    hardest), and what a coverage test checks is structure, lowering and
    validation. (Labels the model predicts give 100 %, but a random-weight
    network is chaotic: removing 1 of 32 channels anywhere, or re-estimating
    BatchNorm, changes most predictions, so no plan would be feasible.)
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.zeros(n, dtype=np.int64))
    images = load_image_set(path, prep)
    with torch.no_grad():
        logits = module.eval()(images.x)
    classes = logits.shape[1] - prep.label_offset
    predicted = logits.argmax(1).numpy()
    np.savez(path, x=x, y=(predicted + 1 - prep.label_offset) % classes)  # y + offset is never the argmax
    return path


def compile_and_check(argv: list, out: Path, *, tolerance: float = 1e-4) -> dict:
    """Run `adans-compile argv -o out`, then check the emitted model against the report; returns the report."""
    argv = [str(a) for a in argv]
    code = main([*argv, "-o", str(out)])
    assert code == 0, f"adans-compile exited {code}"
    report = json.loads((out / "report.json").read_text())
    # The pipeline's own validation ran (it raises on a mismatch); its numbers are in the report.
    v = report["validation"]
    assert v["relative_diff"] <= tolerance and v["top1_agreement"] == 1.0, v
    # Re-run the emitted model on the VAL images, preprocessed as the report says.
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    prep = report["data"]["preprocessing"]
    data = load_image_set(
        report["data"]["val"]["path"],
        Preprocessing(mean=tuple(prep["mean"]), std=tuple(prep["std"]), label_offset=prep["label_offset"]),
        limit=report["data"]["val"]["images"],
    )
    logits = run_onnx(model, data.x.numpy())
    top1 = 100.0 * float(np.mean(logits.argmax(1) == data.y.numpy()))
    assert top1 == report["compressed"]["top1_val"], (top1, report["compressed"]["top1_val"])
    # Every group is either searched or frozen with a reason naming the cause.
    for g in report["groups"]:
        assert g["prunable"] or g.get("reason"), g
    assert all(g["reason"] for g in report["frozen_groups"])
    return report


def frozen_summary(report: dict) -> list[str]:
    return [f"{g['id']}: {g['reason']}" for g in report["frozen_groups"]]
