"""The compile pipeline: load -> analyse -> search -> lower -> validate -> measure -> report.

Each step lives in its own module; this one only wires them together, in
the order of docs/DESIGN.md's data flow, and decides what is written to OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from cost_models import UnsupportedOperatorError, workload_macs, workload_params
from targets import Target, UnknownTargetError, load_target
from targets.host import usable_cores

from adans_toolchain.reporting import report as report_writer
from adans_toolchain.reporting.facts import (
    Accuracies,
    BatchNormRecalibration,
    CompileOutcome,
    CompileSubject,
    FinetuneFacts,
    FinetuneRun,
    HoldoutSelection,
    ModelFacts,
    OneRateFacts,
    PredictedLatency,
    RescoredPlan,
    SearchFacts,
    SplitAccuracy,
)
from adans_toolchain.analysis.channels import ChannelAnalysis, analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.layer_table import plan_group_table, plan_layer_table
from adans_toolchain.plan.workload import graph_workload, plan_workloads
from adans_toolchain.search.boundary import (
    Boundary, OneRate, boundary_groups, characterise_boundary, initial_batch, max_boundary_evaluations, one_rate_rule,
)
from adans_toolchain.search.holdout import choose_on_holdout, holdout_threshold, split_holdout, top_distinct
from adans_toolchain.search.types import Evaluation, SearchResult
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.int8 import emit_int8, wants_int8
from adans_toolchain.quantization.searched import SearchedInt8, search_calibration
from adans_toolchain.pipeline.costing import predicted_latency, report_latency_model, search_cost_model
from adans_toolchain.finetune.emit import finetune_model
from adans_toolchain.lowering.emit import Emitted, lower_plan, simplify
from adans_toolchain.lowering.storage import storage
from adans_toolchain.errors import ConfigError, DataError, InputError, failures_named
from adans_toolchain.evaluation.base import Evaluator, make_evaluator
from adans_toolchain.evaluation.batchnorm import (
    folded_batchnorms, folded_statistics_note, restore_folded_statistics, restored_statistics_note,
)
from adans_toolchain.evaluation.cache import BudgetedAccuracy, CachedAccuracy, EvaluationCache
from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.evaluation.substitution import original_weights
from adans_toolchain.evaluation.executors import EvaluatorSpec, make_executor
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text
from adans_toolchain.frontend.data import IMAGENET_MEAN, IMAGENET_STD, ImageSet, Preprocessing, check_labels_fit, load_image_set
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.frontend.onnx_model import check_onnx_runs_on
from adans_toolchain.frontend.training_data import TrainingSet, load_training_set, training_sources
from adans_toolchain.finetune.train import FinetuneConfig
from adans_toolchain.runtime.measure import measured_speedup
from adans_toolchain.runtime.sessions import top1
from adans_toolchain.plan import Plan
from adans_toolchain.pipeline.progress import Progress
from adans_toolchain.search.scoring import AdaNSScore
from adans_toolchain.plan.sites import layer_sites
from adans_toolchain.search import maximize
from adans_toolchain.search.samplers import ScoreParts
from adans_toolchain.plan.space import CompressionSpace, PruningSite
from adans_toolchain.transforms.plan_transform import PlanTransform
from adans_toolchain.pipeline.workspace import INPUT_SETTINGS, Workspace, fingerprint, fingerprint_inputs

DEFAULT_MAX_DROP = 2.0
# Bisection rounds of the one-rate rule: the rate to 1/128, finer than one unit of all but the widest groups.
ONE_RATE_ROUNDS = 7


@dataclass
class _Inputs:
    target: Target
    threads: int
    module: torch.nn.Module
    model_description: str
    val: ImageSet
    test: ImageSet | None
    calibration: ImageSet | None
    preprocessing: Preprocessing
    onnx_model: onnx.ModelProto
    analysis: ChannelAnalysis
    # Honest selection (issue 13, --holdout): the search scores SEARCH-VAL (priorities, threshold and baseline
    # accuracy included) and the plan to emit is chosen on HOLDOUT-VAL. Without a holdout, search_val is val.
    # The headline accuracy of the emitted model stays measured on all of `val`.
    search_val: ImageSet | None = None
    holdout: ImageSet | None = None
    train: TrainingSet | None = None  # TRAIN (with --finetune-epochs), indexed with the other inputs
    notes: tuple[str, ...] = ()  # what loading decided that the report must say (e.g. re-estimation turned off)

    def __post_init__(self) -> None:
        if self.search_val is None:
            self.search_val = self.val


def _split_val(val: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """(val, search_val, holdout): VAL reordered so SEARCH-VAL comes first and HOLDOUT-VAL last, both views of it.

    Reordering (one copy, the original released) keeps a single copy of the
    images in memory; top-1 over all of VAL does not depend on the order.
    Each part keeps VAL's own order. --holdout 0 leaves VAL as loaded.
    """
    search, held = split_holdout(val.y.numpy(), fraction, seed)
    if not len(held):
        if fraction > 0:
            raise DataError(f"--holdout {fraction:g} of {len(val)} VAL images holds back none; give more VAL images or --holdout 0")
        return val, val, None
    if not len(search):
        raise DataError(f"--holdout {fraction:g} of {len(val)} VAL images leaves none for the search; lower --holdout")
    val = val.take(np.concatenate([search, held]))
    n = len(search)
    return val, val.part(0, n, f"{n} images the search ranks on"), val.part(n, len(val), f"{len(held)} held-back images")


# What to try when loading, exporting or analysing fails unexpectedly (the error keeps the original exception).
_LOAD_ADVICE = "rerun with --debug for the traceback; if the file and --arch are right, report it"
_EXPORT_ADVICE = "export it to ONNX yourself and give adans the .onnx file, or rerun with --debug and report the operator it names"
_ANALYSIS_ADVICE = "adans does not handle something in this model: rerun with --debug and report the traceback"


def _load_inputs(cfg: CompileConfig, progress: Progress) -> _Inputs:
    try:
        target = load_target(cfg.target)
    except UnknownTargetError as e:
        raise ConfigError(str(e)) from e
    # This process runs on the host whatever the target: PyTorch and the
    # measurements use the host's cores; the target's own thread count only
    # enters its cost model (which prices the model as run there).
    threads = cfg.threads or usable_cores()
    if target.id == "host" and cfg.threads:
        # On the host the model is run the way this process runs it.
        target = dataclasses.replace(target, threads=cfg.threads)
    torch.set_num_threads(threads)
    prep = Preprocessing(
        mean=tuple(cfg.mean) if cfg.mean else IMAGENET_MEAN,
        std=tuple(cfg.std) if cfg.std else IMAGENET_STD,
        input_size=tuple(cfg.input_size) if cfg.input_size else None,
        label_offset=cfg.label_offset,
    )
    progress.step(f"loading model {cfg.model}")
    with failures_named(f"loading the model {cfg.model}" + (f" as --arch {cfg.arch}" if cfg.arch else ""), _LOAD_ADVICE):
        loaded = load_model(cfg.model, cfg.arch, cfg.trust_pickle)
    explicit = cfg.mean is not None
    val = load_image_set(cfg.data, prep, limit=cfg.val_limit, explicit_normalisation=explicit)
    test = load_image_set(cfg.test_data, prep, explicit_normalisation=explicit) if cfg.test_data else None
    val, search_val, holdout = _split_val(val, cfg.holdout, cfg.seed)
    calibration = None
    if cfg.bn_recalibrate > 0:
        # From the search part only: BatchNorm re-estimation uses no labels, but statistics estimated on the
        # held-back images would adapt every candidate to them; kept out, they are images no candidate saw,
        # as TEST is. (--holdout 0: search_val is VAL, as before.)
        source = load_image_set(cfg.calibration_data, prep, explicit_normalisation=explicit) if cfg.calibration_data else search_val
        calibration = source.subset(cfg.bn_recalibrate)
    if loaded.input_size and tuple(val.image_shape[1:]) != tuple(loaded.input_size):
        (h, w), (vh, vw) = loaded.input_size, val.image_shape[1:]
        warnings.warn(
            f"--arch {cfg.arch} is built for {h}x{w} images but the VAL images are {vh}x{vw}, so its accuracy on them "
            f"may mean little; give {h}x{w} images (--input-size {h} {w} resizes an ImageFolder)", stacklevel=1,
        )
    for name, data in (("TEST", test), ("calibration", calibration)):
        if data is not None and data.image_shape != val.image_shape:
            raise DataError(f"{name} images are {data.image_shape} but VAL images are {val.image_shape}; they must match")
    if loaded.source == "onnx":
        # An ONNX file is analysed and lowered as given (its initializer names are the parameter names).
        check_onnx_runs_on(loaded.module, val.image_shape)
    _check_model_runs_on(loaded.module, val)
    restore_notes = _restore_folded_statistics(loaded.module, calibration, search_val, cfg)
    if loaded.source == "onnx":
        progress.step(f"analysing channel groups of the ONNX model (input {list(val.image_shape)})")
        onnx_model = loaded.onnx_model
    else:
        progress.step(f"exporting to ONNX and analysing channel groups (input {list(val.image_shape)})")
        with failures_named(f"exporting {cfg.model} to ONNX", _EXPORT_ADVICE):
            onnx_model = export_onnx(loaded.module, val.image_shape)
    # After restoration only an ONNX model's BatchNormalization nodes can still be folded.
    calibration, load_notes = _without_folded_statistics(calibration, loaded.module, onnx_model)
    with failures_named(f"analysing the ONNX graph of {cfg.model}", _ANALYSIS_ADVICE):
        graph = Graph.from_model(onnx_model, val.image_shape)
    classes = graph.shapes[graph.output_names[0]][-1]
    for name, data in (("VAL", val), ("TEST", test)):
        if data is not None:
            check_labels_fit(name, data.y, classes, "fix the labels (or --label-offset for models with a background class)")
    with failures_named(f"analysing the channel groups of {cfg.model}", _ANALYSIS_ADVICE):
        analysis = analyse_channels(graph)
    train = _training_data(cfg, prep, val.image_shape, classes, progress) if cfg.finetune_epochs else None
    return _Inputs(target, threads, loaded.module, loaded.description, val, test, calibration, prep, onnx_model, analysis,
                   search_val=search_val, holdout=holdout, train=train, notes=(*restore_notes, *load_notes))


def _restore_folded_statistics(module, calibration: ImageSet | None, search_val: ImageSet, cfg: CompileConfig
                               ) -> tuple[str, ...]:
    """Folded BatchNorm statistics of a PyTorch model measured back (evaluation/batchnorm.py) when re-estimation or
    fine-tuning will use them: on the calibration images, the ones re-estimation will measure candidates on, else
    on SEARCH-VAL's first images (labels unused)."""
    if not isinstance(module, torch.nn.Module) or (calibration is None and not cfg.finetune_epochs):
        return ()
    images = calibration if calibration is not None else search_val.subset(_RESTORE_IMAGES)
    restored = restore_folded_statistics(module, images.x, cfg.batch_size)
    if not restored:
        return ()
    what = "calibration" if calibration is not None else "SEARCH-VAL"
    return (restored_statistics_note(restored, folded_batchnorms(module)[1], len(images), what),)


