"""Benchmark of the AdaNS samplers against random search, Optuna TPE and CMA-ES (issue 3).

    python tools/bench_samplers.py --part 1|2|3|all [--seeds N] [--out runs/bench_samplers] [--write-md]
        [--methods adans-adans,adans-gaussian,...] [--problems corner-20d,...] [--md-out FILE]

Parts (details in BENCHMARKS.md, section "Samplers (issue 3)"):
  1  a 2-D multi-modal function with one narrow global peak and broad decoys:
     which methods find the global maximum;
  2  bounded 20-, 100- and 300-D functions with known maxima (a shifted bump,
     and a pruning-like objective whose optimum sits in a corner on the
     feasibility boundary): best score vs evaluations;
  3  the real objective: structured pruning of CIFAR ResNet-20 on CPU with
     the compile pipeline's score, box and initial batch.

Every (part, problem, method, seed) cell is appended to OUT/part<k>.jsonl as
soon as it finishes; a rerun skips the cells already there, so a killed run
loses at most the cell in progress (part 3 also keeps an on-disk cache of
plan accuracies, so even that cell is mostly free to redo). --write-md alone
renders whatever has been collected into BENCHMARKS.md (--md-out FILE: into
FILE instead). --methods and --problems restrict a run to some cells, e.g.
to add a new sampler to results collected before it existed.
"""

from __future__ import annotations

import os

# Before numpy is imported: multithreaded BLAS on a shared 2-core machine is
# slower, not faster, for the small matrices of the synthetic parts.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_samplers_* helpers

import bench_samplers_problems as problems  # noqa: E402
import bench_samplers_report as report  # noqa: E402
from bench_samplers_methods import METHODS, Budget, Trace, parse_method, run_method  # noqa: E402

from adans_toolchain.search.samplers import ScoreParts, make_sampler  # noqa: E402

OPTUNA = ("tpe", "cmaes")

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "tools" / "figures" / "bench_samplers_2d_gaussian.png"
# Part 3 variants of AdaNS-Gaussian tried when it misses the target
# (run with --ablations, after the main cells): a tighter cap on α_t — every
# feasible plan scores within ~7 % of the best, so at α_max 0.95 S_g keeps all
# of them — and more, smaller batches at the same total.
ABLATIONS = ("adans-gaussian+alpha_max=0.99", "adans-gaussian+batch=10")
EPSILON_2D = 0.05  # "found the global maximum": best f within this of f* (decoys top out ~0.2 lower)


@dataclass(frozen=True)
class Task:
    """One objective as the methods see it."""

    name: str
    fn: Callable
    lower: np.ndarray
    upper: np.ndarray
    f_star: float | None = None  # None: unknown (the real objective)
    init: Callable[[int], np.ndarray | None] = lambda seed: None
    key: Callable[[np.ndarray], str] | None = None  # what makes two proposals the same design
    parts: ScoreParts | None = None  # how the score splits into accuracy and exact cost, where it does


@dataclass(frozen=True)
class Part:
    number: int
    title: str
    budget: Budget
    seeds: int  # default number of seeds
    problem_names: Callable[[argparse.Namespace], tuple[str, ...]]
    checkpoints: tuple[int, ...]  # evaluation counts reported in the tables
    tasks: Callable[[argparse.Namespace], list[Task]] = field(repr=False)
    # Run the Optuna methods after every other cell, and report each method
    # over the seeds it finished: where Optuna's own cost dominates (part 2),
    # the cheap methods then get all their seeds even if Optuna cannot.
    optuna_last: bool = False


# -- the tasks of each part --------------------------------------------------------


def _synthetic_task(problem: problems.Problem) -> Task:
    return Task(problem.name, problem.fn, problem.lower, problem.upper, problem.f_star, parts=problem.parts)


def part1_tasks(args: argparse.Namespace) -> list[Task]:
    return [_synthetic_task(p) for p in problems.multimodal_2d_problems()]


def part2_tasks(args: argparse.Namespace) -> list[Task]:
    return [_synthetic_task(p) for p in problems.high_dim_problems()]


_PRUNING = {}  # the built objective, shared by every cell of part 3 in this process


def pruning_objective(args: argparse.Namespace):
    import bench_samplers_pruning as pruning

    if "objective" not in _PRUNING:
        _PRUNING["objective"] = pruning.build(Path(args.out), args.val_size, args.threads)
    return _PRUNING["objective"]


