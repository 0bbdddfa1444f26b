"""Build a latency lookup table on the device itself.

For every model given, the profiler takes the kernels its *unfused*
exported graph executes (`cost_models.kernels.executed_kernels`, the same
view the latency model prices), and for every kernel family the channel
grid (`grid.py`) over the axes pruning can change (an axis is variable when
its tensor belongs to a prunable channel group of the analysis). Each grid
point becomes a single-kernel ONNX graph (`graphs.py`) timed in ONNX Runtime
with the target's provider and threads (`timing.py`).

With `precisions` including "int8", every weighted kernel (Conv, grouped
and depthwise Conv, Gemm, MatMul with a constant weight) is also measured in
its int8 form: the QDQ graph ONNX Runtime fuses into its integer kernels
(graphs.py), over the same channel grid, as a family with
`"precision": "int8"`; the quantize/dequantize at its boundary with float are
recorded as `QuantizeLinear` / `DequantizeLinear` families. Opt-in: nearly
every grid point is a weighted kernel's, so int8 adds almost as many points
again (ResNet-56: 2,933 float + 2,322 int8; MobileNetV2 at 224: 6,928 +
6,888), and an int8 point takes longer to set up (about 2-3x the float-only
time in all).

Also measured, once per table:

- per-node dispatch cost (chains of 1 and 33 tiny operators, timed whole)
  and per-run cost (a whole `session.run` around a trivial graph with the
  model's input), which a model pays in addition to its kernels;
- layout reorders at every boundary where a kernel ran in the blocked
  layout (recorded as `ReorderInput` / `ReorderOutput` families);
- for every model, its whole baseline (the emitted, simplified form),
  timed with `measure.compare_latency`, against the table's prediction:
  a check of the table, stored as its `calibration` (see `profile`).

The table is written after every family, so a crash loses at most one
family's work, and `resume` skips everything already measured.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from cost_models.kernels import Kernel, executed_kernels, structure_fingerprint
from cost_models.latency import BLOCKED_RESIDUAL, LatencyCostModel, kernel_cost_inputs
from cost_models.lut import (
    DEQUANTIZE,
    LUT_FORMAT,
    QUANTIZE,
    REORDER_INPUT,
    REORDER_OUTPUT,
    Family,
    LookupTable,
    LookupTableMismatchError,
    Measurement,
    Point,
    reorder_family_key,
)
from cost_models.workload import FLOAT_PRECISION, precision_name
from targets import Target

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.plan.workload import graph_workload
from adans_toolchain.profiling.graphs import INT8_OPS, KernelGraph, UnsupportedKernelError, kernel_graph
from adans_toolchain.profiling.grid import GridRule, axis_grid
from adans_toolchain.profiling.timing import NODE_PROFILE, TRUNCATION_US, WALL, GraphTiming, TimingConfig, profiled_and_wall, time_graphs


@dataclass(frozen=True)
class ModelToProfile:
    name: str
    onnx_model: onnx.ModelProto  # as exported (unfused), the graph the analysis was made on
    analysis: ChannelAnalysis
    image_shape: tuple[int, ...]


@dataclass
class FamilySpec:
    kernel: Kernel  # a representative
    axes: tuple[str, ...]
    grids: list[set[int]]
    models: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return self.kernel.family_key

    def points(self) -> list[tuple[int, ...]]:
        from itertools import product

        return [tuple(p) for p in product(*(sorted(g) for g in self.grids))]


def _axis_tensor(kernel: Kernel, axis: str) -> str | None:
    return kernel.data_input if axis in ("c_in", "k") else kernel.output


INT8 = precision_name(8)
PRECISIONS = (FLOAT_PRECISION, INT8)


def quantizable(kernel: Kernel) -> bool:
    """Whether the kernel has an int8 form to profile (a weighted operator the int8 lowering quantizes)."""
    return kernel.anchor.op_type in INT8_OPS and bool(kernel.anchor.weight_shape)


def kernels_at(kernel: Kernel, precisions: tuple[str, ...]) -> list[Kernel]:
    """`kernel` at each of `precisions` it has a form at (float always)."""
    forms = [kernel] if FLOAT_PRECISION in precisions else []
    if INT8 in precisions and quantizable(kernel):
        forms.append(kernel.with_weight_bits(8))
    return forms


def plan_families(models: list[ModelToProfile], batches: tuple[int, ...], rule: GridRule,
                  precisions: tuple[str, ...] = (FLOAT_PRECISION,)) -> dict[str, FamilySpec]:
    """Every kernel family the models can reach under channel pruning, at each precision, with its channel grid."""
    specs: dict[str, FamilySpec] = {}
    for m in models:
        variable = {t for g in m.analysis.prunable_groups for t in g.tensors}
        for batch in batches:
            for kernel in executed_kernels(graph_workload(m.analysis.graph, batch=batch)):
                axes = kernel.default_axes()
                counts = kernel.channels(axes)
                grids = [set(axis_grid(c, rule, variable=_axis_tensor(kernel, a) in variable)) for a, c in zip(axes, counts)]
                for k in kernels_at(kernel, precisions):
                    _add_spec(specs, k, axes, grids, m.name)
    return specs


def _add_spec(specs: dict[str, FamilySpec], kernel: Kernel, axes: tuple[str, ...], grids: list[set[int]], model: str) -> None:
    spec = specs.get(kernel.family_key)
    if spec is None:
        specs[kernel.family_key] = FamilySpec(kernel, axes, [set(g) for g in grids], {model})
    else:
        for g, new in zip(spec.grids, grids):
            g.update(new)
        spec.models.add(model)


def device_description(target: Target) -> dict:
    """Names of the machine the profile runs on, for the table header."""
    from targets.host import device_name

    cpu = device_name()
    gpu = None
    if any(p.startswith(("CUDA", "Tensorrt", "TensorRT")) for p in target.onnxruntime_providers[:1]):
        try:
            import torch

            if torch.cuda.is_available():
                gpu = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a missing or broken torch only loses the name
            gpu = None
        if gpu is None:
            model = Path("/proc/device-tree/model")
            gpu = model.read_text().strip("\x00\n ") if model.exists() else "unknown GPU"
    return {"device": f"{gpu} / {cpu}" if gpu else cpu, "cpu_model": cpu, "gpu_model": gpu}


def make_header(target: Target, *, threads: int, batches: tuple[int, ...], timing: TimingConfig, rule: GridRule,
                precisions: tuple[str, ...] = (FLOAT_PRECISION,)) -> dict:
    import onnxruntime as ort

    from adans_toolchain import __version__ as adans_version

    return {
        "target": target.id,
        **device_description(target),
        "onnxruntime": ort.__version__,
        "provider": target.provider,
        "threads": threads,
        "batch_sizes": sorted(set(batches)),
        "dtype": "float32",
        "precisions": sorted(precisions),  # what was asked for; the families say what was measured
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timing": {**timing.as_dict(), "truncation_correction_us": TRUNCATION_US if timing.method == NODE_PROFILE else 0.0},
        "grid": rule.as_dict(),
        "models": [],
        "skipped": [],
        "adans": adans_version,
    }


_MUST_MATCH = ("target", "device", "onnxruntime", "provider", "threads", "dtype")


def _open_table(path: Path, header: dict, resume: bool) -> LookupTable:
    if resume and path.is_file():
        table = LookupTable.load(path)
        old = table.header
        diff = [f"{k}: {old.get(k)!r} vs now {header.get(k)!r}" for k in _MUST_MATCH if old.get(k) != header.get(k)]
        for k in ("method", "threads"):
            if old.get("timing", {}).get(k) != header["timing"].get(k):
                diff.append(f"timing {k}: {old.get('timing', {}).get(k)!r} vs now {header['timing'].get(k)!r}")
        if old.get("grid", {}).get("align") != header["grid"]["align"]:
            diff.append(f"grid align {old.get('grid', {}).get('align')} vs now {header['grid']['align']}")
        if diff:
            raise LookupTableMismatchError(
                f"cannot resume {path}: it was profiled differently ({'; '.join(diff)}); "
                "write to another file or pass --no-resume to start over"
            )
        old["batch_sizes"] = sorted(set(old.get("batch_sizes", [])) | set(header["batch_sizes"]))
        # A table from before int8 was float only; resuming it with int8 adds the int8 families.
        old["precisions"] = sorted(set(old.get("precisions", [FLOAT_PRECISION])) | set(header["precisions"]))
        old["date"] = header["date"]
        return table
    return LookupTable(dict(header), {}, {}, [])


def _measurement(t: GraphTiming, kernel: Kernel | None) -> Measurement:
    macs, nbytes = kernel_cost_inputs(kernel) if kernel is not None else (None, None)
    return Measurement(t.min_ms, t.median_ms, t.nodes, t.in_layout, t.out_layout, t.repeats, macs, nbytes)


Progress = Callable[[str], None]


def _measure_family(table: LookupTable, spec: FamilySpec, timing: TimingConfig, progress: Progress) -> None:
    fam = table.family(spec.key) or table.add_family(Family(spec.key, spec.kernel.family_fields, spec.axes))
    if fam.axes != spec.axes:
        raise LookupTableMismatchError(f"family {spec.kernel.pattern} has axes {fam.axes} in the table, {spec.axes} now")
    todo = [p for p in spec.points() if p not in fam.points]
    graphs, keep, errors = [], [], []
    for p in todo:
        try:
            graphs.append(kernel_graph(spec.kernel, p, spec.axes))
            keep.append(p)
        except UnsupportedKernelError as e:  # e.g. a Pad point that would have to crop
            errors.append(str(e))
    if not graphs:
        if todo and not fam.points:
            _skip(table, spec, errors[0] if errors else "no grid point could be built")
        return
    try:
        timings = time_graphs(graphs, timing)
    except Exception as e:  # noqa: BLE001 - one family ORT cannot run must not end the whole profile
        _skip(table, spec, f"ONNX Runtime failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return
    blocked = []
    for p, g, t in zip(keep, graphs, timings):
        fam.add(Point(p, _measurement(t, spec.kernel.with_channels(spec.axes, p))))
        _record_conversions(table, g, t, spec.kernel.anchor.dtype)
        if spec.kernel.residual and t.in_layout == "blocked":
            blocked.append(p)
    if blocked:  # the same points with the residual arriving blocked (see graphs.py)
        vgraphs = [kernel_graph(spec.kernel, p, spec.axes, variant=BLOCKED_RESIDUAL) for p in blocked]
        for p, t in zip(blocked, time_graphs(vgraphs, timing)):
            point = fam.points[p]
            fam.add(Point(p, point.measurement, ((BLOCKED_RESIDUAL, _measurement(t, None)),)))
    form = "" if spec.kernel.precision == FLOAT_PRECISION else f" {spec.kernel.precision}"
    progress(f"  {spec.kernel.pattern + form:18s} {len(keep):4d} points  ({', '.join(sorted(spec.models))})")


def _skip(table: LookupTable, spec: FamilySpec, reason: str) -> None:
    entry = {"pattern": spec.kernel.pattern, "key": spec.key, "reason": reason}
    if entry not in table.header.setdefault("skipped", []):
        table.header["skipped"].append(entry)


def _record_conversions(table: LookupTable, graph: KernelGraph, t: GraphTiming, dtype: str) -> None:
    """The conversions timed at the graph's boundary: layout reorders (float), quantize and dequantize (int8)."""
    into, out_of = (QUANTIZE, DEQUANTIZE) if graph.quantized else (REORDER_INPUT, REORDER_OUTPUT)
    # A Gemm's 2-D tensors are never reordered, but they are quantized.
    least_rank = 2 if graph.quantized else 3
    for direction, shape, ms in ((into, graph.feeds["x"], t.in_reorder_ms), (out_of, graph.output_shape, t.out_reorder_ms)):
        if ms is None or len(shape) < least_rank:
            continue
        key = reorder_family_key(direction, batch=int(shape[0]), spatial=tuple(shape[2:]), dtype=dtype)
        fam = table.family(key) or table.add_family(
            Family(key, {"pattern": direction, "batch": int(shape[0]), "spatial": list(shape[2:]), "dtype": dtype}, ("c",))
        )
        c = (int(shape[1]),)
        old = fam.points.get(c)
        if old is None or ms < old.measurement.min_ms:
            fam.add(Point(c, Measurement(ms, ms, 1, "plain", "plain", 1)))