# Images that measure restored BatchNorm statistics when there are no calibration images (as many as the default
# re-estimation of the ResNet benchmarks).
_RESTORE_IMAGES = 256


def _without_folded_statistics(calibration: ImageSet | None, module, onnx_model: onnx.ModelProto
                               ) -> tuple[ImageSet | None, tuple[str, ...]]:
    """No BatchNorm re-estimation for a model whose statistics were folded into its weights (evaluation/batchnorm.py)."""
    if calibration is None:
        return None, ()
    folded, total = folded_batchnorms(module) if isinstance(module, torch.nn.Module) else ([], 0)
    if not total:
        folded, total = folded_batchnorms(onnx_model)
    if not folded:
        return calibration, ()
    note = folded_statistics_note(folded, total)
    warnings.warn(note, stacklevel=1)
    return None, (note,)


def _training_data(cfg: CompileConfig, prep: Preprocessing, image_shape: tuple[int, int, int], classes: int,
                   progress: Progress) -> TrainingSet:
    """TRAIN's sources indexed, and checked against the model and each other, before the search rather than after
    it (images are decoded while fine-tuning)."""
    if not cfg.train_data:
        raise ConfigError("--finetune-epochs needs --train-data (training images)")
    progress.step(f"indexing the training data: {', '.join(training_sources(cfg.train_data))}")
    return load_training_set(cfg.train_data, prep, image_shape, classes=classes, explicit_normalisation=cfg.mean is not None)


def _check_model_runs_on(module: torch.nn.Module, data: ImageSet) -> None:
    """A forward pass on two images, so a data/model mismatch is reported as such."""
    try:
        with torch.no_grad():
            logits = module(data.x[:2])
    except Exception as e:  # noqa: BLE001 - any failure here means the data does not fit
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"the model cannot run on the VAL images (shape {list(data.image_shape)}): {first}; "
            "check the data's channels and size (--input-size)"
        ) from e
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise DataError(
            f"the model returns {type(logits).__name__} of shape {getattr(logits, 'shape', '?')}; "
            "adans compiles classifiers that return logits of shape (batch, classes)"
        )


def _searched(inputs: _Inputs) -> str:
    """What the search scores on, for progress lines."""
    if inputs.holdout is None:
        return f"VAL ({len(inputs.val)} images)"
    return f"SEARCH-VAL ({len(inputs.search_val)} of {len(inputs.val)} VAL images; {len(inputs.holdout)} held back)"


