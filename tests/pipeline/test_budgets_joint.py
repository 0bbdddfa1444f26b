"""--budgets with joint fine-tuning (issue 17): the family trained as one set of weights by the sandwich rule."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from adans_toolchain.cli.compile import main
from adans_toolchain.errors import ConfigError
from adans_toolchain.pipeline import family
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.reporting.family import render_family_markdown
from tests.pipeline.test_budgets import BUDGETS, TINY

FINETUNE = ["--finetune-epochs", "2", "--finetune-batch-size", "32", "--finetune-lr", "0.02"]


def make(**settings) -> CompileConfig:
    return CompileConfig(model="m", data="d", out="o", **settings)


@pytest.mark.parametrize("settings, message", [
    ({"family_finetune": "joint"}, "--family-finetune says how a --budgets family is fine-tuned; it needs --budgets"),
    ({"budgets": (0.5,), "methods": ("d", "ps"), "train_data": ("t.npz",), "finetune_epochs": 1},
     "--family-finetune joint trains one set of weights .* give --methods ps, or --family-finetune separate"),
    ({"budgets": (0.5,), "train_data": ("t.npz",), "finetune_epochs": 1, "finetune_baseline": True},
     "--finetune-baseline is not built for --family-finetune joint"),
])
def test_family_finetune_settings_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as e:
        make(**settings)
    assert "\n" not in str(e.value)


def test_a_family_is_fine_tuned_jointly_unless_told_otherwise():
    assert make(budgets=(0.5,)).family_finetune == "joint" and make().family_finetune is None
    separate = make(budgets=(0.5,), methods=("d", "ps"), train_data=("t.npz",), finetune_epochs=1,
                    family_finetune="separate", finetune_baseline=True)
    assert separate.family_finetune == "separate"


def _compile(argv: list[str]) -> tuple[int, str]:
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, log.getvalue()


def _argv(work, example_paths, out) -> list[str]:
    return [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
            "--test-data", str(work / "test.npz"), "--train-data", str(work / "train.npz"), *TINY, *FINETUNE,
            "--budgets", *map(str, BUDGETS), "-o", str(out)]


@pytest.fixture(scope="module")
def joint(tmp_path_factory, example_paths):
    """ResNet-20, three budgets on the tiny search of test_budgets, then two epochs of joint fine-tuning on 64
    images (a test of the mechanics, not of what fine-tuning generalises to)."""
    work = tmp_path_factory.mktemp("joint")
    val, test = np.load(example_paths["val"]), np.load(example_paths["test"])
    np.savez(work / "train.npz", x=val["x"][:64], y=val["y"][:64])
    np.savez(work / "test.npz", x=test["x"][:50], y=test["y"][:50])
    code, log = _compile(_argv(work, example_paths, work / "out"))
    assert code == 0, log
    return work, work / "out"


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_every_member_is_a_slice_of_the_one_set_of_shared_weights(joint):
    _, out = joint
    fam = json.loads((out / "budgets" / "family.json").read_text())
    assert fam["finetune"]["mode"] == "joint" and fam["finetune"]["epochs"] == 2
    assert "shared_weights.onnx" in fam["weights"] and "own" in fam["weights"]
    shared = _initializers(out / "budgets" / "shared_weights.onnx")
    statistics = {}
    for row in fam["members"]:
        own = _initializers(out / "budgets" / row["shared_weights"]["unfolded"])
        slices, own_names = row["shared_weights"]["slices"], set(row["shared_weights"]["own"])
        assert own_names and all(n.endswith(("running_mean", "running_var")) for n in own_names)
        floats = [n for n, v in own.items() if np.issubdtype(v.dtype, np.floating) and n not in own_names]
        assert len(floats) > 50
        for name in floats:  # every weight, BatchNorm scale and bias: exactly the slice the manifest names
            expected = shared[name]
            for axis, index in sorted(slices.get(name, {}).items()):
                expected = np.take(expected, index, axis=int(axis))
            assert np.array_equal(own[name], expected), (row["budget"], name)
        statistics[row["budget"]] = {n: own[n] for n in own_names}
        assert (row["top1"]["val"] is not None and row["top1"]["val_before_finetune"] is not None
                and row["top1"]["test"] is not None and row["top1"]["test_before_finetune"] is not None)
    # The shared numbering is the largest member's: its kept original channels, indexed by the slices, are the
    # original channels the smaller member keeps (family.json's `parameters`).
    largest_kept, smallest = fam["members"][0]["parameters"], fam["members"][-1]
    assert len(smallest["shared_weights"]["slices"]) > 50
    for name, axes in smallest["shared_weights"]["slices"].items():
        for axis, index in axes.items():
            outer = largest_kept.get(name, {}).get(axis, range(shared[name].shape[int(axis)]))
            assert [outer[i] for i in index] == smallest["parameters"][name][axis], (name, axis)
    # The largest member slices nothing; its statistics are shared_weights.onnx's, the others' their own.
    largest = fam["members"][0]
    assert largest["shared_weights"]["slices"] == {}
    assert all(np.array_equal(v, shared[n]) for n, v in statistics[largest["budget"]].items())
    small = statistics[BUDGETS[-1]]
    assert any(v.shape != shared[n].shape or not np.array_equal(v, shared[n]) for n, v in small.items())


def test_each_member_is_validated_and_reports_its_share_of_the_joint_finetune(joint):
    _, out = joint
    for b in BUDGETS:
        folder = out / "budgets" / f"{b:.2f}"
        report = json.loads((folder / "report.json").read_text())
        assert report["validation"]["relative_diff"] <= report["validation"]["tolerance"]
        tune = report["finetuning"]
        assert tune["config"]["mode"] == "joint" and tune["config"]["random_members"] == family.RANDOM_MEMBERS
        assert len(tune["compressed"]["train_loss"]) == 2 and tune["config"]["steps_trained"] == [2, 2]
        assert tune["compressed"]["interpreter_check_relative_diff"] < 1e-4
        assert "top1_test_before_finetune" in report["compressed"]
        onnx.checker.check_model(onnx.load(str(folder / "model.onnx")), full_check=True)
        assert (folder / "model_before_finetune.onnx").is_file()
    md = (out / "budgets" / "family.md").read_text()
    assert "## Fine-tuning" in md and "Jointly, as one set of weights" in md
    section = md.split("## Fine-tuning")[1].split("\n## ")[0]
    assert all(f"| {b:.2f} |" in section for b in BUDGETS)


def test_family_md_says_how_the_family_was_fine_tuned(joint):
    _, out = joint
    fam = json.loads((out / "budgets" / "family.json").read_text())
    joint_md = render_family_markdown(fam, [])
    separate_md = render_family_markdown({**fam, "finetune": {"mode": "separate", "epochs": 2}}, [])
    assert "Jointly, as one set of weights (`shared_weights.onnx`" in joint_md
    assert "Each member on its own (2 epochs)" in separate_md and "Jointly" not in separate_md
    assert "## Fine-tuning" not in render_family_markdown({**fam, "finetune": None}, [])


def test_a_killed_joint_finetune_resumes_to_the_weights_of_an_uninterrupted_one(joint, example_paths, monkeypatch):
    work, uninterrupted = joint
    # The finished run without its fine-tune: a resume finds every evaluation in its cache and fine-tunes afresh.
    out = work / "killed"
    shutil.copytree(uninterrupted, out)
    for name in (f"state/{family.JOINT_CHECKPOINT}", "budgets/shared_weights.onnx", "budgets/family.json"):
        (out / name).unlink()
    train = family.finetune_family

    def killed_after_the_first_epoch(*args, on_epoch=None, **kwargs):
        def stop(epoch, losses):
            on_epoch(epoch, losses)
            if epoch == 1:
                raise KeyboardInterrupt  # the checkpoint of epoch 1 is already on disk

        return train(*args, on_epoch=stop, **kwargs)

    monkeypatch.setattr(family, "finetune_family", killed_after_the_first_epoch)
    code, log = _compile([*_argv(work, example_paths, out), "--resume"])
    assert code != 0 and "--resume" in log
    assert (out / "state" / family.JOINT_CHECKPOINT).is_file() and not (out / "budgets" / "family.json").exists()
    monkeypatch.setattr(family, "finetune_family", train)
    code, log = _compile([*_argv(work, example_paths, out), "--resume"])
    assert code == 0, log
    fam = json.loads((out / "budgets" / "family.json").read_text())
    assert fam["finetune"]["resumed_from_epoch"] == 1 and fam["finetune"]["epochs"] == 2
    resumed, reference = (_initializers(o / "budgets" / "shared_weights.onnx") for o in (out, uninterrupted))
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert np.array_equal(resumed[name], value), name
