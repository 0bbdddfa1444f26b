"""The compile's settings: defined once, validated when built, and which of them a resume compares."""

from dataclasses import fields, replace

import pytest
import torch

from adans_toolchain.errors import ConfigError, SearchStateError
from adans_toolchain.pipeline.config import ARCH_BUILTINS, GROUPS, RESUMABLE_SETTINGS, CompileConfig, cli_settings
from adans_toolchain.pipeline.workspace import Workspace


def make(**settings) -> CompileConfig:
    return CompileConfig(model="m", data="d", out="o", **settings)


def test_a_latency_table_is_part_of_a_latency_search_only():
    macs = make(cost="macs", lut="table.json")
    latency = make(cost="latency", lut="table.json")
    # A MACs search is not changed by a table (it only feeds the report), so resuming it with one is allowed.
    assert "lut" not in macs.resume_key()
    assert latency.resume_key()["lut"] == "table.json"
    assert macs.resume_key()["methods"] == ["ps"]  # tuples become JSON lists


def test_the_record_keeps_every_setting_under_its_name():
    # OUT/config.json of earlier runs has these keys: a resume compares them by name. (--rounds and
    # --round-epochs are recorded only with more than one round: test_rounds.py.)
    record = make(cost="latency", rounds=2, train_data=("t.npz",), finetune_epochs=2).resume_key()
    assert set(record) == {f.name for f in fields(CompileConfig)}
    assert record["measure_budget_s"] == 8.0 and record["measure_batches"] == [1, 32]


def test_every_setting_but_the_command_line_is_a_cli_setting_with_a_help_section():
    names = {f.name for f in cli_settings()}
    assert names == {f.name for f in fields(CompileConfig)} - {"command"}
    for f in cli_settings():
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["group"] in GROUPS, f.name


def test_resumable_marks_drive_what_a_resume_compares():
    marked = {f.name for f in fields(CompileConfig) if f.metadata.get("resumable") is True}
    assert RESUMABLE_SETTINGS == marked
    # What the search computes depends on these: they must never be resumable.
    assert not {"model", "data", "methods", "cost", "samples", "seed", "sampler", "max_accuracy_drop"} & marked
    # Changing the search's length, where it runs, and what happens after it is allowed.
    assert {"iterations", "out", "threads", "executor", "workers", "finetune_epochs", "command"} <= marked


CHANGES = {
    "iterations": 40, "threads": 3, "executor": "ray", "workers": 2, "ray_address": "ray://x", "test_data": "t.npz",
    "train_data": "train.npz", "finetune_epochs": 3, "finetune_lr": 0.1, "finetune_batch_size": 64, "distill": True,
    "finetune_baseline": True, "measure_budget_s": 1.0, "no_measure": True, "resume": True, "overwrite": True,
    "debug": True, "out": "elsewhere", "command": "adans-compile ...", "rescore_top": 3,
    "max_evaluations": 100, "candidates": "zeroed",
    "quantize": "int8",  # post-training int8 comes after the search: a resume may add it
    "family_finetune": "separate",  # how a --budgets family is fine-tuned, after its search
}
# What a setting of CHANGES needs beside it to be valid at all.
NEEDS = {"family_finetune": {"budgets": (0.5,)}}


def test_the_changes_tested_below_cover_every_resumable_setting():
    assert set(CHANGES) == RESUMABLE_SETTINGS


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_resumable_setting_may_change_on_resume(tmp_path, name):
    first = make(**NEEDS.get(name, {}))
    Workspace.open(tmp_path, first.resume_key(), resume=False, overwrite=False)
    Workspace.open(tmp_path, replace(first, **{name: CHANGES[name]}).resume_key(), resume=True, overwrite=False)


@pytest.mark.parametrize("change", [{"seed": 1}, {"samples": 20}, {"methods": ("d", "ps")}, {"round_to": 8},
                                    {"cost": "memory"}, {"max_accuracy_drop": 1.0}, {"val_limit": 100},
                                    {"holdout": 0.0}, {"boundary_rounds": 3}, {"boundary_groups": 12}])
