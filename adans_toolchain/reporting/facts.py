"""What one compile found, as typed, frozen data: the pipeline computes these, the report only formats them.

Nothing here runs or analyses a model. The pipeline (one layer up) builds
these from its stages' results; `report.build_report` turns them into
report.json and report.md. Tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from adans_toolchain.lowering.storage import Storage
from adans_toolchain.reporting.int8 import Int8Facts
from adans_toolchain.search.types import IterationSummary

__all__ = [
    "Accuracies",
    "BatchNormRecalibration",
    "CompileOutcome",
    "CompileSubject",
    "FinetuneFacts",
    "FinetuneRun",
    "HoldoutSelection",
    "ModelFacts",
    "OneRateFacts",
    "PredictedLatency",
    "RescoredPlan",
    "RoundFacts",
    "SearchFacts",
    "SplitAccuracy",
    "Storage",
]


@dataclass(frozen=True)
class CompileSubject:
    """What was compiled, for which target, on which data."""

    description: str
    input_shape: tuple[int, ...]
    target: Mapping[str, Any]  # Target.as_dict()
    val_images: int
    test_images: int | None
    preprocessing: Mapping[str, Any]
    versions: Mapping[str, str]


@dataclass(frozen=True)
class ModelFacts:
    """One emitted ONNX model (baseline.onnx or model.onnx), analysed by the pipeline."""

    macs: int
    params: int
    cost: float  # by the search's cost model, in its unit
    storage: Storage


@dataclass(frozen=True)
class SplitAccuracy:
    """Top-1 in percent of the emitted models on one split (VAL or TEST)."""

    baseline: float
    compressed: float  # the headline: the model written to model.onnx
    compressed_without_bn_recalibration: float | None = None  # same plan, the trained BatchNorm statistics
    compressed_before_finetune: float | None = None
    baseline_finetuned: float | None = None

    def side(self, name: str, split: str) -> dict[str, float]:
        """report.json's `top1_<split>[_suffix]` entries of the baseline or compressed side."""
        out = {}
        for f in fields(self):
            side, _, suffix = f.name.partition("_")
            value = getattr(self, f.name)
            if side == name and value is not None:
                out[f"top1_{split}" + (f"_{suffix}" if suffix else "")] = value
        return out


@dataclass(frozen=True)
class Accuracies:
    val: SplitAccuracy
    test: SplitAccuracy | None = None

    def side(self, name: str) -> dict[str, float]:
        out = self.val.side(name, "val")
        if self.test is not None:
            out.update(self.test.side(name, "test"))
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class BatchNormRecalibration:
    """BatchNorm statistics re-estimated on calibration images (one forward pass, no weight updates)."""

    images: int  # 0: off
    source: str | None  # where the images came from
    from_val: bool  # the VAL images (no --calibration-data)
    applied_to_emitted: bool  # the emitted compressed model carries re-estimated statistics


@dataclass(frozen=True)
class PredictedLatency:
    """Latency of the baseline and the emitted model on the target, as the latency cost model predicts it."""

    baseline_ms: float
    compressed_ms: float
    layers_ms: tuple[Mapping[str, float], Mapping[str, float]]  # per weighted layer, baseline then compressed
    source: str  # e.g. "estimated (roofline)"
    model: Mapping[str, Any]  # the latency model's describe()
    # Set when the prediction is MACs in disguise (a roofline with no memory
    # bandwidth): why, in one sentence. None when it adds information.
    reduces_to_theoretical: str | None = None


@dataclass(frozen=True)
class FinetuneRun:
    train_loss: list[float]
    train_top1: list[float]
    resumed_from_epoch: int | None
    interpreter_check_relative_diff: float | None
    validation: Mapping[str, Any]
    epoch_seconds: list[float] = field(default_factory=list)  # wall, data loading included; epochs of this session
    images_per_s: float | None = None  # training throughput over those epochs


@dataclass(frozen=True)
class FinetuneFacts:
    config: Mapping[str, Any]
    train_images: int
    train_data: str
    compressed: FinetuneRun
    baseline: FinetuneRun | None = None

    def as_dict(self) -> dict:
        d = {"config": dict(self.config), "train_images": self.train_images, "train_data": self.train_data}
        for name in ("compressed", "baseline"):
            run = getattr(self, name)
            if run is not None:
                d[name] = {f.name: getattr(run, f.name) for f in fields(run)}
        return d


@dataclass(frozen=True)
class RescoredPlan:
    """One of the search's best feasible plans, scored again on the held-back part of VAL."""

    search_rank: int  # 1: the search's best on SEARCH-VAL
    iteration: int
    search_accuracy: float  # top-1 on SEARCH-VAL, percent (what the search ranked it by)
    holdout_accuracy: float  # top-1 on HOLDOUT-VAL, percent
    cost_ratio: float  # by the search's cost model, relative to the baseline
    search_score: float
    holdout_score: float  # the same AdaNS score with the holdout's baseline accuracy and threshold
    feasible_on_holdout: bool
    chosen: bool


