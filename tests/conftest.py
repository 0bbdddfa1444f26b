"""Shared fixtures: the bundled example and small exported models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "adans_toolchain" / "examples"


@pytest.fixture(scope="session")
def example_paths() -> dict[str, Path]:
    return {
        "model": EXAMPLES / "resnet20.th",
        "val": EXAMPLES / "cifar10_val_1000.npz",
        "test": EXAMPLES / "cifar10_test_500.npz",
    }


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Freshly built models have identity BatchNorms, which hide slicing bugs; make them non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return module.eval()


@pytest.fixture(autouse=True, scope="session")
def _no_user_latency_tables(tmp_path_factory):
    """Latency tables in the user's cache (~/.cache/adans/lut) must not change what tests see."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADANS_LUT_DIR", str(tmp_path_factory.mktemp("lut")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
