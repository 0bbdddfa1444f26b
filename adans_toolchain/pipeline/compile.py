"""The compile pipeline: load -> analyse -> search -> lower -> validate -> measure -> report.

Each step lives in its own module; this one only wires them together, in
the order of ARCHITECTURE.md's data flow, and decides what is written to OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from targets import Target, UnknownTargetError, load_target
from targets.host import usable_cores

from adans_toolchain.reporting import report as report_writer
from adans_toolchain.analysis.channels import ChannelAnalysis, analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import plan_workloads
from adans_toolchain.search.boundary import characterise_boundary, initial_batch
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.costing import predicted_latency, report_latency_model, search_cost_model
from adans_toolchain.finetune.emit import finetune_model
from adans_toolchain.lowering.emit import lower_plan, simplify
from adans_toolchain.errors import ConfigError, DataError, InputError
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.evaluation.executors import EvaluatorSpec, evaluation_chunk, make_executor
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text
from adans_toolchain.frontend.data import IMAGENET_MEAN, IMAGENET_STD, ImageSet, Preprocessing, load_image_set
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.frontend.onnx_model import OnnxModel, check_onnx_runs_on
from adans_toolchain.evaluation.onnx_runtime import OnnxEvaluator
from adans_toolchain.finetune.train import FinetuneConfig
from adans_toolchain.runtime.measure import measured_speedup
from adans_toolchain.runtime.sessions import top1
from adans_toolchain.plan import Plan
from adans_toolchain.pipeline.progress import Progress
from adans_toolchain.search.scoring import AdaNSScore
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.search import SAMPLER_NAMES, maximize
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from adans_toolchain.pipeline.workspace import EvaluationCache, Workspace

DEFAULT_MAX_DROP = 2.0


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


def check_config(cfg: CompileConfig) -> tuple[str, ...]:
    """Validate the settings; returns the canonical method list."""
    methods = parse_methods(cfg.methods)
    if methods == ("pn",) and cfg.cost in ("macs", "latency"):
        raise ConfigError(
            f"unstructured pruning alone does not change {'MACs' if cfg.cost == 'macs' else 'latency'} "
            "(dense kernels run the zeros); search it with --cost memory, or combine it with ps or d"
        )
    if cfg.sampler not in SAMPLER_NAMES:
        raise ConfigError(f"unknown sampler '{cfg.sampler}'; choose one of {', '.join(SAMPLER_NAMES)}")
    if cfg.accuracy_threshold is not None and cfg.max_accuracy_drop is not None:
        raise ConfigError("give either --accuracy-threshold or --max-accuracy-drop, not both")
    if cfg.max_accuracy_drop is not None and cfg.max_accuracy_drop < 0:
        raise ConfigError("--max-accuracy-drop must be >= 0 points")
    if cfg.accuracy_threshold is not None and not 0 < cfg.accuracy_threshold <= 100:
        raise ConfigError("--accuracy-threshold is a top-1 percentage in (0, 100]")
    if cfg.round_to is not None and cfg.round_to < 1:
        raise ConfigError("--round-to must be a positive channel count (e.g. 8)")
    if cfg.bn_recalibrate < 0:
        raise ConfigError("--bn-recalibrate is a number of images (0 turns it off)")
    if cfg.samples < 2 or cfg.iterations < 1:
        raise ConfigError("--samples must be >= 2 and --iterations >= 1")
    if cfg.priority not in ("taylor", "l1"):
        raise ConfigError("--priority must be taylor or l1")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but PyTorch sees no CUDA device; use --device cpu")
    if (cfg.mean is None) != (cfg.std is None) or (cfg.mean and len(cfg.mean) != len(cfg.std)):
        raise ConfigError("give --mean and --std together, with one value per image channel each")
    return methods


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
    loaded = load_model(cfg.model, cfg.arch, cfg.trust_pickle)
    explicit = cfg.mean is not None
    val = load_image_set(cfg.data, prep, limit=cfg.val_limit, explicit_normalisation=explicit)
    test = load_image_set(cfg.test_data, prep, explicit_normalisation=explicit) if cfg.test_data else None
    calibration = None
    if cfg.bn_recalibrate > 0:
        source = load_image_set(cfg.calibration_data, prep, explicit_normalisation=explicit) if cfg.calibration_data else val
        calibration = source.subset(cfg.bn_recalibrate)
    for name, data in (("TEST", test), ("calibration", calibration)):
        if data is not None and data.image_shape != val.image_shape:
            raise DataError(f"{name} images are {data.image_shape} but VAL images are {val.image_shape}; they must match")
    if loaded.source == "onnx":
        # An ONNX file is analysed and lowered as given (its initializer names are the parameter names).
        check_onnx_runs_on(loaded.module, val.image_shape)
    _check_model_runs_on(loaded.module, val)
    if loaded.source == "onnx":
        progress.step(f"analysing channel groups of the ONNX model (input {list(val.image_shape)})")
        onnx_model = loaded.onnx_model
    else:
        progress.step(f"exporting to ONNX and analysing channel groups (input {list(val.image_shape)})")
        onnx_model = export_onnx(loaded.module, val.image_shape)
    graph = Graph.from_model(onnx_model, val.image_shape)
    classes = graph.shapes[graph.output_names[0]][-1]
    for name, data in (("VAL", val), ("TEST", test)):
        if data is None:
            continue
        lo, hi = int(data.y.min()), int(data.y.max())
        if lo < 0 or hi >= classes:
            raise DataError(
                f"{name} labels range over {lo}..{hi} but the model has {classes} outputs; "
                "fix the labels (or --label-offset for models with a background class)"
            )
    analysis = analyse_channels(graph)
    return _Inputs(target, threads, loaded.module, loaded.description, val, test, calibration, prep, onnx_model, analysis)


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


def _fingerprint(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()[:16]


def compile_model(cfg: CompileConfig, progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    methods = check_config(cfg)
    torch.manual_seed(cfg.seed)
    inputs = _load_inputs(cfg, progress)
    analysis = inputs.analysis
    cost_model = search_cost_model(cfg.cost, inputs.target, cfg.lut)
    transform = PlanTransform(analysis, original_weights(inputs.module, analysis))
    evaluator_class = OnnxEvaluator if isinstance(inputs.module, OnnxModel) else SubstitutionEvaluator
    options = {"precision": cfg.precision} if evaluator_class is SubstitutionEvaluator else {}
    evaluator = evaluator_class(
        inputs.module, inputs.val, transform, device=cfg.device, batch_size=cfg.batch_size, calibration=inputs.calibration,
        **options,
    )
    identity = Plan((), _fingerprint(inputs.onnx_model))
    baseline_val = float(evaluator.accuracy([identity])[0])
    drop = cfg.max_accuracy_drop if cfg.accuracy_threshold is None else None
    threshold = cfg.accuracy_threshold if cfg.accuracy_threshold is not None else baseline_val - (DEFAULT_MAX_DROP if drop is None else drop)
    if threshold > baseline_val:
        raise InputError(
            f"the accuracy threshold {threshold:.2f}% is above the baseline's own {baseline_val:.2f}% on VAL; "
            "lower --accuracy-threshold (or use --max-accuracy-drop)"
        )
    # One image's worth of accuracy is the smallest meaningful floor.
    floor = cfg.accuracy_floor or max(baseline_val - threshold, 100.0 / len(inputs.val))
    timings["load_export_analyse_s"] = time.perf_counter() - t0
    progress.step(
        f"baseline top-1 on VAL {baseline_val:.2f}% ({len(inputs.val)} images); threshold {threshold:.2f}%; "
        f"{len(analysis.prunable_groups)} prunable channel groups, {len(analysis.frozen_groups)} frozen"
    )
    extra_sites = layer_sites(analysis, methods)
    groups = analysis.prunable_groups if "ps" in methods else []
    if not groups and not extra_sites:
        reasons = "; ".join(f"{g.id}: {g.frozen_reason}" for g in analysis.frozen_groups[:3])
        raise InputError(f"nothing in this model can be compressed with {', '.join(methods)} ({reasons})")

    ws = Workspace.open(cfg.out, cfg.resume_key(), resume=cfg.resume, overwrite=cfg.overwrite)
    t = time.perf_counter()
    priorities = ws.load_array_dict("priorities.npz")
    if priorities is None:
        priorities = {}
        if groups:
            progress.step(f"channel priorities ({cfg.priority}) on {len(inputs.val)} images")
            priorities = evaluator.priorities(analysis, groups, cfg.priority)
        ws.save_array_dict("priorities.npz", priorities)
    timings["priorities_s"] = time.perf_counter() - t
    space = CompressionSpace.from_priorities(
        groups, priorities, identity.model_fingerprint, round_to=cfg.round_to, extra_sites=extra_sites
    )
    baseline_cost = float(cost_model.estimate(plan_workloads(analysis, [identity], batch=inputs.target.batch_size))[0])
    score = AdaNSScore(baseline_val, baseline_cost, threshold, floor)
    cache = EvaluationCache(ws.state / "evaluations.jsonl")
    if cfg.executor != "local" and not isinstance(evaluator, SubstitutionEvaluator):
        raise ConfigError(f"--executor {cfg.executor} distributes PyTorch models; an ONNX model is evaluated with --executor local")
    executor = make_executor(
        cfg.executor, evaluator, lambda: _evaluator_spec(inputs, transform, cfg, evaluator.precision),
        workers=cfg.workers, ray_address=cfg.ray_address,
    )
    run = _Run(cfg, inputs, evaluator, executor, transform, space, cost_model, score, cache, ws, identity, progress, timings, t0)
    try:
        boundary, result, stats = _search(run)
        notes = list(evaluator.notes)
        best, best_plan = _select_plan(run, result, notes)
        return _emit(run, boundary, result, stats, best, best_plan, notes)
    finally:
        executor.close()


def _evaluator_spec(inputs: _Inputs, transform, cfg: CompileConfig, precision: str) -> EvaluatorSpec:
    threads = max(1, inputs.threads // max(cfg.workers or inputs.threads, 1))
    return EvaluatorSpec.from_module(
        inputs.module, val=inputs.val, calibration=inputs.calibration, analysis=inputs.analysis, weights=transform.weights,
        batch_size=cfg.batch_size, precision=precision, device=cfg.device, threads=threads,
    )


@dataclass
class _Run:
    """What the search, the plan selection and the emission of one compile share."""

    cfg: CompileConfig
    inputs: _Inputs
    evaluator: SubstitutionEvaluator | OnnxEvaluator
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


def _search(run: _Run):
    """Boundary characterisation, then AdaNS; every evaluation goes through the resumable cache."""
    cfg, space, cache, score, progress, timings = run.cfg, run.space, run.cache, run.score, run.progress, run.timings
    analysis, batch = run.inputs.analysis, run.inputs.target.batch_size
    threshold, baseline_cost = score.accuracy_threshold, score.baseline_cost
    stats = {"evaluated": 0, "cached": 0, "eval_seconds": 0.0, "executor": run.executor.describe(),
             "precision": getattr(run.evaluator, "precision", "fp32")}

    def accuracies(xs: np.ndarray, progress_label: str | None = None) -> np.ndarray:
        xs = np.atleast_2d(xs)
        keys = [cache.key(space.states(x)) for x in xs]
        missing = {}
        for k, x in zip(keys, xs):
            if cache.get(k) is None and k not in missing:
                missing[k] = x
        # Evaluated and written in chunks: a bisection round can be a hundred or more
        # evaluations, and a run killed mid-round keeps every finished chunk.
        pending = list(missing.items())
        chunk = evaluation_chunk(run.executor.workers)
        show = progress_label is not None and len(pending) > chunk
        for i in range(0, len(pending), chunk):
            part = pending[i:i + chunk]
            start = time.perf_counter()
            acc = run.executor.accuracy(space.decode_batch(np.array([x for _, x in part])))
            stats["eval_seconds"] += time.perf_counter() - start
            cache.put_many([{"key": k, "accuracy": float(a)} for (k, _), a in zip(part, acc)])
            if show:
                rate = (stats["evaluated"] + i + len(part)) / max(stats["eval_seconds"], 1e-9)
                progress.bar(i + len(part), len(pending), f"{progress_label}  ({rate:.2f} eval/s)")
        if show:
            progress.done()
        stats["evaluated"] += len(missing)
        stats["cached"] += len(xs) - len(missing)
        return np.array([cache.get(k)["accuracy"] for k in keys])

    t = time.perf_counter()
    progress.step(f"boundary characterisation: bisection on {space.dim} coordinates ({len(space.sites)} sites)")
    # On resume every evaluation below is a cache hit, so this costs nothing.
    # A bisection round can run for an hour on a CPU, so it shows a bar. Each call is
    # one per-site round; the diagonal's single points that follow never fill a bar.
    rounds = itertools.count(1)

    def bisection_accuracies(xs: np.ndarray) -> np.ndarray:
        return accuracies(xs, f"bisection round {next(rounds)}/{cfg.boundary_rounds}")

    boundary = characterise_boundary(bisection_accuracies, space.levels, threshold, rounds=cfg.boundary_rounds)
    run.ws.save_json("boundary.json", boundary.as_dict())
    timings["boundary_s"] = time.perf_counter() - t
    progress.step(
        f"boundary: mean theta {boundary.theta.mean():.2f}, feasible diagonal scale {boundary.diagonal_scale:.2f} "
        f"({boundary.evaluations} evaluations)"
    )

    best_seen = {"ratio": 1.0}

    def objective(xs: np.ndarray):
        acc = accuracies(xs)
        plans = space.decode_batch(xs)
        costs = run.cost_model.estimate(plan_workloads(analysis, plans, batch=batch))
        f = score(acc, costs)
        feasible = score.feasible(acc)
        if feasible.any():
            best_seen["ratio"] = min(best_seen["ratio"], float(np.min(costs[feasible]) / baseline_cost))
        infos = [
            {"accuracy": float(a), "cost": float(c), "cost_ratio": float(c / baseline_cost), "feasible": bool(ok)}
            for a, c, ok in zip(acc, costs, feasible)
        ]
        return f, infos

    def on_iteration(summary) -> None:
        rate = stats["evaluated"] / max(stats["eval_seconds"], 1e-9)
        progress.bar(
            summary.iteration + 1,
            cfg.iterations,
            f"best f {summary.best_f:.3f}  alpha {summary.alpha:.2f}  best feasible {cfg.cost} {best_seen['ratio']:.1%}  "
            f"({rate:.1f} eval/s)",
        )

    t = time.perf_counter()
    init = initial_batch(boundary, cfg.samples, np.random.default_rng([cfg.seed, 2**31 - 1]))
    result = maximize(
        objective,
        space.dim,
        sampler=cfg.sampler,
        samples=cfg.samples,
        iterations=cfg.iterations,
        seed=cfg.seed,
        lower=np.zeros(space.dim),
        upper=boundary.theta,
        init=init,
        journal=run.ws.history_path,
        callback=on_iteration,
    )
    progress.done()
    timings["search_s"] = time.perf_counter() - t
    return boundary, result, stats


def _select_plan(run: _Run, result, notes: list[str]):
    """The best feasible candidate, or the baseline when none is feasible and cheaper (with a note saying why)."""
    cfg, identity = run.cfg, run.identity
    feasible = [e for e in result.history if e.info.get("feasible")]
    best = max(feasible, key=lambda e: e.f) if feasible else None
    best_plan = identity if best is None else run.space.decode(best.x)
    if best is None:
        notes.append("no candidate met the accuracy threshold; the emitted model is the uncompressed baseline")
    elif best.info["cost_ratio"] >= 1.0:
        # Possible with a latency cost: channel counts off the runtime's SIMD blocking
        # can make every pruned candidate slower than the original.
        notes.append(
            f"no candidate that met the accuracy threshold costs less than the baseline (the best costs "
            f"{best.info['cost_ratio']:.1%} of it by the {cfg.cost} model); the emitted model is the uncompressed baseline"
            + ("; try --round-to 8 (or 16), which keeps channel counts the runtime runs fast" if cfg.cost == "latency" else "")
        )
        best, best_plan = None, identity
    return best, best_plan


def _emit(run: _Run, boundary, result, stats: dict, best, best_plan: Plan, notes: list[str]) -> dict:
    """Lower, validate, measure (and fine-tune if asked) the chosen plan; write OUT and the report."""
    cfg, inputs, evaluator, progress, timings = run.cfg, run.inputs, run.evaluator, run.progress, run.timings
    analysis, transform = inputs.analysis, run.transform
    progress.step("lowering the best plan and validating it numerically")
    t = time.perf_counter()
    baseline_onnx = simplify(inputs.onnx_model)
    emitted = lower_plan(inputs.onnx_model, analysis, best_plan, transform, evaluator, inputs.val.x, threads=inputs.threads)
    timings["lower_validate_s"] = time.perf_counter() - t

    progress.step("measuring accuracy of the emitted ONNX models")
    splits = {"val": inputs.val, "test": inputs.test}
    accuracy = {}
    for split, data in splits.items():
        if data is not None:
            accuracy[f"baseline_{split}"] = _top1(baseline_onnx, data, threads=inputs.threads, batch_size=cfg.batch_size)
            accuracy[f"compressed_{split}"] = _top1(emitted.model, data, threads=inputs.threads, batch_size=cfg.batch_size)
            if evaluator.recalibrates(best_plan):
                # What the same plan scores with the trained statistics, for the report.
                accuracy[f"compressed_{split}_without_bn_recalibration"] = evaluator.accuracy_on(best_plan, data, recalibrate=False)
    finetuning = None
    if cfg.finetune_epochs:
        t = time.perf_counter()
        finetuning, emitted, baseline_onnx = _finetune(cfg, inputs, emitted, baseline_onnx, run.ws, progress, accuracy)
        timings["finetune_s"] = time.perf_counter() - t
    measured = None
    if not cfg.no_measure:
        progress.step(f"measuring speed in ONNX Runtime ({inputs.threads} threads, batches {list(cfg.measure_batches)})")
        t = time.perf_counter()
        measured = measured_speedup(
            baseline_onnx, emitted.model, inputs.val.image_shape, tuple(cfg.measure_batches), threads=inputs.threads,
            time_budget_s=cfg.measure_budget_s,
        )
        timings["measure_s"] = time.perf_counter() - t
    latency = _predicted_latency(cfg, inputs, run.cost_model, run.identity, best_plan, notes)
    timings["total_s"] = time.perf_counter() - run.t0

    out = Path(cfg.out)
    atomic_write_bytes(out / "baseline.onnx", baseline_onnx.SerializeToString())
    atomic_write_bytes(out / "model.onnx", emitted.model.SerializeToString())
    atomic_write_text(out / "plan.json", best_plan.to_json())
    report = report_writer.build_report(
        cfg=cfg,
        inputs=inputs,
        space=run.space,
        boundary=boundary,
        score=run.score,
        result=result,
        best=best,
        plan=best_plan,
        baseline_onnx=baseline_onnx,
        lowered=emitted.model,
        validation=emitted.validation,
        accuracy=accuracy,
        measured=measured,
        pass_log=emitted.pass_log,
        finetuning=finetuning,
        stats=stats,
        timings=timings,
        notes=notes,
        cost_model=run.cost_model,
        latency=latency,
    )
    report_writer.write_report(out, report, result)
    progress.step(f"done: {out / 'report.md'}")
    return report


def _predicted_latency(cfg: CompileConfig, inputs: _Inputs, cost_model, identity: Plan, plan: Plan, notes: list[str]) -> dict | None:
    """Baseline and emitted model latency on the target, as the latency cost model predicts it (Table IV)."""
    model, why_not = report_latency_model(cost_model, inputs.target, cfg.lut)
    if model is None:
        notes.append(why_not)
        return None
    totals, layers, why_not = predicted_latency(model, inputs.analysis, [identity, plan], inputs.target.batch_size)
    if why_not:
        notes.append(why_not)
        return None
    described = model.describe()
    notes.extend(n for n in described["notes"] if n not in notes)
    return {"baseline_ms": totals[0], "compressed_ms": totals[1], "layers_ms": layers,
            "source": described["latency_source"], "model": described}


def _finetune(cfg: CompileConfig, inputs: _Inputs, emitted, baseline_onnx, ws: Workspace, progress: Progress, accuracy: dict):
    """Fine-tune the emitted model (and, if asked, the baseline) on TRAIN; updates `accuracy` in place."""
    if not cfg.train_data:
        raise ConfigError("--finetune-epochs needs --train-data (training images)")
    train = load_image_set(cfg.train_data, inputs.preprocessing, explicit_normalisation=cfg.mean is not None)
    if train.image_shape != inputs.val.image_shape:
        raise DataError(f"TRAIN images are {train.image_shape} but VAL images are {inputs.val.image_shape}; they must match")
    config = FinetuneConfig(
        epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size, distill=cfg.distill, seed=cfg.seed
    )
    teacher = inputs.module if cfg.distill else None
    result = {"config": config.__dict__, "train_images": len(train), "train_data": cfg.train_data}
    runs = [("compressed", emitted)]
    if cfg.finetune_baseline:
        runs.append(("baseline", None))
    outputs = {}
    for name, source in runs:
        pre = source.pre_simplify if source is not None else inputs.onnx_model
        progress.step(f"fine-tuning the {name} model: {config.epochs} epochs on {len(train)} images")
        done = finetune_model(
            pre, train, config, image_shape=inputs.val.image_shape, check_images=inputs.val.x, teacher=teacher,
            checkpoint=ws.state / f"finetune_{name}.pt", device=cfg.device, threads=inputs.threads,
            pass_log=source.pass_log if source is not None else [],
            on_epoch=lambda e, loss, acc: progress.bar(e, config.epochs, f"loss {loss:.4f}  train top-1 {acc:.2f} %"),
        )
        progress.done()
        outputs[name] = done
        result[name] = {
            "train_loss": done.log.train_loss, "train_top1": done.log.train_top1,
            "resumed_from_epoch": done.log.resumed_from_epoch, "interpreter_check_relative_diff": done.self_check,
            "validation": done.emitted.validation.as_dict(),
        }
        for split, data in (("val", inputs.val), ("test", inputs.test)):
            if data is None:
                continue
            key = f"{name}_{split}"
            after = _top1(done.emitted.model, data, threads=inputs.threads, batch_size=cfg.batch_size)
            if name == "compressed":
                accuracy[f"{key}_before_finetune"] = accuracy[key]
                accuracy[key] = after
            else:
                accuracy[f"{key}_finetuned"] = after
    out = Path(cfg.out)
    atomic_write_bytes(out / "model_before_finetune.onnx", emitted.model.SerializeToString())
    if "baseline" in outputs:
        atomic_write_bytes(out / "baseline_finetuned.onnx", outputs["baseline"].emitted.model.SerializeToString())
    # Speed is compared against the original baseline either way (fine-tuning does not change speed).
    return result, outputs["compressed"].emitted, baseline_onnx


def _top1(model: onnx.ModelProto, data: ImageSet, *, threads: int, batch_size: int) -> float:
    return top1(model, data.x.numpy(), data.y.numpy(), threads=threads, batch_size=batch_size)