def part3_tasks(args: argparse.Namespace) -> list[Task]:
    objective = pruning_objective(args)
    batch = PARTS[3].budget.batch
    return [
        Task(
            pruning_problem_name(args),
            objective,
            objective.lower,
            objective.upper,
            init=lambda seed: objective.initial_batch(batch, seed),
            key=objective.key,
            parts=objective.parts,
        )
    ]


def pruning_problem_name(args: argparse.Namespace) -> str:
    # The validation size changes the objective: never mix runs of two sizes.
    return f"resnet20-ps-val{args.val_size}"


PARTS = {
    1: Part(1, "2-D multi-modal function", Budget(20, 20), 20, lambda args: tuple(f"bumps-2d-{v}" for v in problems.PEAK_WIDTHS_2D), (100, 200, 400), part1_tasks),
    2: Part(
        2,
        "bounded high-dimensional functions",
        # 500 evaluations: Optuna's TPE alone needs 2-15 min per 500-trial run at
        # d = 300 on this shared machine (its own model, not the objective) and
        # grows ~quadratically with the budget.
        Budget(25, 20),
        10,
        lambda args: tuple(f"{family}-{d}d" for d in problems.HIGH_DIMS for family in problems.HIGH_DIM_FAMILIES),
        (100, 250, 500),
        part2_tasks,
        optuna_last=True,
    ),
    3: Part(3, "ResNet-20 structured pruning (CPU)", Budget(20, 15), 5, lambda args: (pruning_problem_name(args),), (20, 100, 200, 300), part3_tasks),
}


# -- results on disk -----------------------------------------------------------------


