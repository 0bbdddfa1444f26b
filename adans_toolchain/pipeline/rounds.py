"""Iterative compression (`--rounds R`, issue 14): search, fine-tune briefly, search again from the fine-tuned model.

Round 1 is the one-shot compile of the original model. Round k > 1 starts
from round k-1's fine-tuned model as lowering emitted it before folding
BatchNorm (`Emitted.pre_simplify`, fine-tuned): a physically smaller ONNX
graph with the original's tensor, node and parameter names. It is analysed
as any ONNX input is, and evaluated by the same PyTorch evaluator as round 1
through `finetune.named_module.NamedOnnxModule` (real Conv/BatchNorm/Linear
modules under the initializer names), so BatchNorm re-estimation, Taylor
priorities and physically sliced candidates all work as in round 1.

Every round is held to the original model's accuracy: the threshold (and on
HOLDOUT-VAL the reference accuracy) is the original's less the allowed drop,
and the score's baseline accuracy and cost are the original's, so every
round optimises the same score. The teacher of --distill stays the original.
Round k's plan indexes its starting model; `plan/compose.py` composes it
with the plans before it into one plan of the original model, which is
checked against the emitted graph (`_check_composition`) and is what the
reports and OUT/plan.json give, so MACs, tables and latency are against
the original.

Each round is a run directory of its own, OUT/rounds/<k>/ (workspace.py),
with its own history, caches and fine-tuning checkpoint; a finished round
writes round.json last, and a resume starts from the first round without
one (the last round always runs again, as a resumed one-round compile does).
The final files in OUT (model.onnx, plan.json, report.*) are the last
round's, copied there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from cost_models import workload_macs

from adans_toolchain.analysis.channels import analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.errors import LoweringError, failures_named
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text
from adans_toolchain.finetune.named_module import NamedOnnxModule
from adans_toolchain.lowering import PruneChannelsPass, run_passes
from adans_toolchain.lowering.emit import Emitted, simplify
from adans_toolchain.plan import Plan
from adans_toolchain.plan.compose import compose_pruning
from adans_toolchain.plan.workload import plan_workloads
from adans_toolchain.reporting.facts import CompileOutcome, RoundFacts

UNFOLDED = "model_unfolded.onnx"  # a round's fine-tuned model, BatchNorm separate: where the next round starts
ROUND_PLAN = "round_plan.json"  # a round's own plan, of its starting model (plan.json: composed, of the original)
# The last round's files that OUT itself holds.
FINAL_FILES = ("model.onnx", "baseline.onnx", "plan.json", "model_before_finetune.onnx", "baseline_finetuned.onnx",
               "model_int8.onnx", "report.json", "report.md", "convergence.png")
_ANALYSIS_ADVICE = "rerun with --debug and report the traceback (or run with --rounds 1)"


@dataclass(frozen=True)
class Reference:
    """The original model's top-1 where the search scores (SEARCH-VAL, substituted) and on HOLDOUT-VAL
    (None without --holdout): every round's threshold is measured from these."""

    search_val: float
    holdout: float | None = None


@dataclass(frozen=True)
class RoundStage:
    """What one round of `_compile` needs beyond the settings: where it starts and what it is measured against."""

    round: int  # 1-based
    rounds: int
    inputs: object  # compile._Inputs of this round: its starting model, the original's data
    original: object  # compile._Inputs of the original model
    epochs: int  # fine-tuning epochs after this round
    start_plan: Plan  # composed plan of the original that this round's starting model is (identity in round 1)
    baseline_onnx: onnx.ModelProto  # the original model simplified: every round's baseline.onnx (simplified once)
    reference: Reference | None = None  # None in round 1, whose starting model is the original
    previous: tuple[RoundFacts, ...] = ()
    start_accuracy: float | None = None  # the starting model on the searched images, set by the compile
    start_cost: float | None = None  # the starting model's cost by the search's cost model, set by the compile

    @property
    def final(self) -> bool:
        return self.round == self.rounds

    @cached_property
    def original_identity(self) -> Plan:
        from adans_toolchain.pipeline.compile import _fingerprint

        return Plan((), _fingerprint(self.original.onnx_model))

    @cached_property
    def original_macs(self) -> int:
        return workload_macs(plan_workloads(self.original.analysis, [self.original_identity])[0])

    def compose(self, plan: Plan, analysis, lowered: onnx.ModelProto) -> Plan:
        """This round's `plan` (of its starting model, analysed as `analysis`) after the rounds before it, as one
        plan of the original model; checked against `lowered`, the graph this round emitted."""
        composed = compose_pruning(self.original.analysis, self.start_plan, analysis, plan,
                                   fingerprint=self.original_identity.model_fingerprint)
        _check_composition(self.original.onnx_model, self.original.analysis, composed, lowered)
        return composed

    def notes(self) -> tuple[str, ...]:
        start = ("the original model" if self.round == 1 else
                 f"round {self.round - 1}'s fine-tuned model ({self.previous[-1].macs_ratio:.1%} of the original's MACs)")
        return (
            f"round {self.round} of {self.rounds} (--rounds): searched from {start} and fine-tuned for {_epochs(self.epochs)}; "
            "the accuracy threshold, the score and the --distill teacher are the original model's; plan.json composes "
            f"every round's plan into one of the original model (this round's own plan: {ROUND_PLAN})"
            + ("" if self.round == 1 else "; where a note says the uncompressed baseline was emitted, this round kept "
               "its starting model"),
        )

    def write_round_files(self, out, plan: Plan, emitted: Emitted) -> None:
        """The round's own plan and its fine-tuned model with BatchNorm separate (the next round's start)."""
        atomic_write_text(out / ROUND_PLAN, plan.to_json())
        atomic_write_bytes(out / UNFOLDED, emitted.pre_simplify.SerializeToString())

    def facts(self, outcome: CompileOutcome, search, *, evaluations: int, minutes: float) -> RoundFacts:
        """The round's line of the report: `evaluations` paid in all sessions (its cache), `minutes` in this one."""
        val, test = outcome.accuracies.val, outcome.accuracies.test

        def searched(split):
            return split.compressed if split.compressed_before_finetune is None else split.compressed_before_finetune

        return RoundFacts(
            round=self.round, start_top1_search_val=float(self.start_accuracy), searched=search.one_rate is not None,
            macs=outcome.compressed.macs, macs_ratio=outcome.compressed.macs / outcome.baseline.macs,
            top1_val_searched=searched(val), top1_val_finetuned=val.compressed, finetune_epochs=self.epochs,
            evaluations=evaluations, minutes=minutes,
            top1_test_searched=None if test is None else searched(test),
            top1_test_finetuned=None if test is None else test.compressed,
        )


