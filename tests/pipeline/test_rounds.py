"""--rounds (issue 14): search, fine-tune, search again from the fine-tuned model; and the settings it refuses."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from adans_toolchain.cli.compile import main
from adans_toolchain.errors import ConfigError, OutputError, SearchStateError
from adans_toolchain.finetune.named_module import NamedOnnxModule
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.workspace import Workspace
from adans_toolchain.plan import Plan

TINY = ["--val-limit", "60", "--holdout", "0", "--bn-recalibrate", "16", "--samples", "2", "--iterations", "1",
        "--boundary-rounds", "0", "--round-to", "4", "--max-accuracy-drop", "15", "--no-measure", "--seed", "0",
        "--finetune-epochs", "1", "--finetune-batch-size", "16", "--finetune-lr", "0.02"]


def make(**settings) -> CompileConfig:
    return CompileConfig(model="m", data="d", out="o", **settings)


@pytest.mark.parametrize("settings, message", [
    ({"rounds": 0}, "--rounds is a number of search and fine-tuning rounds"),
    ({"rounds": 2, "methods": ("ps", "svd"), "train_data": ("t.npz",), "finetune_epochs": 2},
     "--rounds 2 prunes each round's fine-tuned model further, which only channel pruning does; give --methods ps"),
    ({"rounds": 2, "methods": ("d",), "train_data": ("t.npz",), "finetune_epochs": 2}, "give --methods ps, or --rounds 1"),
    ({"rounds": 2}, "--rounds 2 fine-tunes after every round: give --train-data TRAIN and --finetune-epochs E"),
    ({"rounds": 3, "train_data": ("t.npz",)}, "give --train-data TRAIN and --finetune-epochs E"),
    ({"rounds": 2, "finetune_epochs": 4}, "give --train-data TRAIN and --finetune-epochs E"),
    ({"round_epochs": 2}, "--round-epochs sets the fine-tuning between rounds; it needs --rounds 2 or more"),
    ({"rounds": 2, "train_data": ("t.npz",), "finetune_epochs": 2, "round_epochs": 0}, "--round-epochs must be >= 1"),
])
def test_rounds_settings_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        make(**settings)
    assert "\n" not in str(e.value)


def test_round_epochs_default_and_the_last_round_trains_finetune_epochs():
    cfg = make(rounds=3, train_data=("t.npz",), finetune_epochs=7)
    assert cfg.round_epochs == 2 and [cfg.epochs_of_round(k) for k in (1, 2, 3)] == [2, 2, 7]
    assert make(rounds=4, train_data=("t.npz",), finetune_epochs=2).round_epochs == 1
    assert make(rounds=2, train_data=("t.npz",), finetune_epochs=5, round_epochs=3).epochs_of_round(1) == 3


def test_one_round_records_what_runs_before_rounds_recorded(tmp_path):
    # A one-round compile writes the same OUT/config.json as before --rounds existed, so such runs resume.
    record = make().resume_key()
    assert "rounds" not in record and "round_epochs" not in record
    rounds = make(rounds=2, train_data=("t.npz",), finetune_epochs=4)
    assert rounds.resume_key()["rounds"] == 2 and rounds.resume_key()["round_epochs"] == 2
    Workspace.open(tmp_path, rounds.resume_key(), resume=False, overwrite=False)
    for change in ({"rounds": 3}, {"finetune_epochs": 6}):  # 6 // 2: the intermediate rounds would train 3 epochs
        with pytest.raises(SearchStateError, match="cannot resume: 'round"):
            Workspace.open(tmp_path, replace(rounds, round_epochs=None, **change).resume_key(), resume=True, overwrite=False)


def test_a_rounds_run_that_stopped_before_its_first_evaluation_does_not_block_a_rerun(tmp_path):
    cfg = make(rounds=2, train_data=("t.npz",), finetune_epochs=2)
    ws = Workspace.open(tmp_path / "out", cfg.resume_key(), resume=False, overwrite=False)
    ws.round(1).create()
    (ws.round(1).state / "evaluations.jsonl").write_text("")
    Workspace.prepare(tmp_path / "out", cfg.resume_key(), resume=False, overwrite=False)  # nothing worth keeping
    (ws.round(1).state / "evaluations.jsonl").write_text('{"key": "0", "accuracy": 90.0}\n')
    with pytest.raises(OutputError, match="already holds a run"):
        Workspace.prepare(tmp_path / "out", cfg.resume_key(), resume=False, overwrite=False)


def test_an_emitted_graph_runs_as_a_pytorch_module_under_its_initializer_names(example_paths):
    # What round k > 1 searches: the evaluator needs state_dict names = initializer names and real layers.
    module = load_model(example_paths["model"], "cifar_resnet20").module.eval()
    graph = export_onnx(module, (3, 32, 32))
    named = NamedOnnxModule(graph, (3, 32, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(named(x), module(x), atol=1e-5)
    weights = {i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert weights and weights <= set(named.state_dict())
    assert isinstance(named.get_submodule("layer1.0.conv1"), torch.nn.Conv2d)
    assert isinstance(named.get_submodule("layer1.0.bn1"), torch.nn.BatchNorm2d)
    assert isinstance(named.get_submodule("linear"), torch.nn.Linear)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, example_paths):
    """ResNet-20, two rounds on a tiny budget: 60 VAL images, 50 TEST.

    TRAIN is the 60 VAL images themselves, so that one epoch of four SGD steps lifts VAL accuracy above the
    threshold round 1 stopped at and round 2 has room to prune further: a test of the mechanics of rounds, not
    of what fine-tuning generalises to.
    """
    work = tmp_path_factory.mktemp("rounds")
    val = np.load(example_paths["val"])
    np.savez(work / "train.npz", x=val["x"][:60], y=val["y"][:60])
    test = np.load(example_paths["test"])
    np.savez(work / "test.npz", x=test["x"][:50], y=test["y"][:50])
    out = work / "out"
    argv = [str(example_paths["model"]), "--arch", "cifar_resnet20", "--data", str(example_paths["val"]),
            "--test-data", str(work / "test.npz"), "--train-data", str(work / "train.npz"), "--rounds", "2", *TINY,
            "-o", str(out)]
    log, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(printed):
        assert main(argv) == 0, log.getvalue()
    return out, printed.getvalue(), argv


def test_two_rounds_emit_a_validated_model_and_report_both_rounds(two_rounds):
    out, printed, _ = two_rounds
    report = json.loads((out / "report.json").read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["finetune_epochs"] == 1 for r in rounds)
    for r in rounds:
        for key in ("top1_val_searched", "top1_val_finetuned", "top1_test_searched", "top1_test_finetuned", "minutes"):
            assert r[key] is not None, key
    # Round 2 starts from round 1's fine-tuned model and never grows it; MACs are of the original model.
    assert rounds[1]["macs_ratio"] <= rounds[0]["macs_ratio"] <= 1.0
    assert rounds[-1]["macs"] == report["compressed"]["macs"]
    assert report["compressed"]["macs"] / report["baseline"]["macs"] == pytest.approx(rounds[-1]["macs_ratio"])
    assert report["compressed"]["top1_val"] == rounds[-1]["top1_val_finetuned"]
    # Every round is held to the original model's threshold.
    assert rounds[0]["start_top1_search_val"] == report["search"]["score"]["baseline_accuracy"]
    assert report["search"]["accuracy_threshold"] == pytest.approx(rounds[0]["start_top1_search_val"] - 15)
    assert report["validation"]["relative_diff"] <= report["validation"]["tolerance"]
    assert "## Rounds" in (out / "report.md").read_text()
    assert "after 2 rounds" in printed.splitlines()[0]
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)
    for k in (1, 2):
        for name in ("history.jsonl", "model.onnx", "plan.json", "round_plan.json", "report.json", "round.json"):
            assert (out / "rounds" / str(k) / name).is_file(), (k, name)
    assert (out / "model.onnx").read_bytes() == (out / "rounds" / "2" / "model.onnx").read_bytes()


def test_the_final_plan_composes_the_rounds_on_the_original_model(two_rounds):
    out, _, _ = two_rounds
    final = Plan.from_json((out / "plan.json").read_text())
    first = Plan.from_json((out / "rounds" / "1" / "plan.json").read_text())
    assert final.model_fingerprint == first.model_fingerprint  # both index the original model's groups
    for p in final.pruning:
        kept_before = first.pruning_for(p.group)
        assert kept_before is not None and set(p.keep) <= set(kept_before.keep), p.group
    # Round 2's own plan indexes round 1's model: its group sizes are what round 1 kept.
    own = Plan.from_json((out / "rounds" / "2" / "round_plan.json").read_text())
    sizes = {p.group: len(p.keep) for p in first.pruning}
    assert all(p.size == sizes[p.group] for p in own.pruning if p.group in sizes)
    # The emitted graph is physically smaller: every conv keeps exactly the channels the final plan keeps.
    model = onnx.load(str(out / "model.onnx"))
    baseline = onnx.load(str(out / "baseline.onnx"))
    weights = lambda m: {n.name: numpy_helper.to_array(i).shape for n in m.graph.node if n.op_type == "Conv"  # noqa: E731
                         for i in m.graph.initializer if i.name == n.input[1]}
    after, before = weights(model), weights(baseline)
    assert sum(np.prod(s) for s in after.values()) < sum(np.prod(s) for s in before.values())
    # A block's inner group (and the stem's) is the output channels of its first conv: named after that conv.
    inner = {p.group: len(p.keep) for p in final.pruning if p.group.endswith("conv1")}
    nodes = {g: "/" + "/".join([*(".".join(g.split(".")[:i]) for i in range(1, g.count(".") + 1)), g.split(".")[-1]])
             + "/Conv" for g in inner}
    assert len(inner) == 10 and all(after[nodes[g]][0] == kept for g, kept in inner.items()), (inner, after)


def test_a_resume_skips_finished_rounds_and_reruns_the_last_from_its_caches(two_rounds):
    out, _, argv = two_rounds
    before = json.loads((out / "report.json").read_text())
    first_round = {p.name: p.stat().st_mtime_ns for p in (out / "rounds" / "1").iterdir() if p.is_file()}
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--resume"]) == 0, log.getvalue()
    assert "round 1/2: finished in an earlier session" in log.getvalue()
    assert "round 1/2: search" not in log.getvalue() and "round 2/2: search" in log.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "rounds" / "1").iterdir() if p.is_file()} == first_round
    after = json.loads((out / "report.json").read_text())
    drop = lambda rounds: [{k: v for k, v in r.items() if k != "minutes"} for r in rounds]  # noqa: E731
    assert drop(after["rounds"]) == drop(before["rounds"])  # round 2 again: every evaluation from its cache
    assert after["search"]["evaluations"] == 0
    assert (out / "plan.json").read_text() == Plan.from_json((out / "rounds" / "2" / "plan.json").read_text()).to_json()
