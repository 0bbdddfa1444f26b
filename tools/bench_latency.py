"""Benchmark of the latency cost model (issue 5): predicted vs measured latency of pruned models.

    python tools/bench_latency.py --write BENCHMARKS.md

On this machine: profile a lookup table for the `host` target over CIFAR
ResNet-56 (32x32) and torchvision mobilenet_v2 (224x224), at batch 1 and
the chosen target batch; then for N pruning Plans of each model (random
per-group rates, every third one with its kept channel counts rounded to
multiples of 8, one uniform) lower the Plan to ONNX exactly as
`adans-compile` emits it, predict its latency with the table, and measure it
in ONNX Runtime (minimum of interleaved repetitions against the baseline,
the target's threads). Reports per model and batch the median and 90th
percentile of |predicted - measured| / measured, for absolute latency and
for the speedup over the baseline, and checks that the unfused search graph
and the emitted graph of each Plan get the same prediction.

Plans are drawn once from a fixed seed before anything is measured; they
are not tuned to the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SECTION = "## Latency cost model (issue 5)"

MODELS = {
    "resnet56": ("cifar10_resnets/resnet56.th", "cifar_resnet56", (3, 32, 32)),
    "mobilenet_v2": ("imagenet/mobilenet_v2.pth", "torchvision:mobilenet_v2", (3, 224, 224)),
}


@dataclass
class Loaded:
    name: str
    onnx_model: object
    analysis: object
    image_shape: tuple[int, int, int]


def load(name: str, data_dir: Path) -> Loaded:
    from adans_toolchain.analysis.channels import analyse_channels
    from adans_toolchain.analysis.graph import Graph
    from adans_toolchain.frontend.export import export_onnx
    from adans_toolchain.frontend.loading import load_model

    rel, arch, shape = MODELS[name]
    module = load_model(data_dir / rel, arch).module
    model = export_onnx(module, shape)
    return Loaded(name, model, analyse_channels(Graph.from_model(model, shape)), shape)


def make_plans(analysis, count: int, seed: int, *, round_to: int = 8):
    """Random per-group pruning rates; every third plan rounds kept counts to multiples of `round_to`."""
    from adans_toolchain.plan.space import CompressionSpace

    rng = np.random.default_rng(seed)
    groups = analysis.prunable_groups
    # Priorities only decide *which* channels go; latency depends on how many.
    space = CompressionSpace.from_priorities(groups, {g.id: rng.random(g.size) for g in groups})
    sizes = np.array([s.size for s in space.sites])
    plans = []
    for i in range(count):
        if i == 0:
            removed = np.floor(0.5 * sizes).astype(int)  # uniform 50 %
            kind = "uniform 50%"
        else:
            top = rng.uniform(0.2, 0.8)
            removed = np.floor(rng.uniform(0.0, top, len(sizes)) * sizes).astype(int)
            kind = f"random <= {top:.0%}"
        removed = np.minimum(removed, sizes - 1)
        if i % 3 == 2:
            kept = sizes - removed
            kept = np.where(sizes >= round_to, np.maximum(round_to, np.round(kept / round_to) * round_to), kept).astype(int)
            removed = sizes - np.minimum(kept, sizes)
            kind += f", kept rounded to x{round_to}"
        x = np.where(removed > 0, (removed + 0.5) / sizes, 0.0)
        plans.append((kind, space.decode(x)))
    return plans


def lower(model, analysis, plan):
    from adans_toolchain.lowering import CheckModelPass, PruneChannelsPass, SimplifyPass, run_passes

    lowered, _ = run_passes(model, [PruneChannelsPass(analysis, plan), CheckModelPass(), SimplifyPass()])
    return lowered


def in_context_ms(model, image_shape, batch: int, threads: int, runtime: dict, *, budget_s: float) -> float:
    """The model's kernels as ONNX Runtime's profiler times them inside the whole model, plus overheads.

    Sum over nodes of each node's minimum over the runs, plus the table's
    per-node and per-run costs (the same corrections the prediction uses).
    Each node's minimum comes from a window of micro- to milliseconds, so a
    busy machine disturbs it far less than a whole run; this isolates the
    model's error (fusion, layouts, interpolation, table values) from the
    load on the machine.
    """
    import json
    import os
    import tempfile
    import time as _time

    import onnxruntime as ort

    from adans_toolchain.profiling.timing import _node_durations
    from adans_toolchain.runtime.sessions import session_options

    with tempfile.TemporaryDirectory() as tmp:
        s = ort.InferenceSession(model.SerializeToString(), session_options(threads, profile_prefix=os.path.join(tmp, "p")),
                                 providers=["CPUExecutionProvider"])
        x = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, *image_shape)).astype(np.float32)}
        start, runs = _time.perf_counter(), 0
        while runs < 10 or (_time.perf_counter() - start < budget_s and runs < 400):
            s.run(None, x)
            runs += 1
        per_node = _node_durations(json.loads(open(s.end_profiling()).read()))
    total = sum(min(v) for v in per_node.values())
    run = [e["ms"] for e in runtime.get("run_overhead", []) if e.get("batch") == batch]
    return total + len(per_node) * float(runtime.get("per_node_ms", 0.0)) + (run[0] if run else 0.0)


def percentile_errors(pred, meas) -> dict:
    err = np.abs(np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    return {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)), "max": float(err.max()),
            "mean_signed": float(np.mean((np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)))}


def run(args) -> dict:
    from adans_toolchain.analysis.graph import Graph
    from adans_toolchain.plan.workload import graph_workload, plan_workloads
    from adans_toolchain.lowering import CheckModelPass, SimplifyPass, run_passes
    from adans_toolchain.runtime.measure import compare_latency
    from adans_toolchain.profiling.profiler import ModelToProfile, profile
    from cost_models import make_cost_model
    from targets import load_target

    target = load_target("host")
    threads = args.threads or target.threads
    batches = tuple(args.batches)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    models = [load(n, Path(args.data)) for n in args.models]
    lut = Path(args.lut)
    t0 = time.perf_counter()
    if not args.skip_profile:
        profile([ModelToProfile(m.name, m.onnx_model, m.analysis, m.image_shape) for m in models], target, lut,
                batches=batches, threads=threads, resume=not args.fresh, calibration="apply", progress=log)
    profile_s = time.perf_counter() - t0
    # The table with its whole-model calibration (what adans-compile uses), and without it.
    cost = make_cost_model("latency", target, lut_path=lut, threads=threads, missing="error")
    raw = make_cost_model("latency", target, lut_path=lut, threads=threads, missing="error", calibrate=False)
    results = {"models": {}, "profile_s": profile_s}
    for m in models:
        baseline, _ = run_passes(m.onnx_model, [CheckModelPass(), SimplifyPass()])
        plans = make_plans(m.analysis, args.plans, args.seed)
        lowered, emitted_graphs = {}, {}
        for i, (kind, plan) in enumerate(plans):
            lowered[i] = lower(m.onnx_model, m.analysis, plan)
            emitted_graphs[i] = Graph.from_model(lowered[i], m.image_shape)
        log(f"{m.name}: {len(plans)} plans lowered")
        rows = []
        for batch in batches:
            base_pred = float(cost.estimate(plan_workloads(m.analysis, [None], batch=batch))[0])
            # As adans-compile measures: each plan against the baseline,
            # interleaved, minimum of the repetitions. Other jobs share this
            # machine in bursts, so every pair is timed in `passes` separate
            # passes over all plans and the minimum over the passes is kept.
            timings: dict[int, dict] = {}
            for _ in range(args.passes):
                for i in lowered:
                    t = compare_latency({"baseline": baseline, "plan": lowered[i]}, m.image_shape, batch, threads=threads,
                                        min_repeats=10, max_repeats=100000, time_budget_s=args.budget / args.passes)
                    best = timings.setdefault(i, {})
                    for k, v in t.items():
                        if k not in best or v.min_ms < best[k].min_ms:
                            best[k] = v
            runtime = json.loads(Path(lut).read_text())["runtime"]
            for i, (kind, plan) in enumerate(plans):
                t = timings[i]
                context = in_context_ms(lowered[i], m.image_shape, batch, threads, runtime, budget_s=args.budget / 2)
                search_work = plan_workloads(m.analysis, [plan], batch=batch)
                search_pred = float(cost.estimate(search_work)[0])
                raw_pred = float(raw.estimate(search_work)[0])
                emitted_pred = float(cost.estimate([graph_workload(emitted_graphs[i], batch=batch)])[0])
                row = {
                    "plan": i, "kind": kind, "batch": batch,
                    "kept_channels": {p.group: len(p.keep) for p in plan.pruning},
                    "predicted_ms": search_pred, "predicted_uncalibrated_ms": raw_pred, "predicted_emitted_ms": emitted_pred,
                    "measured_ms": t["plan"].min_ms, "measured_median_ms": t["plan"].median_ms,
                    "baseline_measured_ms": t["baseline"].min_ms, "baseline_predicted_ms": base_pred,
                    "repeats": t["plan"].repeats, "in_context_ms": context,
                }
                rows.append(row)
                log(f"{m.name} plan {i:2d} b{batch} ({kind}): predicted {search_pred:7.3f} ms "
                    f"(emitted graph {emitted_pred:7.3f}), measured {row['measured_ms']:7.3f} ms "
                    f"[{100 * (search_pred / row['measured_ms'] - 1):+5.1f}%], baseline {row['baseline_measured_ms']:.3f} "
                    f"(predicted {base_pred:.3f}), {row['repeats']} repeats; in-context kernels {context:.3f} ms")
        summary = {}
        for batch in batches:
            sel = [r for r in rows if r["batch"] == batch]
            pred = [r["predicted_ms"] for r in sel]
            meas = [r["measured_ms"] for r in sel]
            sp_pred = [r["baseline_predicted_ms"] / r["predicted_ms"] for r in sel]
            sp_meas = [r["baseline_measured_ms"] / r["measured_ms"] for r in sel]
            forms = [abs(r["predicted_emitted_ms"] - r["predicted_ms"]) / r["predicted_ms"] for r in sel]
            raw_pred = [r["predicted_uncalibrated_ms"] for r in sel]
            summary[batch] = {
                "plans": len(sel),
                "latency_error": percentile_errors(pred, meas),
                "latency_error_uncalibrated": percentile_errors(raw_pred, meas),
                "in_context_error": percentile_errors(raw_pred, [r["in_context_ms"] for r in sel]),
                "speedup_error": percentile_errors(sp_pred, sp_meas),
                "search_vs_emitted_graph_max_rel_diff": float(max(forms)),
                "baseline_measured_ms": float(np.median([r["baseline_measured_ms"] for r in sel])),
                "baseline_predicted_ms": sel[0]["baseline_predicted_ms"],
                "baseline_predicted_uncalibrated_ms": float(raw.estimate(plan_workloads(m.analysis, [None], batch=batch))[0]),
                "baseline_measured_range_ms": [float(min(r["baseline_measured_ms"] for r in sel)),
                                               float(max(r["baseline_measured_ms"] for r in sel))],
                "measured_ms_range": [float(min(meas)), float(max(meas))],
            }
        results["models"][m.name] = {"rows": rows, "summary": summary}
    results["total_s"] = time.perf_counter() - start
    return results


def machine() -> dict:
    import onnxruntime as ort

    from targets import load_target

    t = load_target("host")
    return {"cpu": t.cpu_model, "cores": t.cores, "simd_bits": t.simd_width_bits, "onnxruntime": ort.__version__,
            "python": platform.python_version()}


def markdown(results: dict, args, command: str) -> str:
    m = machine()
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores (SIMD {m['simd_bits']} bit), shared with other work; "
        f"ONNX Runtime {m['onnxruntime']}, CPUExecutionProvider, {args.threads or m['cores']} threads  ",
        f"Date: {dt.date.today().isoformat()}; profiling took {results['profile_s'] / 60:.1f} min, "
        f"the whole benchmark {results['total_s'] / 60:.1f} min.  ",
        f"Target batch: {max(args.batches)} (besides batch 1).",
        "",
        "Each Plan is lowered exactly as `adans-compile` emits it (prune, check, onnxsim) and its latency predicted "
        "by `make_cost_model(\"latency\", host, lut_path=...)` from the unfused search graph, every kernel from the "
        "table (`missing=\"error\"`). *Measured*: minimum over repetitions interleaved with the baseline "
        f"(`measure.compare_latency`, as `adans-compile` measures), {args.passes} passes over all plans "
        f"({args.budget:g} s per plan and batch in all), each pair keeping its minimum over the passes. "
        "Latency error = |predicted - measured| / measured (the table alone, as `adans-compile` uses it by "
        "default); *with calibration*: predictions scaled by the ratio measured/predicted of the whole baseline, "
        "taken once at the end of profiling. *Speedup error*: predicted vs measured baseline/plan ratio (load on "
        "the machine that slows both cancels). *In-context kernels*: the plan profiled by ONNX Runtime inside the "
        "whole model (sum over nodes of each node's minimum, plus the table's per-node and per-run costs) against "
        "the prediction: the model's own error, without the machine's.",
        "",
        "| model | batch | plans | latency error median | p90 | max | with calibration: median | p90 | "
        "speedup error median | p90 | vs in-context kernels: median | p90 | baseline measured (range) / predicted, ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        for batch, s in r["summary"].items():
            lu, lc, se, ic = s["latency_error_uncalibrated"], s["latency_error"], s["speedup_error"], s["in_context_error"]
            lo, hi = s["baseline_measured_range_ms"]
            lines.append(
                f"| {name} | {batch} | {s['plans']} | {lu['median']:.1%} | {lu['p90']:.1%} | {lu['max']:.1%} | "
                f"{lc['median']:.1%} | {lc['p90']:.1%} | {se['median']:.1%} | {se['p90']:.1%} | "
                f"{ic['median']:.1%} | {ic['p90']:.1%} | {s['baseline_measured_ms']:.2f} ({lo:.2f}-{hi:.2f}) / "
                f"{s['baseline_predicted_uncalibrated_ms']:.2f} |"
            )
        forms = max(s["search_vs_emitted_graph_max_rel_diff"] for s in r["summary"].values())
        lines.append(f"| {name}: search graph vs emitted graph, largest relative difference of the prediction: "
                     f"{forms:.2e} | | | | | | | | | | | | |")
    lines += ["", "Targets: median <= 5 %, p90 <= 10 %."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's own section of BENCHMARKS.md (or append it); other sections stay as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION in old:
        start = old.index(SECTION)
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[nxt + 1:] if nxt != -1 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--plans", type=int, default=24)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int)
    p.add_argument("--budget", type=float, default=4.0, help="seconds of interleaved timing (plan vs baseline) per plan and batch")
    p.add_argument("--passes", type=int, default=3, help="passes over all plans; each pair keeps its minimum over them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lut", default="/tmp/adans-bench/host.json")
    p.add_argument("--skip-profile", action="store_true", help="use the table at --lut as it is")
    p.add_argument("--fresh", action="store_true", help="profile from scratch instead of resuming --lut")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--json", help="write every row here")
    p.add_argument("--write", help="BENCHMARKS.md to update (own section only)")
    args = p.parse_args(argv)
    command = shlex.join(["python", "tools/bench_latency.py", *(sys.argv[1:] if argv is None else argv)])
    results = run(args)
    text = markdown(results, args, command)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.write:
        write_section(Path(args.write), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