def compile_rounds(cfg, progress, ws) -> dict:
    """The --rounds compile: every round in OUT/rounds/<k>/, finished rounds of an earlier session skipped."""
    from adans_toolchain.pipeline import compile as pipeline

    original = pipeline._load_inputs(cfg, progress)
    plan = Plan((), pipeline._fingerprint(original.onnx_model))
    baseline = simplify(original.onnx_model)
    inputs, reference, previous, report = original, None, [], None
    ws.create()
    for k in range(1, cfg.rounds + 1):
        rws = ws.round(k)
        record = rws.round_record() if k < cfg.rounds else None  # the last round always runs (cached if done)
        if record is None:
            start = "the original model" if k == 1 else f"round {k - 1}'s fine-tuned model ({previous[-1].macs_ratio:.1%} of its MACs)"
            progress.step(f"round {k}/{cfg.rounds}: search from {start}, then fine-tuning for {_epochs(cfg.epochs_of_round(k))}")
            stage = RoundStage(k, cfg.rounds, inputs, original, cfg.epochs_of_round(k), plan, baseline, reference, tuple(previous))
            report = pipeline._compile(cfg, progress, rws, stage)
            facts = RoundFacts(**report["rounds"][-1])
            if reference is None:
                selection = report["search"].get("selection") or {}
                reference = Reference(report["search"]["baseline_top1_val_substituted"], selection.get("baseline_holdout_accuracy"))
            rws.finish_round({"facts": facts.as_dict(), "reference": dataclasses.asdict(reference)})
        else:
            facts, reference = RoundFacts(**record["facts"]), Reference(**record["reference"])
            progress.step(f"round {k}/{cfg.rounds}: finished in an earlier session ({facts.macs_ratio:.1%} of the original's "
                          f"MACs, VAL {facts.top1_val_finetuned:.2f}% fine-tuned); starting from its model")
        previous.append(facts)
        if k < cfg.rounds:
            plan = Plan.from_json((rws.root / "plan.json").read_text())
            inputs = round_inputs(original, onnx.load(str(rws.root / UNFOLDED)), k + 1, facts)
    for name in FINAL_FILES:  # OUT mirrors the last round: what it did not write, OUT does not keep from a resumed run
        source = rws.root / name
        if source.is_file():
            atomic_write_bytes(ws.root / name, source.read_bytes())
        else:
            (ws.root / name).unlink(missing_ok=True)
    return report


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def round_inputs(original, model: onnx.ModelProto, k: int, previous: RoundFacts):
    """Round k's inputs: round k-1's fine-tuned model (BatchNorm separate) as model, the original's data."""
    model = _ready_for_lowering(model, {i.name for i in original.onnx_model.graph.initializer}, k)
    shape = original.val.image_shape
    with failures_named(f"analysing round {k - 1}'s fine-tuned model for round {k}", _ANALYSIS_ADVICE):
        analysis = analyse_channels(Graph.from_model(model, shape))
        module = NamedOnnxModule(model, shape).eval()
    description = (f"round {k - 1}'s fine-tuned model of {original.model_description} "
                   f"({previous.macs_ratio:.1%} of its MACs)")
    return dataclasses.replace(original, module=module, onnx_model=model, analysis=analysis, model_description=description)


def _ready_for_lowering(model: onnx.ModelProto, original_names: set[str], k: int) -> onnx.ModelProto:
    """A copy of `model` that lowering can prune again: unread initializers dropped, and the constants the previous
    lowering wrote (channel pads, reshape targets, ...: names the original lacks) renamed, since lowering names
    the constants it writes after their node and would write a second initializer of the same name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    read = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in read]
    renamed = {init.name: f"{init.name}__round{k - 1}" for init in kept if init.name not in original_names}
    for init in kept:
        init.name = renamed.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def _check_composition(original: onnx.ModelProto, analysis, composed: Plan, lowered: onnx.ModelProto) -> None:
    """The composed plan, lowered from the original model, must give the graph the rounds emitted: every node
    reads initializers of the same shapes, and the same integer constants (channel pads, reshape targets)."""
    expected, _ = run_passes(original, [PruneChannelsPass(analysis, composed)])
    shapes = {}
    for model, side in ((expected, "composed"), (lowered, "emitted")):
        values = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            for position, name in enumerate(node.input):
                init = values.get(name)
                if init is not None:
                    shapes.setdefault((node.name, position), {})[side] = init
    for (node, position), sides in shapes.items():
        a, b = sides.get("composed"), sides.get("emitted")
        if a is None or b is None or list(a.dims) != list(b.dims) or (
            a.data_type != onnx.TensorProto.FLOAT and not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        ):
            raise LoweringError(
                f"the rounds' plans composed into one plan of the original model do not give the emitted model "
                f"(node '{node}', input {position}); run with --rounds 1 and report this"
            )