def test_any_other_change_stops_a_resume(tmp_path, change):
    assert not set(change) & RESUMABLE_SETTINGS
    first = make()
    Workspace.open(tmp_path, first.resume_key(), resume=False, overwrite=False)
    (name,) = change
    with pytest.raises(SearchStateError, match=f"cannot resume: '{name}' was"):
        Workspace.open(tmp_path, replace(first, **change).resume_key(), resume=True, overwrite=False)


def test_a_conditionally_resumable_setting_is_compared_when_the_condition_fails(tmp_path):
    first = make(cost="latency", lut="a.json")
    Workspace.open(tmp_path, first.resume_key(), resume=False, overwrite=False)
    with pytest.raises(SearchStateError, match="'lut' was"):
        Workspace.open(tmp_path, replace(first, lut="b.json").resume_key(), resume=True, overwrite=False)
    macs = tmp_path / "macs"
    Workspace.open(macs, make(lut="a.json").resume_key(), resume=False, overwrite=False)
    Workspace.open(macs, make(lut="b.json").resume_key(), resume=True, overwrite=False)


def test_methods_are_expanded_in_canonical_order():
    assert make(methods=("d", "ps")).canonical_methods == ("ps", "svd", "tucker")
    assert make().canonical_methods == ("ps",)


@pytest.mark.parametrize("settings, message", [
    ({"methods": ("ps", "quantum")}, "unknown method 'quantum'"),
    ({"methods": ()}, "no method given"),
    ({"methods": ("pn",)}, "unstructured pruning alone does not change MACs"),
    ({"methods": ("pn",), "cost": "latency"}, "unstructured pruning alone does not change latency"),
    ({"sampler": "annealing"}, "unknown sampler 'annealing'; choose one of gaussian"),
    ({"accuracy_threshold": 90.0, "max_accuracy_drop": 1.0},
     "give either --accuracy-threshold or --max-accuracy-drop, not both"),
    ({"max_accuracy_drop": -1.0}, "--max-accuracy-drop must be >= 0 points"),
    ({"accuracy_threshold": 0.0}, "--accuracy-threshold is a top-1 percentage in (0, 100]"),
    ({"accuracy_threshold": 101.0}, "--accuracy-threshold is a top-1 percentage in (0, 100]"),
    ({"round_to": 0}, "--round-to must be a positive channel count (e.g. 8)"),
    ({"bn_recalibrate": -1}, "--bn-recalibrate is a number of images (0 turns it off)"),
    ({"holdout": 1.0}, "--holdout is the fraction of VAL held back"),
    ({"holdout": -0.1}, "--holdout is the fraction of VAL held back"),
    ({"rescore_top": 0}, "--rescore-top is a number of plans (>= 1)"),
    ({"max_evaluations": 0}, "--max-evaluations is a number of candidate evaluations"),
    ({"samples": 1}, "--samples must be >= 2 and --iterations >= 1"),
    ({"iterations": 0}, "--samples must be >= 2 and --iterations >= 1"),
    ({"priority": "random"}, "--priority must be taylor or l1"),
    ({"mean": (0.5, 0.5, 0.5)}, "give --mean and --std together, with one value per image channel each"),
    ({"mean": (0.5,), "std": (0.2, 0.2, 0.2)}, "give --mean and --std together"),
])
def test_an_invalid_config_cannot_be_built(settings, message):
    with pytest.raises(ConfigError) as e:
        make(**settings)
    assert message in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_cuda_device_is_a_config_error():
    with pytest.raises(ConfigError, match="PyTorch sees no CUDA device"):
        make(device="cuda")


def test_pn_alone_is_fine_when_the_search_minimises_memory():
    assert make(methods=("pn",), cost="memory").canonical_methods == ("pn",)


def test_the_help_lists_every_built_in_architecture():
    from adans_toolchain.frontend.loading import builtin_arch_names

    assert ARCH_BUILTINS == tuple(builtin_arch_names())