def _tiny_chain(length: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    nodes, x = [], "x"
    for i in range(length):
        y = "y" if i == length - 1 else f"t{i}"
        nodes.append(helper.make_node("Relu" if i % 2 == 0 else "Neg", [x], [y], name=f"n{i}"))
        x = y
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = min(m.ir_version, 9)
    return m


def _single_node(shape: tuple[int, ...]) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "run",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = min(m.ir_version, 9)
    return m


def _conv_probe(c: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, c, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = min(m.ir_version, 9)
    return m


def probe_alignment(target: Target, timing: TimingConfig) -> tuple[int, str]:
    """The channel multiple with which the runtime's choice of a blocked convolution repeats.

    Builds 1x1 convolutions with 8..40 input channels and asks the runtime
    which ones it runs in a blocked layout (an `nchwc` node in the optimised
    graph). No measurement: session creation only, a fraction of a second.
    Without any blocked kernel (ARM, CUDA) the staircase comes from SIMD
    tiles: `align` is then the target's fp32 lanes (SIMD bits / 32), else 8.
    """
    import tempfile

    import onnxruntime as ort

    from adans_toolchain.runtime.sessions import session_options

    blocked = {}
    with tempfile.TemporaryDirectory(prefix="adans-probe-") as tmp:
        for c in range(8, 41):
            path = f"{tmp}/opt{c}.onnx"
            ort.InferenceSession(_conv_probe(c).SerializeToString(), session_options(timing.threads, optimized_path=path),
                                 providers=list(timing.providers))
            blocked[c] = any("nchwc" in n.domain for n in onnx.load(path).graph.node)
    if not any(blocked.values()):
        lanes = (target.simd_width_bits or 0) // 32
        align = lanes if lanes >= 2 else 8
        return align, f"no blocked convolution in this runtime; align = {'SIMD fp32 lanes' if lanes >= 2 else 'default'} {align}"
    for a in (1, 2, 4, 8, 16, 32):
        if all(b == (c % a == 0) for c, b in blocked.items()):
            return a, f"probed: the runtime runs a convolution blocked when its input channels are a multiple of {a}"
    return 8, "probed: no single period in the runtime's blocked layouts; align 8"


def measure_runtime(models: list[ModelToProfile], batches: tuple[int, ...], timing: TimingConfig, progress: Progress) -> dict:
    """What a whole model pays besides the sum of its profiled kernels.

    The profiler's node durations carry its own bookkeeping (several us per
    node on x86), which an unprofiled run does not pay, while an unprofiled
    run pays the executor's dispatch between nodes and one `session.run`
    call. Both are measured here so that

        model time = run overhead + sum over nodes of (profiled duration + per_node_ms)

    with per_node_ms = (wall-clock cost of one more tiny node, from chains of
    1 and 17 nodes) - (its profiled duration); usually negative. Profiled and
    unprofiled runs alternate, so both see the same load on a shared machine.
    """
    if timing.method == WALL or timing.providers[0] != "CPUExecutionProvider":
        progress("  runtime overheads: folded into wall-clock kernel times")
        return {"per_node_ms": 0.0, "run_overhead": [], "method": "folded into kernel wall times"}
    short, long = 1, 17
    tiny = {"x": np.zeros((1, 8, 1, 1), np.float32)}
    w1, p1, _ = profiled_and_wall(_tiny_chain(short), tiny, timing, runs=2000)
    w2, p2, _ = profiled_and_wall(_tiny_chain(long), tiny, timing, runs=2000)
    slope = (w2 - w1) / (long - short)
    profiled_slope = (p2 - p1) / (long - short)
    per_node = slope - profiled_slope
    run = []
    shapes = {(b, m.image_shape) for m in models for b in batches}
    rng = np.random.default_rng(0)
    for batch, image in sorted(shapes):
        shape = (batch, *image)
        wall, prof, nodes = profiled_and_wall(_single_node(shape), {"x": rng.standard_normal(shape).astype(np.float32)}, timing, runs=300)
        ms = max(0.0, wall - (prof + nodes * per_node))
        run.append({"batch": batch, "input_shape": list(shape), "io_bytes": 2 * 4 * prod(shape), "ms": ms})
    progress(f"  runtime: {slope * 1e3:.2f} us per extra node, profiled as {profiled_slope * 1e3:.2f} us "
             f"(per-node correction {per_node * 1e3:+.2f} us); per run " + ", ".join(f"{r['ms'] * 1e3:.0f} us" for r in run))
    return {
        "per_node_ms": per_node,
        "run_overhead": run,
        "node_wall_ms": slope,
        "node_profiled_ms": profiled_slope,
        "method": "model = run overhead + sum(profiled node + per_node_ms); chains of 1 and 17 tiny nodes, "
                  "unprofiled and profiled runs alternating; a 1-node graph on each model input",
    }


def calibrate(table: LookupTable, path: Path, target: Target, models: list[ModelToProfile], batches: tuple[int, ...],
              timing: TimingConfig, *, budget_s: float, apply: bool, progress: Progress) -> None:
    """Each whole baseline, measured as adans-compile measures, against the table's prediction.

    Kernels timed one by one miss what a whole model pays on top: weights
    that no longer sit in cache when their layer comes round again (a model's
    weights, plus the other model a speedup is measured against, overflow the
    caches), and the executor's work between nodes on large tensors. The
    baseline is timed interleaved with a second session of itself, as
    `measure.compare_latency` times a compressed model against its baseline,
    and `ratio = measured / predicted` is stored per model (keyed by the
    structure fingerprint every pruning plan of that model shares). With
    `apply`, the latency model multiplies that model's predictions by it.
    """
    from adans_toolchain.lowering import CheckModelPass, SimplifyPass, run_passes
    from adans_toolchain.runtime.measure import compare_latency

    model = LatencyCostModel(target, lut_path=path, threads=timing.threads, calibrate=False, missing="estimate")
    names = {m.name for m in models}
    table.calibration = [c for c in table.calibration if c.get("model") not in names]
    for m in models:
        emitted, _ = run_passes(m.onnx_model, [CheckModelPass(), SimplifyPass()])
        for batch in batches:
            work = graph_workload(m.analysis.graph, batch=batch)
            predicted = float(model.estimate([work])[0])
            t = compare_latency({"baseline": emitted, "baseline_again": emitted}, m.image_shape, batch,
                                threads=timing.threads, min_repeats=20, max_repeats=100000, time_budget_s=budget_s)
            measured = 0.5 * (t["baseline"].min_ms + t["baseline_again"].min_ms)
            entry = {
                "model": m.name, "fingerprint": structure_fingerprint(executed_kernels(work)), "batch": batch,
                "measured_ms": measured, "measured_median_ms": t["baseline"].median_ms,
                "predicted_ms": predicted, "ratio": measured / predicted, "apply": apply,
                "method": "baseline interleaved with a second session of itself, min of repetitions",
            }
            table.calibration.append(entry)
            progress(f"  {m.name} batch {batch}: measured {measured:.3f} ms, table predicts {predicted:.3f} ms "
                     f"(ratio {entry['ratio']:.3f}{', applied to this model' if apply else ', stored as a check'})")


def profile(
    models: list[ModelToProfile],
    target: Target,
    out: str | Path,
    *,
    batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    rule: GridRule = GridRule(),
    timing: TimingConfig | None = None,
    resume: bool = True,
    calibration: str = "check",
    calibration_budget_s: float = 6.0,
    progress: Progress = print,
    precisions: tuple[str, ...] = (FLOAT_PRECISION,),
) -> LookupTable:
    """Profile every kernel family of `models` on this machine into the table at `out`.

    `precisions`: "fp32" and/or "int8" (the int8 form of every weighted kernel, see the module docstring).

    `calibration`: "check" (default) measures each whole baseline against
    the table's prediction and stores the comparison; "apply" also scales
    that model's predictions by measured / predicted (see `calibrate`); "off"
    skips it. Not applied by default: on a machine shared with other work the
    one measurement carries the load of its moment, and a scale taken from it
    moved predictions further from later measurements than it corrected
    (BENCHMARKS.md, issue 5).
    """
    if calibration not in ("check", "apply", "off"):
        raise ValueError("calibration must be 'check', 'apply' or 'off'")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or FLOAT_PRECISION not in precisions:
        # Float is always measured: every model has float layers (and a resumed table skips what it holds).
        raise ValueError(f"precisions are {FLOAT_PRECISION} and optionally {INT8}, not {', '.join(precisions) or 'none'}")
    path = Path(out).expanduser()
    threads = threads or target.threads or 1
    method = NODE_PROFILE if target.provider == "CPUExecutionProvider" else WALL
    timing = timing or TimingConfig()
    timing = TimingConfig(**{**timing.__dict__, "threads": threads, "providers": target.onnxruntime_providers, "method": method})
    align_source = "given"
    if rule.align is None:
        align, align_source = probe_alignment(target, timing)
        rule = replace(rule, align=align)
        progress(f"  channel alignment {align} ({align_source})")
    header = make_header(target, threads=threads, batches=batches, timing=timing, rule=rule, precisions=precisions)
    header["grid"]["align_source"] = align_source
    table = _open_table(path, header, resume)
    for m in models:
        entry = {"name": m.name, "input_shape": list(m.image_shape),
                 "fingerprint": structure_fingerprint(executed_kernels(graph_workload(m.analysis.graph)))}
        if entry not in table.header["models"]:
            table.header["models"].append(entry)
    if not table.runtime:
        table.runtime = measure_runtime(models, batches, timing, progress)
        table.save(path)
    specs = plan_families(models, batches, rule, precisions)
    total = sum(len(s.points()) for s in specs.values())
    progress(f"{len(specs)} kernel families, {total} grid points ({', '.join(m.name for m in models)}; batch {list(batches)})")
    for i, spec in enumerate(specs.values(), 1):
        _measure_family(table, spec, timing, lambda s, i=i: progress(f"[{i}/{len(specs)}]{s}"))
        table.save(path)
    if calibration != "off" and timing.method == NODE_PROFILE:
        calibrate(table, path, target, models, batches, timing, budget_s=calibration_budget_s,
                  apply=calibration == "apply", progress=progress)
        table.save(path)
    return table


__all__ = ["FamilySpec", "GridRule", "ModelToProfile", "PRECISIONS", "TimingConfig", "plan_families", "profile", "LUT_FORMAT"]
