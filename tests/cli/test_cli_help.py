"""The command lines are built from the settings: every setting has its flag, and --help tells the truth."""

from __future__ import annotations

import argparse
import shlex

import pytest

from adans_toolchain import __version__
from adans_toolchain.cli import compile as compile_cli
from adans_toolchain.cli import profile as profile_cli
from adans_toolchain.errors import ConfigError
from adans_toolchain.pipeline.config import CompileConfig, cli_settings
from adans_toolchain.search import SAMPLER_NAMES

README_EXAMPLE = (
    "adans_toolchain/examples/resnet20.th --arch cifar_resnet20 --target host "
    "--data adans_toolchain/examples/cifar10_val_1000.npz --val-limit 500 "
    "--test-data adans_toolchain/examples/cifar10_test_500.npz "
    "--samples 20 --iterations 8 --max-accuracy-drop 5 --round-to 8 -o out/resnet20"
)
NOT_SETTINGS = {"help", "version", "list_targets"}


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in NOT_SETTINGS}


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return compile_cli.build_parser()


@pytest.fixture(scope="module")
def help_text(parser) -> str:
    return " ".join(parser.format_help().split())  # as one line: wrapping does not matter


def test_every_setting_has_a_flag_and_every_flag_a_setting(parser):
    assert set(setting_actions(parser)) == {f.name for f in cli_settings()}


def test_flags_are_the_documented_ones(parser):
    flags = {s for a in parser._actions for s in a.option_strings}
    # A sample of flags the README and the tests use: renaming one breaks them.
    assert {"--data", "--test-data", "--val-limit", "--arch", "--trust-pickle", "--input-size", "--label-offset",
            "--methods", "--sampler", "--cost", "--lut", "--accuracy-threshold", "--max-accuracy-drop",
            "--round-to", "--bn-recalibrate", "--finetune-epochs", "--samples", "--iterations", "--seed", "--device",
            "--executor", "--measure-batches", "--measure-budget", "--no-measure", "-o", "--out", "--resume",
            "--overwrite", "--debug", "--list-targets", "--version"} <= flags


def test_the_defaults_on_the_command_line_are_the_configs(parser):
    args = parser.parse_args(["m", "--data", "d", "-o", "o"])
    cfg = compile_cli._config_from_args(args, ["m", "--data", "d", "-o", "o"])
    assert cfg == CompileConfig(model="m", data="d", out="o")


def test_the_readme_example_parses_into_its_config(parser):
    argv = shlex.split(README_EXAMPLE) + ["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2",
                                          "--input-size", "32", "32", "--methods", "d, ps", "--measure-batches", "4"]
    cfg = compile_cli._config_from_args(parser.parse_args(argv), argv)
    assert (cfg.model, cfg.arch, cfg.out, cfg.val_limit) == ("adans_toolchain/examples/resnet20.th", "cifar_resnet20",
                                                             "out/resnet20", 500)
    assert (cfg.samples, cfg.iterations, cfg.max_accuracy_drop, cfg.round_to) == (20, 8, 5.0, 8)
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.2, 0.2, 0.2) and cfg.input_size == (32, 32)
    assert cfg.methods == ("d", "ps") and cfg.measure_batches == (4,)
    assert cfg.command == shlex.join(["adans-compile", *argv])
    assert not cfg.resume


def test_resume_names_the_run_directory(parser):
    argv = ["m", "--data", "d", "--resume", "runs/a"]
    cfg = compile_cli._config_from_args(parser.parse_args(argv), argv)
    assert cfg.resume is True and cfg.out == "runs/a"
    argv = ["m", "--data", "d", "-o", "runs/b", "--resume"]
    cfg = compile_cli._config_from_args(parser.parse_args(argv), argv)
    assert cfg.resume is True and cfg.out == "runs/b"


def test_missing_required_settings_are_named(parser):
    with pytest.raises(ConfigError, match="missing MODEL, --data VAL, -o OUT; see adans-compile --help"):
        compile_cli._config_from_args(parser.parse_args([]), [])


def test_the_two_constraints_exclude_each_other(parser, capsys):
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["m", "--accuracy-threshold", "90", "--max-accuracy-drop", "1"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("main", [compile_cli.main, profile_cli.main], ids=["adans-compile", "adans-profile"])
def test_version(main, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"adans {__version__}"


def test_help_explains_the_model_forms(help_text):
    for fragment in ("ONNX file", "TorchScript", "state_dict", "--trust-pickle", "torchvision:NAME",
                     "package.module:callable", "cifar_resnet20", "cifar_resnet110", "tf_mobilenet_v1_0.5_160"):
        assert fragment in help_text, fragment


def test_help_shows_the_sampler_with_its_choices_and_the_seed(parser, help_text):
    actions = setting_actions(parser)
    assert tuple(actions["sampler"].choices) == SAMPLER_NAMES
    assert "--sampler {" + ",".join(SAMPLER_NAMES) + "}" in help_text
    assert actions["sampler"].help and actions["seed"].help


def test_help_shows_every_default_and_what_is_required(parser):
    for dest, action in setting_actions(parser).items():
        assert action.help, dest
        if action.default is None or action.default is False:
            continue
        assert "(default: " in action.help, dest
    for dest in ("model", "data", "out"):
        assert "(required)" in setting_actions(parser)[dest].help, dest
    assert parser.format_usage().startswith("usage: adans-compile MODEL --data VAL -o OUT")


def test_help_warns_about_the_default_budget(parser):
    actions = setting_actions(parser)
    for dest in ("samples", "iterations"):
        assert "about an hour on a 2-core CPU" in " ".join(actions[dest].help.split()), dest


def test_help_ends_with_the_bundled_example(help_text):
    assert "example" in help_text
    assert " ".join(README_EXAMPLE.split()) in help_text.replace(" \\ ", " ")