class ResultStore:
    """OUT/part<k>.jsonl: one finished cell per line, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = load_records(path)

    def done(self, problem: str, method: str, seed: int, budget: Budget) -> bool:
        return any(
            (r["problem"], r["method"], r["seed"], tuple(r["budget"])) == (problem, method, seed, (budget.batch, budget.iterations))
            for r in self.records
        )

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def load_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().split("\n"):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # empty, or the last line of a run killed mid-write: that cell reruns
    return records


def make_record(part: Part, task: Task, method: str, seed: int, trace: Trace) -> dict:
    record = {
        "part": part.number,
        "problem": task.name,
        "method": method,
        "seed": seed,
        "budget": [part.budget.batch, part.budget.iterations],
        "dim": int(task.lower.size),
        "f_star": task.f_star,
        "f": trace.f,
        "n_distinct": len(set(trace.x_keys)),
        "summaries": trace.iterations,
        "wall_s": trace.wall_s,
    }
    if trace.infos and "feasible" in trace.infos[0]:
        for name in ("accuracy", "cost_ratio", "feasible"):
            record[name] = [info[name] for info in trace.infos]
    return record


# -- running ---------------------------------------------------------------------------


def run_part(part: Part, args: argparse.Namespace) -> None:
    store = ResultStore(Path(args.out) / f"part{part.number}.jsonl")
    seeds = range(args.seeds or part.seeds)
    # Seed-major (problems cheapest first within a seed): a run stopped early
    # leaves every problem with about the same number of seeds, each run by
    # every method. Ablations only after every main cell.
    groups = [METHODS] + ([ABLATIONS] if args.ablations and part.number == 3 else [])
    if part.optuna_last:
        groups = [tuple(m for m in METHODS if m not in OPTUNA), OPTUNA]
    if args.methods:
        groups = [tuple(m for m in methods if m in args.methods) for methods in groups]
        groups.append(tuple(m for m in args.methods if not any(m in methods for methods in groups)))
    pending = [
        (name, method, seed)
        for methods in groups
        for seed in seeds
        for name in part.problem_names(args)
        for method in methods
        if (not args.problems or name in args.problems) and not store.done(name, method, seed, part.budget)
    ]
    unknown = sorted(set(args.problems or ()) - set(part.problem_names(args)))
    if unknown:
        log(f"part {part.number} has no problem {', '.join(unknown)}; its problems: {', '.join(part.problem_names(args))}")
    log(f"part {part.number} ({part.title}): {len(pending)} cells to run, budget {part.budget.total} evaluations each")
    if pending:
        tasks = {t.name: t for t in part.tasks(args)}  # built only when needed (part 3 loads a model)
        started = time.time()
        for i, (name, method, seed) in enumerate(pending):
            task = tasks[name]
            trace = run_method(
                method, task.fn, task.lower, task.upper, part.budget, seed, init=task.init(seed), key=task.key,
                parts=task.parts,
            )
            store.append(make_record(part, task, method, seed, trace))
            log(
                f"  [{i + 1}/{len(pending)}] {name} {method} seed {seed}: best {max(trace.f):.4g} "
                f"({trace.wall_s:.1f} s; {time.time() - started:.0f} s so far)"
            )
    record_meta(part, args)
    if part.number == 1:
        write_2d_figure(part)


def write_2d_figure(part: Part) -> None:
    """The paper's Fig. 10 view: AdaNS-Gaussian's samples over the 2-D function (seed 0)."""
    from adans_toolchain.search import maximize
    from adans_toolchain.reporting.plots import plot_samples_2d

    problem = problems.multimodal_2d("narrow")
    result = maximize(problem.fn, 2, sampler="gaussian", samples=part.budget.batch, iterations=part.budget.iterations, seed=0)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    plot_samples_2d(result.history, problem.fn, problem.lower, problem.upper, FIGURE, resolution=100)
    log(f"  figure: {FIGURE.relative_to(ROOT)}")


def record_meta(part: Part, args: argparse.Namespace) -> None:
    """What --write-md needs besides the records: the command, when, and part 3's setting."""
    path = Path(args.out) / "meta.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(path.read_text()) if path.is_file() else {}
    entry = {
        "command": "OPENBLAS_NUM_THREADS=1 python tools/bench_samplers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    if part.number == 3 and "objective" in _PRUNING:
        entry["setting"] = _PRUNING["objective"].setting()
    meta[f"part{part.number}"] = {**meta.get(f"part{part.number}", {}), **entry}
    path.write_text(json.dumps(meta, indent=1))


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("adans", "numpy", "scipy", "torch", "optuna", "cmaes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def log(message: str) -> None:
    print(f"{datetime.now().strftime('%H:%M:%S')} {message}", flush=True)


# -- BENCHMARKS.md ---------------------------------------------------------------------


def render(args: argparse.Namespace) -> str:
    out = Path(args.out)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    records = {}
    for k, part in PARTS.items():
        mine = [r for r in load_records(out / f"part{k}.jsonl") if r["problem"] in part.problem_names(args)]
        # With --methods, a seed counts once those methods have finished it.
        records[k] = mine if part.optuna_last else report.complete_seeds(mine, args.methods or METHODS)
    any_meta = next(iter(meta.values()), {})
    m = any_meta.get("machine", machine())
    lines = [
        report.SECTION_TITLE,
        "",
        "AdaNS samplers against plain random search, Optuna TPE and Optuna CMA-ES at equal evaluation budgets "
        "(`tools/bench_samplers.py`; raw per-proposal scores in `runs/bench_samplers/part*.jsonl`).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, shared with other work (wall times are indicative only); "
        f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "- Commands and dates: "
        + "; ".join(f"part {k[-1]}: `{v['command']}` ({v['finished']})" for k, v in sorted(meta.items()))
        + ".",
        "- Methods. `adans-<sampler>`: `maximize` (Algorithm 1, α_max 0.95) with b samples per iteration and T "
        "iterations; `adans-uniform` is our uniform sampler inside that loop. `random`: b uniform samples per "
        "batch, T batches. `tpe`: Optuna `TPESampler(multivariate=True)`; `cmaes`: Optuna `CmaEsSampler` "
        "(default population 4 + 3 ln d, σ0 = 1/6 of the box); both plain sequential ask/tell, one evaluation "
        "per trial, for the same total number of evaluations b·T. Every method's count is the number of points "
        "it proposed (duplicates and cache hits included).",
        "- Spread: mean ± sample standard deviation over seeds; seed s drives every random choice of a method.",
        "",
    ]
    for number, part in PARTS.items():
        if records[number]:
            lines += PART_RENDERERS[number](part, records[number], meta.get(f"part{number}", {}))
    return "\n".join(lines)


def render_part1(part: Part, records: list[dict], meta: dict) -> list[str]:
    variants = problems.multimodal_2d_problems()
    decoy = max(problems.best_decoy_2d(p) for p in variants)
    peaks = ", ".join(f"`{p.name}`: σ = {problems.PEAK_WIDTHS_2D[p.name.rsplit('-', 1)[1]]}, f* = {p.f_star:.4f}" for p in variants)
    return [
        f"### 1. {part.title}",
        "",
        f"f on [0,1]² is a sum of Gaussian bumps (`tools/bench_samplers_problems.py`): one tall peak at "
        f"(0.82, 0.18) holding the global maximum ({peaks}) and four broad decoys (σ 0.08–0.14, local maxima up to "
        f"{decoy:.3f}) covering most of the box. \"Found global\" = best f ≥ f* − {EPSILON_2D} (only the tall peak "
        f"reaches that), counted over seeds; b = {part.budget.batch}, T = {part.budget.iterations}, no initial "
        f"batch (iteration 0 is uniform for every AdaNS sampler); {report.seed_counts(records)}.",
        "",
        report.part1_table(records, METHODS, part.checkpoints, EPSILON_2D),
        "",
        "How the budget was spent (mean over both variants and all seeds):",
        "",
        report.behaviour_table(records, METHODS),
        "",
        report.ordering_line(report.final_means(records), "part 1 (mean final best f over both variants)"),
        "",
        f"![AdaNS-Gaussian samples on bumps-2d-narrow, seed 0]({FIGURE.relative_to(ROOT)})",
        "",
    ]


def render_part2(part: Part, records: list[dict], meta: dict) -> list[str]:
    lines = [
        f"### 2. {part.title}",
        "",
        f"Best f / f* after n evaluations (1 = the known maximum), b = {part.budget.batch}, T = "
        f"{part.budget.iterations}, box [0,1]^d, no initial batch. Each method is reported over the seeds it "
        f"finished (seeds 0, 1, … in order; table at the end): Optuna's TPE needs up to 15 min per run at d = 300 "
        f"on this shared machine, so it has fewer seeds there than the AdaNS samplers.",
        "",
        "- `bump`: exp(−q/(2·0.1²)), q the weighted *mean* squared distance to a centre drawn in [0.2, 0.8]^d "
        "(weights spread over a decade); the mean keeps the contrast the same at every d. f* = 1.",
        "- `corner`: a pruning-like objective scored with the compiler's own `AdaNSScore` (2-point allowed "
        "drop): cost falls by Σ m_j x_j, accuracy by Σ a_j x_j² points (a_j over three decades, Σ a_j = 30), so "
        "a random x is infeasible by several points and scores ~1e-3. The optimum (KKT, exact) lies on the "
        "feasibility boundary with about half of the coordinates at the box corner x_j = 1; f(0) = 0.5·f*.",
        "",
    ]
    for family in problems.HIGH_DIM_FAMILIES:
        lines += [f"`{family}`:", "", report.part2_table(records, METHODS, part.checkpoints, family), ""]
    lines += [
        "Wall seconds per run (the objective costs nothing here, so this is each method's own overhead):",
        "",
        report.wall_table(records, METHODS),
        "",
        report.ordering_line(report.final_means(records, normalise=True), "part 2 (mean final f/f* over all runs above)"),
        "",
        report.seed_table(records, METHODS),
        "",
    ]
    return lines


def render_part3(part: Part, records: list[dict], meta: dict) -> list[str]:
    s = meta.get("setting", {})
    target = report.tpe_target(records)
    total = part.budget.total
    by_method = report.group(records, "method")
    gaussian = by_method.get(("adans-gaussian",), [])
    verdict = "not measured"
    if target is not None and gaussian:
        median, reached = report.reach_summary(gaussian, target)
        met = median <= total / 3
        verdict = (
            f"TPE's final best (median over seeds) is f = {target:.4f}; AdaNS-Gaussian reaches it after a median "
            f"of {int(median) if median != float('inf') else f'more than {total}'} evaluations ({reached}/"
            f"{len(gaussian)} seeds) against the target of ≤ {total // 3} (one third of TPE's {total}): target "
            f"**{'met' if met else 'not met'}**."
        )
    theta = s.get("theta", [])
    low, high = report.feasible_score_range(records)
    lines = [
        f"### 3. {part.title}",
        "",
        f"Structured channel pruning of the bundled CIFAR ResNet-20 ({len(theta)} prunable channel groups), "
        f"built from library pieces as `adans_toolchain/pipeline.py` does: Taylor channel priorities, MACs cost "
        f"model, `AdaNSScore` with threshold = baseline − 2 points and floor 2 (so every feasible plan scores "
        f"exp(ΔMACs)/2 and the search maximises MAC reduction under the constraint), box [0, θ] from "
        f"`characterise_boundary`. Validation: the first {s.get('val_images', '?')} images of "
        f"`cifar10_val_1000.npz` (training images; baseline {s.get('baseline_val', float('nan')):.1f} %, "
        f"threshold {s.get('threshold', float('nan')):.1f} %); accuracy before any fine-tuning or BN "
        f"re-estimation. θ = {theta} (mean {np.mean(theta) if theta else float('nan'):.2f}); diagonal scale "
        f"{s.get('diagonal_scale', float('nan')):.3f}.",
        "",
        f"b = {part.budget.batch}, T = {part.budget.iterations} ({total} evaluations per run), {report.seed_counts(records)}. Every AdaNS sampler "
        f"gets the pipeline's initial batch for its seed as iteration 0 (the diagonal anchor, jitter around it and "
        f"the paper's N(θ/2, θ/2) samples); TPE and CMA-ES get the same {part.budget.batch} points as completed "
        f"trials inside their budget, and CMA-ES starts from the best of them; `random` gets no initial batch "
        f"(plain random search in the θ box), so `random` vs `adans-uniform` isolates the value of the initial "
        f"batch. Accuracies are cached on disk by plan and shared by all methods and seeds "
        f"({s.get('cached_plans', '?')} distinct plans evaluated in all, "
        f"{s.get('eval_s_per_plan_this_run', float('nan')):.2f} s per uncached plan in the last run, torch "
        f"threads {s.get('threads', '?')}).",
        "",
        report.part3_table(records, METHODS, part.checkpoints),
        "",
        "How each method spent its budget (a design = a distinct plan; AdaNS diagnostics per iteration, mean "
        "over seeds; e_avg = mean |f − f̃|/|f| of the reconstruction, median over seeds):",
        "",
        report.behaviour_table(records, METHODS),
        "",
        f"- Issue target: {verdict}",
        f"- Every feasible proposal scored between {low:.4f} and {high:.4f} (ratio {low / high:.3f}): with "
        f"α_max = 0.95 the good set S_g soon holds nearly every feasible sample within ~5 points of MAC "
        f"reduction of the best (#S_g column above) instead of the best b.",
        "- " + report.ordering_line(report.final_means(records), "the final best score (mean over seeds)"),
        "- "
        + report.ordering_line(
            report.best_feasible_cost_means(records), "the MACs ratio of the best feasible plan (mean over seeds)", higher_is_better=False
        ),
        "- ResNet-56 on GPU: not run — this session had no GPU.",
        "",
    ]
    if any(r["method"] in ABLATIONS for r in records):
        lines += [
            "What was tried for AdaNS-Gaussian (same seeds, init and budget; `+alpha_max=0.99`: the loop's cap on "
            "α_t raised from 0.95; `+batch=10`: b = 10 after the 20-point initial batch, 29 iterations):",
            "",
            report.part3_table(records, ("adans-gaussian",) + ABLATIONS + ("tpe",), part.checkpoints),
            "",
        ]
    return lines


PART_RENDERERS = {1: render_part1, 2: render_part2, 3: render_part3}


# -- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["1", "2", "3", "all"], help="which part to run (omit to only --write-md)")
    parser.add_argument("--seeds", type=int, help="seeds per cell (default: part 1: 20, part 2: 10, part 3: 5)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_samplers"), help="results folder")
    parser.add_argument("--write-md", action="store_true", help="render the collected results into BENCHMARKS.md")
    parser.add_argument("--md-out", help="with --write-md: write the section to this file instead of BENCHMARKS.md")
    parser.add_argument("--methods", type=_names, help=f"comma separated subset of {', '.join(METHODS)} (or variants)")
    parser.add_argument("--problems", type=_names, help="comma separated subset of the part's problems")
    parser.add_argument("--ablations", action="store_true", help=f"part 3: also run {', '.join(ABLATIONS)}")
    parser.add_argument("--val-size", type=int, default=250, help="part 3: validation images (first N of cifar10_val_1000.npz)")
    parser.add_argument(
        "--threads", type=int, default=1, help="part 3: torch threads (2 was 2-3x slower than 1 on the shared 2-core machine)"
    )
    args = parser.parse_args(argv)
    if args.part is None and not args.write_md:
        parser.error("nothing to do: give --part and/or --write-md")
    if args.part:
        for number in PARTS if args.part == "all" else [int(args.part)]:
            run_part(PARTS[number], args)
    if args.write_md:
        if args.md_out:
            Path(args.md_out).write_text(render(args) + "\n")
            log(f"wrote section {report.SECTION_TITLE!r} to {args.md_out}")
        else:
            report.replace_section(ROOT / "BENCHMARKS.md", render(args))
            log(f"wrote section {report.SECTION_TITLE!r} of {ROOT / 'BENCHMARKS.md'}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    for name in names:
        base, options = parse_method(name)  # an unknown option fails here, before anything runs
        if base.startswith("adans-"):
            sampler_options = {k: v for k, v in options.items() if k not in ("alpha_max", "batch")}
            make_sampler(base.removeprefix("adans-"), **sampler_options)
    return names


if __name__ == "__main__":
    raise SystemExit(main())
