"""Compile a model through the real CLI with a tiny budget and check what it emitted.

Shared by the architecture coverage tests and tools/coverage_table.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from adans_toolchain.cli.compile import main
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.runtime.sessions import run_onnx

# Enough to exercise every step (priorities, boundary, search, lowering,
# BatchNorm re-estimation, validation, report) in seconds. One thread: on a
# busy 2-core machine two OpenMP threads make every PyTorch op ~10x slower.
TINY = ["--threads", "1", "--samples", "2", "--iterations", "1", "--boundary-rounds", "1", "--no-measure", "--bn-recalibrate", "4",
        "--max-accuracy-drop", "100"]


def write_random_images(path: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """n random uint8 NHWC RGB images with labels in 0..classes-1, as an .npz the CLI reads."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=rng.integers(0, classes, n))
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