@dataclass(frozen=True)
class HoldoutSelection:
    """Issue 13: the search ranked plans on SEARCH-VAL; the emitted plan was chosen on HOLDOUT-VAL."""

    fraction: float  # --holdout
    search_images: int
    holdout_images: int
    rescore_top: int  # --rescore-top
    baseline_search_accuracy: float
    baseline_holdout_accuracy: float
    search_threshold: float
    holdout_threshold: float
    candidates: tuple[RescoredPlan, ...]  # in search order, best first
    # "holdout": the best holdout score among the plans feasible there; "fallback": none feasible there, the
    # most accurate there is within the allowed drop; "baseline": nothing to re-score, or nothing good enough.
    outcome: str
    calibration_from_search_part: bool  # BatchNorm re-estimation never saw the held-back images

    @property
    def chosen(self) -> RescoredPlan | None:
        return next((c for c in self.candidates if c.chosen), None)

    def as_dict(self) -> dict:
        chosen = self.chosen
        emitted = {"plan": "baseline", "search_accuracy": self.baseline_search_accuracy,
                   "holdout_accuracy": self.baseline_holdout_accuracy, "cost_ratio": 1.0}
        if chosen is not None:
            emitted = {"plan": f"search rank {chosen.search_rank}", "search_accuracy": chosen.search_accuracy,
                       "holdout_accuracy": chosen.holdout_accuracy, "cost_ratio": chosen.cost_ratio}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "candidates"}
        d["candidates"] = [{f.name: getattr(c, f.name) for f in fields(c)} for c in self.candidates]
        d["emitted"] = emitted
        # The search alone would have emitted its rank-1 plan (the baseline when there is none).
        d["differs_from_search_best"] = bool(self.candidates) and (chosen is None or chosen.search_rank != 1)
        return d


@dataclass(frozen=True)
class OneRateFacts:
    """The one-rate rule (issue 13): the same rate for every site, the largest the threshold allows.

    What a search must beat. Its plan is scored by substitution like every
    candidate (BatchNorm re-estimated when the candidates are) and never lowered.
    """

    rate: float  # fraction of every coordinate (0: no rate is feasible, the rule is the baseline)
    macs_ratio: float  # the rule's plan's MACs over the baseline's
    cost_ratio: float  # by the search's cost model
    top1_val: float  # on the images the search scores
    top1_test: float | None  # None without TEST data, or when the rule is the baseline
    bn_recalibrated: bool  # its accuracies are with re-estimated BatchNorm statistics
    evaluations: int  # bisection points evaluated (cache hits included)
    complete: bool  # False: --max-evaluations ran out during the bisection
    variant: str = "all coordinates"  # which coordinates the rate applies to (the cheaper feasible variant)
    # The same rule at the rate whose cost matches the searched plan's (when the search went cheaper): the
    # comparison at equal cost, scored on SEARCH-VAL and TEST after the search (outside its evaluation budget).
    at_searched_cost: "OneRateFacts | None" = None


@dataclass(frozen=True)
class SearchFacts:
    """The search as it ran: settings it reports, counts, the chosen sample, the per-iteration log."""

    methods: tuple[str, ...]
    sites: tuple[str, ...]
    cost: Mapping[str, Any]  # the search cost model's describe() (name, unit, notes, ...)
    score: Mapping[str, Any]
    accuracy_threshold: float
    baseline_accuracy: float
    boundary: Mapping[str, Any]
    evaluations: int
    cache_hits: int
    eval_seconds: float
    executor: Any
    precision: str | None
    resumed_from: int
    best: Mapping[str, Any] | None  # {"f", "iteration", **info} of the chosen sample; None: the baseline was emitted
    feasible_samples: int
    history_samples: int
    iterations: tuple[IterationSummary, ...]
    bn_recalibration: BatchNormRecalibration
    selection: HoldoutSelection | None = None  # None: --holdout 0, the search's best was emitted
    one_rate: OneRateFacts | None = None  # None: a search that did not compute the rule (tests)
    images: int | None = None  # VAL images run over all paid evaluations (early rejection stops some short)
    early_rejected: int = 0  # evaluations stopped early because they could not reach the threshold
    early_rejection: str | None = None  # the rule, as the evaluator describes it; None: off


@dataclass(frozen=True)
class CompileOutcome:
    """What was emitted and how it measures up against the baseline."""

    baseline: ModelFacts
    compressed: ModelFacts
    accuracies: Accuracies
    validation: Mapping[str, Any]  # ValidationResult.as_dict() of model.onnx
    pass_log: list[dict]
    layers: tuple[Mapping[str, Any], ...]  # plan.layer_table.plan_layer_table rows
    groups: tuple[Mapping[str, Any], ...]  # plan.layer_table.plan_group_table rows
    measured: Mapping[str, Any] | None = None  # runtime.measure.measured_speedup(); None with --no-measure
    latency: PredictedLatency | None = None
    finetuning: FinetuneFacts | None = None
    int8: Int8Facts | None = None  # --quantize int8: model_int8.onnx


@dataclass(frozen=True)
class RoundFacts:
    """One round of iterative compression (--rounds): search from the previous round's fine-tuned model, then
    fine-tune. MACs are of the round's emitted model relative to the original model's; accuracies are of the
    emitted ONNX model before (`searched`) and after fine-tuning."""

    round: int  # 1-based
    start_top1_search_val: float  # the round's starting model on the images the search scores (substituted)
    searched: bool  # False: the starting model was already below the threshold, so the round did not search
    macs: int
    macs_ratio: float  # of the original model's MACs
    top1_val_searched: float
    top1_val_finetuned: float
    finetune_epochs: int
    evaluations: int  # candidate evaluations paid for in the round (its cache; repeats not counted), all sessions
    minutes: float  # wall time of the round in the session that finished it
    top1_test_searched: float | None = None
    top1_test_finetuned: float | None = None

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