def _fingerprint(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()[:16]


def _input_fingerprints(cfg: CompileConfig) -> dict:
    """What a resume checks for changed inputs (`fingerprint_inputs`). Several --train-data sources are one
    entry whose fingerprint covers each of them; one source keeps the entry a single path always had."""
    paths = {name: getattr(cfg, name) for name in INPUT_SETTINGS}
    train = training_sources(cfg.train_data or ())
    paths["train_data"] = train[0] if len(train) == 1 else None
    inputs = fingerprint_inputs(paths)
    if len(train) > 1:
        each = [fingerprint(p) for p in train]
        combined = None if None in each else "sha256:" + hashlib.sha256("\n".join(each).encode()).hexdigest()
        inputs["train_data"] = {"path": ",".join(train), "fingerprint": combined}
    return inputs


def compile_model(cfg: CompileConfig, progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    # OUT first: a run that could not write its results, or a resume whose model or data changed,
    # stops here, before the model is loaded, and writes nothing.
    ws = Workspace.prepare(cfg.out, cfg.resume_key(), resume=cfg.resume, overwrite=cfg.overwrite,
                           inputs=_input_fingerprints(cfg))
    try:
        report = _compile(cfg, progress, ws)
    except BaseException:
        ws.abandon()  # an --overwrite leaves the earlier run as it was; a run without evaluations leaves nothing
        raise
    ws.commit()
    progress.step(f"done: {ws.root / 'report.md'}")
    return report


def _compile(cfg: CompileConfig, progress: Progress, ws: Workspace, stage=None) -> dict:
    """One compile; with --rounds > 1, the rounds (pipeline/rounds.py), each a call of this with its `stage`
    (a rounds.RoundStage: the round's starting model, the original model, the round's fine-tuning)."""
    if stage is None and cfg.rounds > 1:
        from adans_toolchain.pipeline.rounds import compile_rounds

        return compile_rounds(cfg, progress, ws)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    methods = cfg.canonical_methods  # the config validated itself when it was built
    torch.manual_seed(cfg.seed)
    inputs = _load_inputs(cfg, progress) if stage is None else stage.inputs
    analysis = inputs.analysis
    cost_model = search_cost_model(cfg.cost, inputs.target, cfg.lut)
    transform = PlanTransform(analysis, original_weights(inputs.module, analysis))
    evaluator = make_evaluator(
        inputs.module, inputs.search_val, transform, device=cfg.device, batch_size=cfg.batch_size, calibration=inputs.calibration,
        precision=cfg.precision, slicing=cfg.candidates == "sliced",
    )
    evaluator.notes.extend(inputs.notes)
    if "int8" in methods:  # --methods ...,int8: int8 candidates are lowered, quantized and simulated
        evaluator.int8 = _searched_int8(inputs, transform)
    identity = Plan((), _fingerprint(inputs.onnx_model))
    start = time.perf_counter()
    baseline_val = float(evaluator.accuracy([identity])[0])
    timings["baseline_evaluation_s"] = time.perf_counter() - start
    drop = cfg.max_accuracy_drop if cfg.accuracy_threshold is None else None
    # --rounds: every round's threshold is measured against the original model (round 1's baseline), never
    # against the round's own starting model, so rounds cannot drift downward.
    reference_val = baseline_val if stage is None or stage.reference is None else stage.reference.search_val
    threshold = cfg.accuracy_threshold if cfg.accuracy_threshold is not None else reference_val - (DEFAULT_MAX_DROP if drop is None else drop)
    if threshold > reference_val:
        raise InputError(
            f"the accuracy threshold {threshold:.2f}% is above the baseline's own {baseline_val:.2f}% on VAL; "
            "lower --accuracy-threshold (or use --max-accuracy-drop)"
        )
    # Known only now; set before the executor is made, whose remote workers copy it (issue 13).
    evaluator.early_rejection = EarlyRejection.from_setting(cfg.early_rejection, threshold)
    # One image's worth of accuracy is the smallest meaningful floor.
    floor = cfg.accuracy_floor or max(reference_val - threshold, 100.0 / len(inputs.search_val))
    timings["load_export_analyse_s"] = time.perf_counter() - t0
    progress.step(
        f"baseline top-1 on {_searched(inputs)} {baseline_val:.2f}%; threshold {threshold:.2f}%; "
        f"{len(analysis.prunable_groups)} prunable channel groups, {len(analysis.frozen_groups)} frozen"
    )
    extra_sites = layer_sites(analysis, methods)
    groups = analysis.prunable_groups if "ps" in methods else []
    if not groups and not extra_sites:
        reasons = "; ".join(f"{g.id}: {g.frozen_reason}" for g in analysis.frozen_groups[:3])
        raise InputError(f"nothing in this model can be compressed with {', '.join(methods)} ({reasons})")

    baseline_cost = _baseline_cost(inputs, cost_model, identity)
    # --rounds: costs, like accuracies, are scored against the original model, so every round optimises the same
    # score and its cost ratios are of the original's cost.
    reference_cost = baseline_cost if stage is None or stage.round == 1 else _baseline_cost(stage.original, cost_model, stage.original_identity)
    if stage is not None:
        stage = dataclasses.replace(stage, start_accuracy=baseline_val, start_cost=baseline_cost)
    if cfg.executor != "local" and not evaluator.distributable:
        raise ConfigError(f"--executor {cfg.executor} distributes PyTorch models; an ONNX model is evaluated with --executor local")
    ws.create()
    t = time.perf_counter()
    priorities = ws.load_array_dict("priorities.npz")
    if priorities is None:
        priorities = {}
        if groups:
            progress.step(f"channel priorities ({cfg.priority}) on {len(inputs.search_val)} images")
            priorities = evaluator.priorities(analysis, groups, cfg.priority)
        ws.save_array_dict("priorities.npz", priorities)
    timings["priorities_s"] = time.perf_counter() - t
    space = CompressionSpace.from_priorities(
        groups, priorities, identity.model_fingerprint, round_to=cfg.round_to, extra_sites=extra_sites
    )
    score = AdaNSScore(reference_val, reference_cost, threshold, floor)
    cache = EvaluationCache(ws.state / "evaluations.jsonl")
    executor = make_executor(
        cfg.executor, evaluator, lambda: _evaluator_spec(inputs, transform, cfg, _resolved_precision(evaluator)),
        workers=cfg.workers, ray_address=cfg.ray_address,
    )
    run = _Run(cfg, inputs, evaluator, executor, transform, space, cost_model, score, cache, ws, identity, progress, timings, t0,
               stage=stage)
    try:
        if cfg.budgets:  # --budgets (issue 17): one search, a nested family of models, one per budget
            from adans_toolchain.pipeline.family import compile_family

            return compile_family(run)
        if stage is not None and baseline_val < threshold:  # a later round that starts below the threshold
            search, selected = _unsearched(run)
            notes = tuple(evaluator.notes)
        else:
            search = SearchOutcome(*_search(run))
            notes = tuple(evaluator.notes)
            selected = _select_plan(run, search.result)
        return _emit(run, search, selected, notes)
    finally:
        executor.close()


def _searched_int8(inputs: _Inputs, transform: PlanTransform) -> SearchedInt8:
    """What scores int8 candidates: the search's model lowered, quantized and simulated (quantization/searched.py)."""
    calibration, _ = search_calibration(inputs.calibration, inputs.search_val)
    return SearchedInt8(inputs.onnx_model, inputs.analysis, transform, calibration.x.numpy(), tuple(inputs.val.image_shape))


def _baseline_cost(inputs: _Inputs, cost_model, identity: Plan) -> float:
    """The baseline's cost on the target; an operator the cost models cannot price is the user's to know, before OUT is written."""
    workloads = plan_workloads(inputs.analysis, [identity], batch=inputs.target.batch_size)
    try:
        workload_macs(workloads[0])  # the report gives MACs whatever --cost is
        return float(cost_model.estimate(workloads)[0])
    except UnsupportedOperatorError as e:
        raise InputError(
            f"the model has an operator adans cannot cost ({e}); replace it in the model (or export the "
            "model without it, e.g. normalise outside the model), or report the operator"
        ) from e


def _resolved_precision(evaluator: Evaluator) -> str:
    """The precision workers use: the one the evaluator chose (auto on CPU is channels-last, cheap to redo)."""
    return "auto" if getattr(evaluator, "channels_last", False) and evaluator.precision == "fp32" else evaluator.precision


def _evaluator_spec(inputs: _Inputs, transform, cfg: CompileConfig, precision: str) -> EvaluatorSpec:
    threads = max(1, inputs.threads // max(cfg.workers or inputs.threads, 1))
    return EvaluatorSpec.from_module(
        inputs.module, val=inputs.search_val, calibration=inputs.calibration, analysis=inputs.analysis, weights=transform.weights,
        batch_size=cfg.batch_size, precision=precision, device=cfg.device, threads=threads,
        slicing=cfg.candidates == "sliced",
    )


@dataclass
class _Run:
    """What the search, the plan selection and the emission of one compile share."""

    cfg: CompileConfig
    inputs: _Inputs
    evaluator: Evaluator
    executor: object
    transform: PlanTransform
    space: CompressionSpace
    cost_model: object
    score: AdaNSScore
    cache: EvaluationCache
    ws: Workspace
    identity: Plan
    progress: Progress
    timings: dict[str, float]
    t0: float
    stage: object = None  # --rounds: the round's rounds.RoundStage; None: a compile of one round


def _start_cost_ratio(run: _Run) -> float:
    """The search's starting model's cost as a fraction of the score's baseline cost: 1, but for a later
    round of --rounds, whose score is against the original model."""
    stage = run.stage
    return 1.0 if stage is None or stage.start_cost is None else stage.start_cost / run.score.baseline_cost


def _unsearched(run: _Run) -> tuple["SearchOutcome", "SelectedPlan"]:
    """A later round (--rounds) whose starting model is already below the threshold: nothing pruned from it can
    meet the threshold (the boundary and the one-rate rule assume its starting point feasible), so it searches
    nothing, keeps its starting model and fine-tunes it again."""
    stage, dim = run.stage, run.space.dim
    where = _searched(run.inputs)
    note = (f"round {stage.round}: its starting model (round {stage.round - 1}'s fine-tuned model) scores "
            f"{stage.start_accuracy:.2f}% on {where}, below the threshold {run.score.accuracy_threshold:.2f}%, so this "
            "round searched nothing and fine-tuned that model again")
    run.progress.step(note)
    stats = {"evaluated": 0, "cached": 0, "eval_seconds": 0.0, "executor": run.executor.describe(),
             "precision": run.evaluator.precision, "images": 0, "rejected": 0}
    outcome = SearchOutcome(Boundary(np.zeros(dim), 0.0, 0, []), SearchResult(np.zeros(dim), 0.0, {}, [], []), stats)
    return outcome, SelectedPlan(None, run.identity, (note,))


def _search(run: _Run):
    """The one-rate rule, the boundary characterisation, then AdaNS started from the rule.

    Every evaluation goes through the resumable cache, and all of them together stay within --max-evaluations.
    """
    # Every evaluation goes through the cache; its counters feed the progress bar and the report.
    accuracies = CachedAccuracy(run.cache, run.space, run.executor, run.progress)
    budget = BudgetedAccuracy(accuracies, run.cfg.max_evaluations)
    run.progress.step(_budget_line(run))
    rule, rule_facts = _one_rate_rule(run, budget)
    boundary = _characterise_boundary(run, budget, rule)
    result = _adans(run, boundary, rule, _Objective(run, accuracies), budget)
    stats = {"evaluated": accuracies.evaluated, "cached": accuracies.cached, "eval_seconds": accuracies.eval_seconds,
             "executor": run.executor.describe(), "precision": run.evaluator.precision,
             "images": accuracies.images, "rejected": accuracies.rejected}
    return boundary, result, stats, rule_facts


def _one_rate_rule(run: _Run, budget: BudgetedAccuracy) -> tuple[OneRate, OneRateFacts]:
    """What the search must beat: one rate for every coordinate (or every coordinate but the shared channel
    groups, whichever is cheaper), bisected through the same cache (free on resume).

    Every coordinate of the space is a fraction compressed: of a group's units
    (lowest priority first, as the search removes them), of a layer's weights
    (pn), or of a decomposition mode's cheaper ranks, where it is about the
    fraction of the layer's cost saved. So one r means the same for all.
    """
    t = time.perf_counter()
    rules = []
    for variant, mask in _one_rate_variants(run.space):
        run.progress.step(f"one-rate rule ({variant}): bisection on one rate ({ONE_RATE_ROUNDS} rounds)")
        rule = one_rate_rule(budget, run.space.dim, run.score.accuracy_threshold, rounds=ONE_RATE_ROUNDS, mask=mask)
        rules.append((variant, rule))
        if not rule.complete:
            break
    # The rule is the cheaper of its variants (both meet the threshold; rate 0 is the baseline);
    # only the one kept is scored on TEST.
    variant, rule = min(rules, key=lambda vr: _plan_cost(run, _rule_plan(run, vr[1])))
    facts = _one_rate_facts(run, rule, variant, evaluations=sum(r.evaluations for _, r in rules))
    run.ws.save_json("one_rate.json", {**rule.as_dict(), "variant": variant})
    run.timings["one_rate_s"] = time.perf_counter() - t
    test = "" if facts.top1_test is None else f", TEST {facts.top1_test:.2f}%"
    run.progress.step(
        f"one-rate rule ({variant}): r = {rule.rate:.4g}: {facts.macs_ratio:.1%} MACs, VAL {facts.top1_val:.2f}%{test} "
        f"({facts.evaluations} evaluations{'' if rule.complete else '; --max-evaluations reached'})"
    )
    return rule, facts


def _one_rate_variants(run_space: CompressionSpace) -> list[tuple[str, tuple[bool, ...] | None]]:
    """Every coordinate; and, when some channel groups are shared by several layers (residual streams,
    concatenations), every coordinate but those: one rate on a residual stream cuts every block at once,
    which a network tolerates far less than the same rate on its blocks' inner channels."""
    shared = [isinstance(site, PruningSite) and len(site.group.producers) > 1
              for site in run_space.sites for _ in range(site.dims)]
    variants: list[tuple[str, tuple[bool, ...] | None]] = [("all coordinates", None)]
    if any(shared) and not all(shared):
        variants.append(("shared channel groups kept whole", tuple(not s for s in shared)))
    return variants


def _rule_plan(run: _Run, rule: OneRate) -> Plan:
    return run.space.decode(rule.point(run.space.dim)) if rule.rate else run.identity


def points_cost(run: _Run, xs: np.ndarray) -> np.ndarray:
    """The cost on the target, by the search's cost model, of each point of the search space (rows of `xs`)."""
    plans = run.space.decode_batch(np.atleast_2d(xs))
    return run.cost_model.estimate(plan_workloads(run.inputs.analysis, plans, batch=run.inputs.target.batch_size))


def _plan_cost(run: _Run, plan: Plan) -> float:
    """`plan`'s cost on the target by the search's cost model, as a fraction of the baseline's."""
    workload = plan_workloads(run.inputs.analysis, [plan], batch=run.inputs.target.batch_size)
    return float(run.cost_model.estimate(workload)[0]) / run.score.baseline_cost


def _one_rate_facts(run: _Run, rule: OneRate, variant: str, *, evaluations: int) -> OneRateFacts:
    """The rule's plan priced and, on TEST, scored by substitution (one evaluation; it is never lowered)."""
    inputs, evaluator = run.inputs, run.evaluator
    plan = _rule_plan(run, rule)
    macs = [workload_macs(w) for w in plan_workloads(inputs.analysis, [run.identity, plan])]
    # Rate 0 is the baseline: its TEST accuracy is the baseline model's, reported under Result.
    test = evaluator.accuracy_on(plan, inputs.test) if inputs.test is not None and rule.rate else None
    stage = run.stage  # --rounds: MACs of the original model's; rate 0 is the round's starting model
    start = run.score.baseline_accuracy if stage is None or stage.start_accuracy is None else stage.start_accuracy
    return OneRateFacts(
        rate=rule.rate, macs_ratio=macs[1] / (macs[0] if stage is None else stage.original_macs), cost_ratio=_plan_cost(run, plan),
        top1_val=start if rule.accuracy is None else rule.accuracy,
        top1_test=None if test is None else float(test), bn_recalibrated=evaluator.recalibrates(plan),
        evaluations=evaluations, complete=rule.complete, variant=variant,
    )


def _with_rule_at_searched_cost(run: _Run, facts: OneRateFacts | None, plan: Plan) -> OneRateFacts | None:
    """`facts` with the rule at the searched plan's cost: the rate (same variant) whose plan's cost is nearest,
    found on cost alone, then scored on SEARCH-VAL and TEST (two evaluations, outside the search's
    budget). At equal cost the search has nothing to hide behind a cheaper plan's lower accuracy. Only when
    the searched plan is cheaper than the rule (otherwise the rule itself is the comparison)."""
    if facts is None or facts.at_searched_cost is not None or plan.is_identity or run.stage is not None:
        return facts
    target = _plan_cost(run, plan)
    mask = dict(_one_rate_variants(run.space)).get(facts.variant)
    if target >= facts.cost_ratio - 1e-9:
        return facts
    def cost(rate: float) -> float:
        return _plan_cost(run, _rule_plan(run, OneRate(rate, None, 0, [], mask=mask)))

    # cost(lo) > target >= cost(hi); one rate moves every group a unit at a time, so the cost moves in steps
    # (about 2 points of MACs on ResNet-56): of the two rates either side of the target, the nearer in cost.
    lo, hi = facts.rate, 1.0
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
    rate = hi if target - cost(hi) <= cost(lo) - target else lo
    rule_plan = _rule_plan(run, OneRate(rate, None, 0, [], mask=mask))
    val = float(run.evaluator.accuracy_on(rule_plan, run.inputs.search_val))
    at_cost = _one_rate_facts(run, OneRate(rate, val, 0, [], mask=mask), facts.variant, evaluations=0)
    return dataclasses.replace(facts, at_searched_cost=at_cost)


def _characterise_boundary(run: _Run, accuracies: BudgetedAccuracy, rule: OneRate) -> Boundary:
    """Per-site bisection upward from the rule's point (feasible for each site alone), grouped on large models."""
    cfg, space, progress = run.cfg, run.space, run.progress
    t = time.perf_counter()
    groups = boundary_groups(space.levels, cfg.boundary_groups)
    grouped = f" in {len(groups)} groups of neighbours (--boundary-groups)" if any(len(g) > 1 for g in groups) else ""
    progress.step(f"boundary characterisation: bisection on {space.dim} coordinates ({len(space.sites)} sites)"
                  f"{grouped}, from the one-rate rule's level")
    # On resume every evaluation below is a cache hit, so this costs nothing.
    # A bisection round can run for an hour on a CPU, so it shows a bar. Each call is
    # one per-site round; the diagonal's single points that follow never fill a bar.
    rounds = itertools.count(1)

    def bisection_accuracies(xs: np.ndarray) -> np.ndarray:
        return accuracies(xs, f"bisection round {next(rounds)}/{cfg.boundary_rounds}")

    boundary = characterise_boundary(bisection_accuracies, space.levels, run.score.accuracy_threshold,
                                     start=rule.point(space.dim), rounds=cfg.boundary_rounds,
                                     max_groups=cfg.boundary_groups)
    run.ws.save_json("boundary.json", boundary.as_dict())
    run.timings["boundary_s"] = time.perf_counter() - t
    progress.step(
        f"boundary: mean theta {boundary.theta.mean():.2f}, feasible diagonal scale {boundary.diagonal_scale:.2f} "
        f"({boundary.evaluations} evaluations{'' if boundary.complete else '; --max-evaluations reached, stopped early'})"
    )
    return boundary


class _Objective:
    """The search's objective: score a batch of x from its (cached) accuracy and its cost on the target.

    It also keeps the cheapest feasible cost seen so far, which the progress bar shows.
    """

    def __init__(self, run: _Run, accuracies: CachedAccuracy) -> None:
        self.run, self.accuracies = run, accuracies
        self.best_feasible_ratio = 1.0

    def __call__(self, xs: np.ndarray):
        score = self.run.score
        acc = self.accuracies(xs)
        costs = self.costs(xs)
        ratios = costs / score.baseline_cost
        feasible = score.feasible(acc)
        if feasible.any():
            self.best_feasible_ratio = min(self.best_feasible_ratio, float(np.min(ratios[feasible])))
        infos = [
            {"accuracy": float(a), "cost": float(c), "cost_ratio": float(r), "feasible": bool(ok)}
            for a, c, r, ok in zip(acc, costs, ratios, feasible)
        ]
        return score(acc, costs), infos

    def costs(self, xs: np.ndarray) -> np.ndarray:
        """Each point's cost on the target: exact and needs no evaluation, so the `adans` sampler prices its pool."""
        return points_cost(self.run, xs)

    def show(self, summary) -> None:
        """Progress after each AdaNS iteration."""
        cfg = self.run.cfg
        self.run.progress.bar(
            summary.iteration + 1,
            cfg.iterations,
            f"best f {summary.best_f:.3f}  alpha {summary.alpha:.2f}  best feasible {cfg.cost} "
            f"{self.best_feasible_ratio:.1%}  ({self.accuracies.rate:.1f} eval/s)",
        )


def _adans(run: _Run, boundary: Boundary, rule: OneRate, objective: _Objective, budget: BudgetedAccuracy):
    """AdaNS in the boundary's box, its first batch led by the one-rate rule's point (so it never ends worse)."""
    cfg, space = run.cfg, run.space
    t = time.perf_counter()
    start = rule.point(space.dim) if rule.rate else None  # rate 0 is the baseline: nothing to start from
    init = initial_batch(boundary, cfg.samples, np.random.default_rng([cfg.seed, 2**31 - 1]), start=start)
    if budget.affordable(init) == 0:
        raise ConfigError(
            f"--max-evaluations {cfg.max_evaluations} was spent before the search could evaluate a candidate; "
            "raise it and --resume (what was evaluated is kept)"
        )
    # The box holds every feasible point the boundary knows of: up to where each coordinate alone is known
    # infeasible (theta, a lower bound after one probe per site, would cut them off), and the rule's point.
    upper = boundary.box() if start is None else np.maximum(boundary.box(), start)
    # Cut short by --max-evaluations, the rule and the boundary go on when a resume raises the cap, changing the
    # first batch and the box a journal is bound to; so until both are complete the search keeps no journal (what
    # it evaluated is in the cache, so running it again costs nothing).
    journal = run.ws.history_path if rule.complete and boundary.complete else None
    result = maximize(
        objective,
        space.dim,
        sampler=cfg.sampler,
        samples=cfg.samples,
        iterations=cfg.iterations,
        seed=cfg.seed,
        lower=np.zeros(space.dim),
        upper=upper,
        init=init,
        journal=journal,
        callback=objective.show,
        budget=None if cfg.max_evaluations is None else budget,
        score_parts=ScoreParts(cost=objective.costs, score=run.score, design_key=space.states),
    )
    run.progress.done()
    run.timings["search_s"] = time.perf_counter() - t
    return result


def _budget_line(run: _Run) -> str:
    """The most evaluations this compile will spend, and about how long, said before it starts."""
    cfg, inputs = run.cfg, run.inputs
    boundary = max_boundary_evaluations(run.space.levels, rounds=cfg.boundary_rounds, max_groups=cfg.boundary_groups)
    search = cfg.samples * cfg.iterations
    rule = ONE_RATE_ROUNDS * len(_one_rate_variants(run.space))
    total = rule + boundary + search
    capped = cfg.max_evaluations is not None and cfg.max_evaluations < total
    # A candidate costs the baseline's pass over the searched images plus, when BatchNorm is re-estimated,
    # a pass over the calibration images.
    calibration = len(inputs.calibration) if inputs.calibration is not None and run.evaluator.batchnorms else 0
    per_evaluation = (run.timings["baseline_evaluation_s"] * (1 + calibration / len(inputs.search_val))
                      / max(run.executor.workers, 1))
    minutes = min(total, cfg.max_evaluations or total) * per_evaluation / 60
    return (
        f"budget: at most {rule} one-rate rule + {boundary} boundary + {search} search = {total} evaluations "
        f"(--samples {cfg.samples} x --iterations {cfg.iterations})"
        + (f", capped at {cfg.max_evaluations} by --max-evaluations" if capped else "")
        + f", about {minutes:.0f} min at {per_evaluation:.1f} s each (the baseline's own evaluation time"
        f"{', plus BatchNorm re-estimation' if calibration else ''}); evaluations already in OUT's cache cost nothing"
        + (" but count towards the cap" if cfg.max_evaluations is not None else "")
    )


@dataclass(frozen=True)
class SearchOutcome:
    """What the boundary characterisation and AdaNS produced."""

    boundary: Boundary
    result: SearchResult
    stats: dict  # evaluated, cached, eval_seconds, executor, precision
    one_rate: OneRateFacts | None = None


@dataclass(frozen=True)
class SelectedPlan:
    """The plan to emit, the search sample it came from (None: the baseline), and why, when that needs saying."""

    best: Evaluation | None
    plan: Plan
    notes: tuple[str, ...] = ()
    selection: HoldoutSelection | None = None  # with --holdout: the re-scoring on held-back VAL that chose it


@dataclass(frozen=True)
class EmittedModels:
    """baseline.onnx (the simplified original) and model.onnx (with its validation and pass log)."""

    baseline: onnx.ModelProto
    compressed: Emitted


@dataclass(frozen=True)
class FinetuneOutcome:
    facts: FinetuneFacts
    models: EmittedModels  # the fine-tuned compressed model; the baseline is the original either way
    accuracies: Accuracies
    before_finetune: onnx.ModelProto
    baseline_finetuned: onnx.ModelProto | None


def _select_plan(run: _Run, result: SearchResult) -> SelectedPlan:
    """The best feasible candidate, or the baseline when none is feasible and cheaper (with a note saying why).

    With --holdout the search's best few feasible, cheaper plans are scored
    again on the held-back part of VAL and the plan is chosen there
    (`_select_on_holdout`); the baseline cases below stay as they are.
    """
    cfg, identity = run.cfg, run.identity
    feasible = [e for e in result.history if e.info.get("feasible")]
    best = max(feasible, key=lambda e: e.f) if feasible else None
    if best is None:
        return _baseline_on_holdout(run, SelectedPlan(
            None, identity, ("no candidate met the accuracy threshold; the emitted model is the uncompressed baseline",)))
    if best.info["cost_ratio"] >= _start_cost_ratio(run):
        # Possible with a latency cost: channel counts off the runtime's SIMD blocking
        # can make every pruned candidate slower than the original.
        return _baseline_on_holdout(run, SelectedPlan(None, identity, (
            f"no candidate that met the accuracy threshold costs less than the baseline (the best costs "
            f"{best.info['cost_ratio']:.1%} of it by the {cfg.cost} model); the emitted model is the uncompressed baseline"
            + ("; try --round-to 8 (or 16), which keeps channel counts the runtime runs fast" if cfg.cost == "latency" else ""),
        )))
    if run.inputs.holdout is None:
        return SelectedPlan(best, run.space.decode(best.x))
    return _select_on_holdout(run, [e for e in feasible if e.info["cost_ratio"] < _start_cost_ratio(run)])


HOLDOUT_CACHE = "holdout_evaluations.jsonl"  # in OUT/state; valid for one split (--holdout, --seed, VAL: not resumable)


def _holdout_accuracies(run: _Run, plans: list[tuple[str, Plan]]) -> list[float]:
    """Top-1 on HOLDOUT-VAL of each (cache key, plan), scored as the search scores (BatchNorm re-estimated for
    compressed plans); kept in OUT/state so a resume does not evaluate them again."""
    cache = EvaluationCache(run.ws.state / HOLDOUT_CACHE)
    for key, plan in plans:
        if cache.get(key) is None:
            cache.put_many([{"key": key, "accuracy": float(run.evaluator.accuracy_on(plan, run.inputs.holdout))}])
    return [float(cache.get(key)["accuracy"]) for key, _ in plans]


def _reference_holdout(run: _Run, own: float) -> float:
    """The baseline accuracy the holdout threshold is measured from: the search's starting model's own (`own`),
    but in a later round of --rounds the original model's, as on SEARCH-VAL."""
    stage = run.stage
    if stage is None or stage.reference is None or stage.reference.holdout is None:
        return own
    return stage.reference.holdout


def _start_accuracy(run: _Run) -> float:
    """The search's starting model on the images it scores (what is emitted when no plan is): the score's
    baseline, but in a later round of --rounds (whose score is the original's) the round's starting model."""
    stage = run.stage
    return run.score.baseline_accuracy if stage is None or stage.start_accuracy is None else stage.start_accuracy


def _allowed_drop(run: _Run) -> float:
    """The accuracy drop the constraint allows, in points (an absolute threshold allows its distance to the baseline)."""
    cfg, score = run.cfg, run.score
    if cfg.accuracy_threshold is None:
        return DEFAULT_MAX_DROP if cfg.max_accuracy_drop is None else cfg.max_accuracy_drop
    return score.baseline_accuracy - score.accuracy_threshold


def _holdout_facts(run: _Run, baseline: float, threshold: float, candidates: tuple[RescoredPlan, ...],
                   outcome: str) -> HoldoutSelection:
    inputs = run.inputs
    return HoldoutSelection(
        fraction=run.cfg.holdout, search_images=len(inputs.search_val), holdout_images=len(inputs.holdout),
        rescore_top=run.cfg.rescore_top, baseline_search_accuracy=_start_accuracy(run),
        baseline_holdout_accuracy=baseline, search_threshold=run.score.accuracy_threshold, holdout_threshold=threshold,
        candidates=candidates, outcome=outcome,
        calibration_from_search_part=inputs.calibration is not None and not run.cfg.calibration_data,
    )


def _baseline_on_holdout(run: _Run, selected: SelectedPlan) -> SelectedPlan:
    """The baseline emitted before any re-scoring: with --holdout, its held-back accuracy too, for the report."""
    if run.inputs.holdout is None:
        return selected
    (baseline,) = _holdout_accuracies(run, [("baseline", run.identity)])
    threshold = holdout_threshold(_reference_holdout(run, baseline), allowed_drop=_allowed_drop(run), absolute=run.cfg.accuracy_threshold)
    return dataclasses.replace(selected, selection=_holdout_facts(run, baseline, threshold, (), "baseline"))


# When none of the --rescore-top best plans holds on HOLDOUT-VAL, the next --rescore-top are re-scored among
# plans whose SEARCH-VAL accuracy clears the threshold by these fractions of the allowed drop: the best plans
# sit on the threshold, where the held-back images' own noise (a point at 300 images) fails them all, and
# emitting the uncompressed baseline instead is the worst answer a compile can give (issue 13, seen on ResNet-56).
RESCORE_MARGINS = (0.0, 0.25, 0.5, 0.75)


def _rescore_batch(run: _Run, ranked: list[Evaluation], margin: float, exclude: set[int]) -> list[int]:
    """Positions in `ranked` (best first) of the next --rescore-top plans at least `margin` points above the
    SEARCH-VAL threshold, skipping those in `exclude`."""
    floor = run.score.accuracy_threshold + margin
    eligible = [r for r, e in enumerate(ranked) if r not in exclude and float(e.info["accuracy"]) >= floor]
    return eligible[:run.cfg.rescore_top]


def _select_on_holdout(run: _Run, feasible: list[Evaluation]) -> SelectedPlan:
    """Re-score the --rescore-top best distinct feasible plans on HOLDOUT-VAL and emit the best there.

    The search's best on SEARCH-VAL is the luckiest of many noisy candidates
    there; images it was not selected on measure it without that luck. If none
    holds there, plans with more margin on SEARCH-VAL are tried (RESCORE_MARGINS).
    """
    cfg, space, holdout = run.cfg, run.space, run.inputs.holdout
    keys = [EvaluationCache.key(space.states(e.x)) for e in feasible]
    ranked = top_distinct(keys, [e.f for e in feasible], len(feasible))  # every distinct plan, best first
    rank_of = {i: r + 1 for r, i in enumerate(ranked)}
    drop = _allowed_drop(run)
    tried: list[int] = []
    for margin in RESCORE_MARGINS:
        batch = _rescore_batch(run, [feasible[i] for i in ranked], margin * drop, exclude={rank_of[i] - 1 for i in tried})
        if not batch:
            continue
        tried += [ranked[r] for r in batch]
        run.progress.step(f"re-scoring {len(batch)} feasible plans on the {len(holdout)} held-back VAL images"
                          + (f" (SEARCH-VAL at least {margin * drop:g} points above the threshold)" if margin else ""))
        candidates = [feasible[i] for i in tried]
        baseline, *accuracies = _holdout_accuracies(
            run, [("baseline", run.identity)] + [(keys[i], space.decode(feasible[i].x)) for i in tried])
        reference = _reference_holdout(run, baseline)  # --rounds: the original model's, in every round
        choice = choose_on_holdout(accuracies, [e.info["cost"] for e in candidates], run.score,
                                   baseline_holdout=reference, allowed_drop=drop, absolute_threshold=cfg.accuracy_threshold)
        if choice.outcome == "holdout":
            break
    rescored = tuple(
        RescoredPlan(search_rank=rank_of[i], iteration=e.iteration, search_accuracy=float(e.info["accuracy"]),
                     holdout_accuracy=a, cost_ratio=float(e.info["cost_ratio"]), search_score=e.f, holdout_score=f,
                     feasible_on_holdout=ok, chosen=j == choice.chosen)
        for j, (i, e, a, f, ok) in enumerate(zip(tried, candidates, accuracies, choice.scores, choice.feasible))
    )
    selection = _holdout_facts(run, baseline, choice.score.accuracy_threshold, rescored, choice.outcome)
    where = f"the {len(holdout)} held-back VAL images"
    threshold = f"{choice.score.accuracy_threshold:.2f}%" + (
        "" if cfg.accuracy_threshold is not None else f" (the baseline's {reference:.2f}% there less {drop:g} points)")
    if choice.chosen is None:
        return SelectedPlan(None, run.identity, (
            f"none of the {len(rescored)} plans of the search re-scored met the accuracy threshold {threshold} on {where} "
            f"(the most accurate scored {max(accuracies):.2f}% there); the emitted model is the uncompressed baseline",
        ), selection)
    chosen = rescored[choice.chosen]
    notes = []
    if choice.outcome == "fallback":
        notes.append(
            f"none of the {len(rescored)} plans of the search re-scored met the accuracy threshold {threshold} on {where} "
            f"(the baseline scores {baseline:.2f}% there); the emitted plan (search rank {chosen.search_rank}) is the "
            f"most accurate there, {chosen.holdout_accuracy:.2f}%, within the allowed drop of {drop:.2f} points"
        )
    elif chosen.search_rank != 1:
        first = rescored[0]
        notes.append(
            f"the emitted plan is the search's rank {chosen.search_rank} ({chosen.search_accuracy:.2f}% on SEARCH-VAL, "
            f"{chosen.holdout_accuracy:.2f}% on {where}, cost {chosen.cost_ratio:.1%}), not its best "
            f"({first.search_accuracy:.2f}% on SEARCH-VAL but {first.holdout_accuracy:.2f}% on the held-back images, "
            f"cost {first.cost_ratio:.1%}{'' if first.feasible_on_holdout else ', below the threshold there'})"
        )
    best = candidates[choice.chosen]
    return SelectedPlan(best, space.decode(best.x), tuple(notes), selection)


def _emit(run: _Run, search: SearchOutcome, selected: SelectedPlan, evaluator_notes: tuple[str, ...], *,
          baseline: onnx.ModelProto | None = None, report_extra: dict | None = None, finetune=None) -> dict:
    """Lower, validate, measure (and fine-tune if asked) the chosen plan; write OUT and the report.

    --budgets (pipeline/family.py) emits each member through this into its own folder: `baseline` is the
    simplified original made once for all of them (no baseline.onnx is then written beside each member), and
    `report_extra` is merged into the member's report, and `finetune` (a stand-in for `_finetune`, called as it
    is) gives the member its share of the family's joint fine-tuning."""
    cfg, inputs, evaluator, progress, timings = run.cfg, run.inputs, run.evaluator, run.progress, run.timings
    plan = selected.plan
    # --rounds: baseline.onnx, MACs, the layer and group tables and the predicted latency are of the original
    # model, and the plan they read is the composition of every round's so far (`stage.compose`).
    stage = run.stage
    original = inputs if stage is None else stage.original
    progress.step("lowering the best plan and validating it numerically")
    t = time.perf_counter()
    models = EmittedModels(
        baseline if baseline is not None else simplify(original.onnx_model) if stage is None else stage.baseline_onnx,
        lower_plan(inputs.onnx_model, inputs.analysis, plan, run.transform, evaluator, inputs.val.x, threads=inputs.threads),
    )
    report_plan, report_identity = plan, run.identity
    if stage is not None:
        report_plan, report_identity = stage.compose(plan, inputs.analysis, models.compressed.pre_simplify), stage.original_identity
    timings["lower_validate_s"] = time.perf_counter() - t

    progress.step("measuring accuracy of the emitted ONNX models")
    accuracies = _accuracies(cfg, inputs, evaluator, models, plan)
    finetuned = None
    if cfg.finetune_epochs:
        t = time.perf_counter()
        finetuned = (finetune or _finetune)(cfg, inputs, models, run.ws, progress, accuracies, stage=stage)
        models, accuracies = finetuned.models, finetuned.accuracies
        timings["finetune_s"] = time.perf_counter() - t
    measured = None
    if not cfg.no_measure and (stage is None or stage.final):  # --rounds: the last round's model is measured
        progress.step(f"measuring speed in ONNX Runtime ({inputs.threads} threads, batches {list(cfg.measure_batches)})")
        t = time.perf_counter()
        measured = measured_speedup(
            models.baseline, models.compressed.model, inputs.val.image_shape, tuple(cfg.measure_batches), threads=inputs.threads,
            time_budget_s=cfg.measure_budget_s,
        )
        timings["measure_s"] = time.perf_counter() - t
    int8 = None  # --quantize int8 or an int8 plan: OUT/model_int8.onnx (with --rounds, of the last round's model)
    if wants_int8(cfg, plan) and (stage is None or stage.final):
        int8 = emit_int8(cfg, inputs, models.baseline, models.compressed.model, accuracies, progress, timings, plan)
    latency, latency_notes = _predicted_latency(cfg, original, run.cost_model, report_identity, report_plan)
    notes = list(evaluator_notes) + list(selected.notes) + ([] if stage is None else list(stage.notes()))
    notes.extend(n for n in latency_notes if n not in notes)
    timings["total_s"] = time.perf_counter() - run.t0

    out = run.ws.root  # OUT, or the sibling an --overwrite is built in (swapped in when this returns)
    # --rounds: OUT/rounds/<k>/ holds no copy of the original model; --budgets: nor does OUT/budgets/<B>/.
    if (stage is None or stage.final) and baseline is None:
        atomic_write_bytes(out / "baseline.onnx", models.baseline.SerializeToString())
    atomic_write_bytes(out / "model.onnx", models.compressed.model.SerializeToString())
    if int8 is not None:
        atomic_write_bytes(out / "model_int8.onnx", int8.model.SerializeToString())
    else:  # a resumed run's earlier --quantize int8 must not leave a model the report does not describe
        (out / "model_int8.onnx").unlink(missing_ok=True)
    atomic_write_text(out / "plan.json", report_plan.to_json())
    if stage is not None:
        stage.write_round_files(out, plan, models.compressed)
    if finetuned is not None:
        atomic_write_bytes(out / "model_before_finetune.onnx", finetuned.before_finetune.SerializeToString())
        if finetuned.baseline_finetuned is not None:
            atomic_write_bytes(out / "baseline_finetuned.onnx", finetuned.baseline_finetuned.SerializeToString())
    outcome = CompileOutcome(
        baseline=_model_facts(models.baseline, inputs.val.image_shape, run.cost_model),
        compressed=_model_facts(models.compressed.model, inputs.val.image_shape, run.cost_model),
        accuracies=accuracies,
        validation=models.compressed.validation.as_dict(),
        pass_log=models.compressed.pass_log,
        layers=tuple(plan_layer_table(original.analysis, report_plan)),
        groups=tuple(plan_group_table(original.analysis, report_plan)),
        measured=measured,
        latency=latency,
        finetuning=None if finetuned is None else finetuned.facts,
        int8=None if int8 is None else int8.facts,
    )
    rounds = None if stage is None else (*stage.previous, stage.facts(outcome, search, evaluations=len(run.cache.values),
                                                                  minutes=timings["total_s"] / 60))
    report = report_writer.build_report(
        cfg, _subject(original), _search_facts(run, search, selected, evaluator.recalibrates(plan)), outcome,
        notes=notes, timings=timings, rounds=rounds,
    )
    report.update(report_extra or {})
    report_writer.write_report(out, report, search.result.iterations)
    return report


def _subject(inputs: _Inputs) -> CompileSubject:
    return CompileSubject(
        description=inputs.model_description,
        input_shape=tuple(inputs.val.image_shape),
        target=inputs.target.as_dict(),
        val_images=len(inputs.val),
        test_images=None if inputs.test is None else len(inputs.test),
        preprocessing=inputs.preprocessing.as_dict(),
        versions=report_writer.environment_versions(),
    )


def _search_facts(run: _Run, search: SearchOutcome, selected: SelectedPlan, recalibrated: bool) -> SearchFacts:
    cfg, inputs, score, result, stats = run.cfg, run.inputs, run.score, search.result, search.stats
    best = selected.best
    return SearchFacts(
        methods=tuple(report_writer.space_methods(run.space)),
        sites=tuple(run.space.names),
        cost=run.cost_model.describe(),
        score=score.as_dict(),
        accuracy_threshold=score.accuracy_threshold,
        baseline_accuracy=_start_accuracy(run),
        boundary=search.boundary.as_dict(),
        evaluations=stats["evaluated"],
        cache_hits=stats["cached"],
        eval_seconds=stats["eval_seconds"],
        executor=stats.get("executor"),
        precision=stats.get("precision"),
        resumed_from=result.resumed_from,
        best=None if best is None else {"f": best.f, "iteration": best.iteration, **best.info, **_holdout_of(selected)},
        feasible_samples=sum(1 for e in result.history if e.info.get("feasible")),
        history_samples=len(result.history),
        iterations=tuple(result.iterations),
        selection=selected.selection,
        one_rate=_with_rule_at_searched_cost(run, search.one_rate, selected.plan),
        images=stats.get("images"),
        early_rejected=stats.get("rejected", 0),
        early_rejection=_rejection_name(run.evaluator.early_rejection),
        bn_recalibration=BatchNormRecalibration(
            images=0 if inputs.calibration is None else len(inputs.calibration),
            source=cfg.calibration_data or (cfg.data if inputs.calibration is not None else None),
            from_val=inputs.calibration is not None and not cfg.calibration_data,
            applied_to_emitted=recalibrated,
        ),
    )


def _rejection_name(rule) -> str | None:
    """'exact' or 'confidence 0.999' for the report (its notes carry the full description); None when off."""
    if rule is None:
        return None
    return "exact" if rule.confidence is None else f"confidence {rule.confidence:g}"


def _holdout_of(selected: SelectedPlan) -> dict:
    """The emitted sample's top-1 on HOLDOUT-VAL, beside its search `accuracy` (on SEARCH-VAL), when there is one."""
    chosen = None if selected.selection is None else selected.selection.chosen
    return {} if chosen is None else {"holdout_accuracy": chosen.holdout_accuracy}


def _model_facts(model: onnx.ModelProto, image_shape: tuple[int, ...], cost_model) -> ModelFacts:
    """MACs, parameters and search cost of an emitted ONNX model (its own graph, as written), and its storage."""
    work = graph_workload(Graph.from_model(model, image_shape))
    return ModelFacts(workload_macs(work), workload_params(work), float(cost_model.estimate([work])[0]), storage(model))


def _accuracies(cfg: CompileConfig, inputs: _Inputs, evaluator, models: EmittedModels, plan: Plan) -> Accuracies:
    """Top-1 of the emitted ONNX models on VAL (and TEST), and of the plan with trained BatchNorm statistics."""
    splits = {}
    for split, data in (("val", inputs.val), ("test", inputs.test)):
        if data is None:
            continue
        baseline = _top1(models.baseline, data, threads=inputs.threads, batch_size=cfg.batch_size)
        compressed = _top1(models.compressed.model, data, threads=inputs.threads, batch_size=cfg.batch_size)
        # What the same plan scores with the trained statistics, for the report.
        # (of the float model.onnx: an int8 plan's model_int8.onnx is scored in pipeline/int8.py)
        without = evaluator.accuracy_on(plan.float_part, data, recalibrate=False) if evaluator.recalibrates(plan) else None
        splits[split] = SplitAccuracy(baseline, compressed, compressed_without_bn_recalibration=without)
    return Accuracies(**splits)


def _predicted_latency(
    cfg: CompileConfig, inputs: _Inputs, cost_model, identity: Plan, plan: Plan
) -> tuple[PredictedLatency | None, tuple[str, ...]]:
    """Baseline and emitted model latency on the target, as the latency cost model predicts it (Table IV), and notes."""
    model, why_not = report_latency_model(cost_model, inputs.target, cfg.lut)
    if model is None:
        return None, (why_not,)
    totals, layers, why_not = predicted_latency(model, inputs.analysis, [identity, plan], inputs.target.batch_size)
    if why_not:
        return None, (why_not,)
    described = model.describe()
    latency = PredictedLatency(
        baseline_ms=totals[0], compressed_ms=totals[1], layers_ms=(layers[0], layers[1]),
        source=described["latency_source"], model=described, reduces_to_theoretical=_reduces_to_macs(model),
    )
    return latency, tuple(described["notes"])


def _reduces_to_macs(model) -> str | None:
    """Why the predicted speedup is the theoretical one in disguise, or None: a roofline without a bandwidth.

    Then every kernel costs FLOPs / peak (plus a constant per kernel), so
    the predicted ratio is the MACs ratio and the column adds nothing.
    """
    roofline = getattr(model, "roofline", None)
    if getattr(model, "table", None) is not None or roofline is None or roofline.bandwidth_gbs:
        return None
    why = (f"the roofline has no memory bandwidth for target `{model.target.id}`, so it prices every kernel "
           f"by its FLOPs at peak ({roofline.peak_gflops:g} GFLOP/s)")
    if roofline.overhead_ms:
        return why + f" plus a fixed {roofline.overhead_ms * 1e3:g} us, which is MACs plus a per-kernel constant"
    return why + ", which reduces to MACs"


def _finetune(cfg: CompileConfig, inputs: _Inputs, models: EmittedModels, ws: Workspace, progress: Progress,
              accuracies: Accuracies, stage=None) -> FinetuneOutcome:
    """Fine-tune the emitted model (and, if asked, the baseline) on TRAIN, and measure them again.

    --rounds (`stage`): the round's epochs; the teacher and the baseline are the original model, and the
    baseline is fine-tuned once, in the last round."""
    train = inputs.train
    original = inputs if stage is None else stage.original
    config = FinetuneConfig(
        epochs=cfg.finetune_epochs if stage is None else stage.epochs, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size,
        distill=cfg.distill, seed=cfg.seed,
    )
    teacher = original.module if cfg.distill else None
    emitted = models.compressed
    runs = [("compressed", emitted)]
    if cfg.finetune_baseline and (stage is None or stage.final):
        runs.append(("baseline", None))
    outputs, logs = {}, {}
    splits = {"val": accuracies.val, "test": accuracies.test}
    for name, source in runs:
        pre = source.pre_simplify if source is not None else original.onnx_model
        progress.step(f"fine-tuning the {name} model: {config.epochs} epochs on {len(train):,} images ({train.describe()})")
        done = finetune_model(
            pre, train, config, image_shape=inputs.val.image_shape, check_images=inputs.val.x, teacher=teacher,
            checkpoint=ws.state / f"finetune_{name}.pt", device=cfg.device, threads=inputs.threads,
            pass_log=source.pass_log if source is not None else [],
            on_epoch=lambda e, loss, acc: progress.bar(e, config.epochs, f"loss {loss:.4f}  train top-1 {acc:.2f} %"),
        )
        progress.done()
        outputs[name] = done
        logs[name] = FinetuneRun(
            train_loss=done.log.train_loss, train_top1=done.log.train_top1, resumed_from_epoch=done.log.resumed_from_epoch,
            interpreter_check_relative_diff=done.self_check, validation=done.emitted.validation.as_dict(),
            epoch_seconds=done.log.epoch_seconds, images_per_s=done.log.images_per_s(len(train)),
        )
        for split, data in (("val", inputs.val), ("test", inputs.test)):
            if data is None:
                continue
            after = _top1(done.emitted.model, data, threads=inputs.threads, batch_size=cfg.batch_size)
            if name == "compressed":
                splits[split] = dataclasses.replace(splits[split], compressed=after, compressed_before_finetune=splits[split].compressed)
            else:
                splits[split] = dataclasses.replace(splits[split], baseline_finetuned=after)
    facts = FinetuneFacts(config.__dict__, len(train), ", ".join(training_sources(cfg.train_data)), logs["compressed"],
                          logs.get("baseline"))
    # Speed is compared against the original baseline either way (fine-tuning does not change speed).
    return FinetuneOutcome(
        facts, EmittedModels(models.baseline, outputs["compressed"].emitted), Accuracies(**splits),
        before_finetune=emitted.model,
        baseline_finetuned=outputs["baseline"].emitted.model if "baseline" in outputs else None,
    )


def _top1(model: onnx.ModelProto, data: ImageSet, *, threads: int, batch_size: int) -> float:
    return top1(model, data.x.numpy(), data.y.numpy(), threads=threads, batch_size=batch_size)
