"""torchvision classifiers' state_dicts load as users save them: `torch.save(model.state_dict())` + `--arch torchvision:NAME`.

The state_dict's `_metadata` (each layer's format version) must survive
loading: torchvision's MNASNet refuses weights without it (issue 16).
Random weights; about 20-30 s in all on a 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from adans_toolchain.errors import ModelLoadError
from adans_toolchain.frontend.loading import load_model

CLASSIFIERS = [
    "mnasnet0_5", "mnasnet1_0", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf",
    "densenet121", "resnext50_32x4d", "convnext_tiny", "squeezenet1_1",
]


def assert_same_weights(expected: torch.nn.Module, loaded: torch.nn.Module) -> None:
    want, got = expected.state_dict(), loaded.state_dict()
    assert list(want) == list(got)
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_saved_state_dict_loads_with_torchvision_arch(name, tmp_path):
    model = torchvision.models.get_model(name, weights=None)
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, f"torchvision:{name}")
    assert loaded.source == "state_dict"
    assert_same_weights(model, loaded.module)


def test_data_parallel_checkpoint_keeps_the_inner_versions(tmp_path):
    # DataParallel's state_dict prefixes keys and metadata with "module."; stripped, MNASNet must still find its version.
    model = torchvision.models.mnasnet0_5(weights=None)
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": torch.nn.DataParallel(model).state_dict(), "epoch": 3}, path)
    assert_same_weights(model, load_model(path, "torchvision:mnasnet0_5").module)


def test_checkpoint_rebuilt_without_versions_says_how_to_save_it(tmp_path):
    model = torchvision.models.mnasnet0_5(weights=None)
    path = tmp_path / "plain.pt"
    torch.save(dict(model.state_dict()), path)  # a plain dict drops `_metadata`
    with pytest.raises(ModelLoadError, match=r"do not load into --arch torchvision:mnasnet0_5 \(ValueError: version .*model.state_dict\(\)"):
        load_model(path, "torchvision:mnasnet0_5")


def test_bare_torchvision_name_says_to_prefix_it(tmp_path):
    path = tmp_path / "squeeze.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    with pytest.raises(ModelLoadError, match="--arch torchvision:squeezenet1_1"):
        load_model(path, "squeezenet1_1")
