"""Pass contracts are executable: requires run before `apply`, ensures after, and a broken one stops lowering."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.errors import LoweringError
from adans_toolchain.evaluation.substitution import original_weights
from adans_toolchain.lowering import CheckModelPass, DecomposePass, PruneChannelsPass, SimplifyPass, run_passes
from adans_toolchain.lowering.base import TYPE_CHECKS, Condition, LoweringPass, PassResult
from adans_toolchain.lowering.prune_channels import kept_channels, set_initializers
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from tests.helpers import build, export_and_analyse

HOLDS = Condition("always holds", lambda model: None)
FAILS = Condition("never holds", lambda model: "because it is broken")


def relu_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_bn_model(bn_channels: int = 4, after_add: bool = False) -> onnx.ModelProto:
    """x -> Conv(2->4, 1x1) [-> Add x'] -> BatchNormalization -> y, every parameter an initializer."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.full(bn_channels, v, np.float32), n) for n, v in (("s", 2.0), ("b", 0.5), ("m", 0.1), ("v", 1.5))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    bn_input = "c"
    if after_add:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"))
        nodes.append(helper.make_node("Add", ["c", "c2"], ["sum"], name="add"))
        bn_input = "sum"
    nodes.append(helper.make_node("BatchNormalization", [bn_input, "s", "b", "m", "v"], ["y"], name="bn"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])
    graph = helper.make_graph(nodes, "conv_bn", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class FakePass(LoweringPass):
    name = "fake"

    def __init__(self, requires=(), ensures=()) -> None:
        self._requires, self._ensures, self.applied = list(requires), list(ensures), False

    def requires(self):
        return self._requires

    def ensures(self, source):
        return self._ensures

    def apply(self, model):
        self.applied = True
        return PassResult(model, True)


def test_a_failing_ensure_raises_naming_pass_condition_and_reason():
    with pytest.raises(LoweringError, match=r"fake: ensures 'never holds' does not hold: because it is broken"):
        FakePass(ensures=[HOLDS, FAILS])(relu_model())


def test_a_failing_require_raises_before_apply():
    p = FakePass(requires=[FAILS], ensures=[HOLDS])
    with pytest.raises(LoweringError, match=r"fake: requires 'never holds'"):
        p(relu_model())
    assert not p.applied


def test_run_passes_logs_every_checked_condition():
    _, log = run_passes(relu_model(), [FakePass(requires=[HOLDS], ensures=[HOLDS]), CheckModelPass()])
    assert log == [
        {"pass": "fake", "modified": True, "checked": [
            {"condition": "always holds", "when": "before", "held": True},
            {"condition": "always holds", "when": "after", "held": True},
        ]},
        {"pass": "onnx-checker", "modified": False, "checked": [
            {"condition": "onnx.checker passes with full shape inference", "when": "after", "held": True},
        ]},
    ]


@pytest.fixture(scope="module")
def lowering():
    """A joint pruning + decomposition plan on CIFAR ResNet-20, its passes and their inputs."""
    module = build("cifar_resnet20")
    exported = export_and_analyse(module, (3, 32, 32))
    analysis = exported.analysis
    transform = PlanTransform(analysis, original_weights(module, analysis))
    rng = np.random.default_rng(7)
    groups = analysis.prunable_groups
    space = CompressionSpace.from_priorities(
        groups, {g.id: rng.random(g.size) for g in groups}, extra_sites=layer_sites(analysis, parse_methods("d,ps"))
    )
    plan = space.decode(rng.random(space.dim) * 0.8)
    assert plan.active_decompositions and any(p.removed for p in plan.pruning)
    source = set_initializers(exported.onnx_model, transform.sparse_weights(plan))
    prune = PruneChannelsPass(analysis, plan)
    decompose = DecomposePass(analysis, plan, transform.factorizations)
    return {"analysis": analysis, "plan": plan, "source": source, "prune": prune, "decompose": decompose}


def test_real_conditions_hold_on_a_real_lowering(lowering):
    passes = [lowering["prune"], lowering["decompose"], CheckModelPass(), SimplifyPass(), CheckModelPass()]
    model, log = run_passes(lowering["source"], passes)
    assert [e["pass"] for e in log] == ["prune-channels", "decompose", "onnx-checker", "onnxsim", "onnx-checker"]
    for p, entry in zip(passes, log):
        declared = [("before", c.name) for c in p.requires()] + [("after", c.name) for c in p.ensures(model)]
        assert [(c["when"], c["condition"]) for c in entry["checked"]] == declared
        assert all(c["held"] for c in entry["checked"])
    assert all(len(e["checked"]) >= 1 for e in log)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


class Unchanged:
    """Mixin: a pass whose `apply` forgets to do its work."""

    def apply(self, model):
        return PassResult(model, True)


class UnslicedPrune(Unchanged, PruneChannelsPass):
    pass


class UndecomposedDecompose(Unchanged, DecomposePass):
    pass


def test_prune_ensure_fails_when_a_weight_was_not_sliced(lowering):
    p = lowering["prune"]
    with pytest.raises(LoweringError, match="prune-channels: ensures 'every initializer axis bound to a pruned tensor"):
        UnslicedPrune(p.analysis, p.plan)(lowering["source"])


def test_prune_require_fails_on_a_plan_that_does_not_fit_the_analysis(lowering):
    p = lowering["prune"]
    first, *rest = [g for g in p.plan.pruning if g.removed]
    others = [g for g in p.plan.pruning if not g.removed]
    plan = dataclasses.replace(p.plan, pruning=(dataclasses.replace(first, size=first.size + 1), *rest, *others))
    with pytest.raises(LoweringError, match=f"requires 'the plan prunes only prunable groups.*'{first.group}'"):
        PruneChannelsPass(p.analysis, plan)(lowering["source"])


def test_type_check_fails_when_a_per_channel_constant_disagrees():
    assert TYPE_CHECKS.check(conv_bn_model()) is None
    assert "BatchNormalization" in TYPE_CHECKS.check(conv_bn_model(bn_channels=3))


def test_decompose_require_fails_before_pruning(lowering):
    d = lowering["decompose"]
    pruned = set(kept_channels(d.analysis, d.plan))
    layers = [d.factorizations.layers[x.layer] for x in d.plan.active_decompositions]
    assert any({layer.input, layer.output} & pruned for layer in layers)  # unpruned, some layer is too wide
    with pytest.raises(LoweringError, match="decompose: requires 'decomposed weights already have the plan's kept channel counts"):
        d(lowering["source"])


def test_decompose_ensures_fail_when_the_layer_stays_or_a_factor_is_missing(lowering):
    d = lowering["decompose"]
    pruned = lowering["prune"](lowering["source"]).model
    with pytest.raises(LoweringError, match="decompose: ensures 'no decomposed layer's original weight remains'"):
        UndecomposedDecompose(d.analysis, d.plan, d.factorizations)(pruned)
    decomposed = d(pruned).model
    factors_present = d.ensures(pruned)[1]
    assert factors_present.check(decomposed) is None
    renamed = onnx.ModelProto()
    renamed.CopyFrom(decomposed)
    node = next(n for n in renamed.graph.node if n.name.endswith(("/svd_in", "/tucker_core")))
    node.name += "_renamed"
    assert "lacks the factor nodes" in factors_present.check(renamed)


def test_simplify_folds_batchnorm_after_conv_and_its_ensures_can_fail():
    model = conv_bn_model()
    folds_bn = SimplifyPass().ensures(model)[1]
    assert "not folded" in folds_bn.check(model)
    simplified, _ = run_passes(model, [SimplifyPass()])
    assert not any(n.op_type == "BatchNormalization" for n in simplified.graph.node)
    same_io = SimplifyPass().ensures(model)[0]
    renamed = onnx.ModelProto()
    renamed.CopyFrom(simplified)
    renamed.graph.output[0].name = "z"
    assert "changed" in same_io.check(renamed)


def test_simplify_keeps_a_batchnorm_it_cannot_fold_and_says_so_truthfully():
    # BN after an Add is not onnxoptimizer's Conv+BN pattern: it stays, and the ensure does not claim otherwise.
    simplified, _ = run_passes(conv_bn_model(after_add=True), [SimplifyPass()])
    assert any(n.op_type == "BatchNormalization" for n in simplified.graph.node)


def test_checker_ensure_fails_on_invalid_onnx():
    model = relu_model()
    model.graph.node[0].input.append("x")  # Relu takes one input
    with pytest.raises(LoweringError, match="onnx-checker: ensures 'onnx.checker passes.*not valid ONNX"):
        CheckModelPass()(model)


def test_report_lists_the_checked_conditions_per_pass():
    from adans_toolchain.reporting.report import _lowering_markdown

    _, log = run_passes(relu_model(), [FakePass(requires=[HOLDS]), CheckModelPass()])
    lines = _lowering_markdown({"lowering": log + [{"pass": "finetune", "modified": True, "checked": []}]})
    assert "| fake | yes | before: always holds |" in lines
    assert "| onnx-checker | no | after: onnx.checker passes with full shape inference |" in lines
    assert "| finetune | yes | — |" in lines
