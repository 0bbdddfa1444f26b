"""Summaries and the BENCHMARKS.md section of the sampler benchmark.

Input: the JSON-lines result records written by tools/bench_samplers.py, one
per (part, problem, method, seed), each holding the score of every proposal
in order ("f"), so any "best score after n evaluations" can be recomputed.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

SECTION_TITLE = "## Samplers (issue 3)"


# -- statistics ----------------------------------------------------------------


def best_so_far(f: Sequence[float]) -> np.ndarray:
    return np.maximum.accumulate(np.asarray(f, dtype=np.float64))


def group(records: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return "–"
    return f"{_fmt(values.mean(), digits)} ± {_fmt(values.std(ddof=1) if values.size > 1 else 0.0, digits)}"


def _fmt(value: float, digits: int) -> str:
    """Fixed decimals in the range scores live in, scientific notation outside it."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}f}"
    return f"{value:.{max(digits - 1, 1)}e}"


def evaluations_to_reach(f: Sequence[float], target: float) -> float:
    """1-based index of the first proposal whose best-so-far reaches target (inf if never)."""
    hits = np.flatnonzero(best_so_far(f) >= target)
    return float(hits[0] + 1) if hits.size else math.inf


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def complete_seeds(records: list[dict], methods: Sequence[str]) -> list[dict]:
    """Only the (problem, seed) pairs every method has finished: a run stopped midway
    must not compare methods over different seeds."""
    have = group(records, "problem", "seed")
    keep = {k for k, runs in have.items() if {r["method"] for r in runs} >= set(methods)}
    return [r for r in records if (r["problem"], r["seed"]) in keep]


def seed_counts(records: list[dict]) -> str:
    """'20 seeds' or, if problems differ, 'bump-300d: 5 seeds, ...'."""
    counts = {p: len({r["seed"] for r in runs}) for (p,), runs in group(records, "problem").items()}
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} seeds"
    return ", ".join(f"{p}: {n} seeds" for p, n in counts.items())


def seed_table(records: list[dict], methods: Sequence[str]) -> str:
    """Seeds finished per method and problem (when methods ran different numbers of seeds)."""
    problems = list(dict.fromkeys(r["problem"] for r in records))
    by_cell = group(records, "method", "problem")
    rows = [[m] + [str(len(by_cell.get((m, p), []))) for p in problems] for m in ordered_methods(records, methods)]
    return table(["seeds"] + problems, rows)


def ordered_methods(records: Iterable[dict], methods: Sequence[str]) -> list[str]:
    present = {r["method"] for r in records}
    return [m for m in methods if m in present]


# -- per-part tables ---------------------------------------------------------------


def part1_table(records: list[dict], methods: Sequence[str], checkpoints: Sequence[int], epsilon: float) -> str:
    """Per problem: seeds whose best is within epsilon of f* after n evaluations, and the final best."""
    by_cell = group(records, "problem", "method")
    header = ["problem", "method"] + [f"found global @{n}" for n in checkpoints] + [f"best f @{checkpoints[-1]}"]
    rows = []
    for problem in dict.fromkeys(r["problem"] for r in records):  # in run order
        for m in ordered_methods(records, methods):
            runs = by_cell.get((problem, m), [])
            if not runs:
                continue
            cells = []
            for n in checkpoints:
                hits = sum(best_so_far(r["f"])[n - 1] >= r["f_star"] - epsilon for r in runs)
                cells.append(f"{hits}/{len(runs)}")
            rows.append([problem, m] + cells + [mean_std([best_so_far(r["f"])[checkpoints[-1] - 1] for r in runs])])
    return table(header, rows)


def part2_table(records: list[dict], methods: Sequence[str], checkpoints: Sequence[int], family: str) -> str:
    """Best f / f* after n evaluations (mean ± sd over seeds), per dimension."""
    mine = [r for r in records if r["problem"].startswith(family + "-")]
    problems = sorted({r["problem"] for r in mine}, key=lambda p: int(re.search(r"(\d+)d$", p).group(1)))
    by_cell = group(mine, "problem", "method")
    header = ["method"] + [f"{p.split('-')[1]} @{n}" for p in problems for n in checkpoints]
    rows = []
    for m in ordered_methods(mine, methods):
        cells = []
        for p in problems:
            runs = by_cell.get((p, m), [])
            for n in checkpoints:
                cells.append(mean_std([best_so_far(r["f"])[n - 1] / r["f_star"] for r in runs]))
        rows.append([m] + cells)
    return table(header, rows)


def wall_table(records: list[dict], methods: Sequence[str]) -> str:
    """Mean wall seconds per run: the method's own overhead (these objectives cost nothing)."""
    dims = sorted({r["dim"] for r in records})
    by_cell = group(records, "method", "dim")
    rows = [
        [m] + [f"{np.mean([r['wall_s'] for r in by_cell[(m, d)]]):.1f}" if (m, d) in by_cell else "–" for d in dims]
        for m in ordered_methods(records, methods)
    ]
    return table(["method"] + [f"s/run d={d}" for d in dims], rows)


def reach_summary(runs: list[dict], target: float) -> tuple[float, int]:
    """(median evaluations to reach target over seeds — inf if most never do, seeds that did)."""
    needed = [evaluations_to_reach(r["f"], target) for r in runs]
    return float(np.median(needed)), sum(math.isfinite(n) for n in needed)


def best_feasible(run: dict) -> tuple[float, float] | None:
    """(MACs ratio, val accuracy) of the best-scoring feasible proposal of a run."""
    feasible = [i for i, ok in enumerate(run["feasible"]) if ok]
    if not feasible:
        return None
    i = max(feasible, key=lambda j: run["f"][j])
    return run["cost_ratio"][i], run["accuracy"][i]


def final_median(records: list[dict], method: str) -> float | None:
    """Median over seeds of a method's final best score (the issue's reference for TPE)."""
    finals = [max(r["f"]) for r in records if r["method"] == method]
    return float(np.median(finals)) if finals else None


def tpe_target(records: list[dict]) -> float | None:
    return final_median(records, "tpe")


def part3_table(records: list[dict], methods: Sequence[str], checkpoints: Sequence[int]) -> str:
    """Best score vs evaluations, the best feasible plan, and evaluations to reach two references."""
    total = checkpoints[-1]
    targets = {"TPE": final_median(records, "tpe"), "AdaNS-Gaussian": final_median(records, "adans-gaussian")}
    targets = {name: value for name, value in targets.items() if value is not None}
    by_method = group(records, "method")
    header = (
        ["method", "seeds"]
        + [f"best f @{n}" for n in checkpoints]
        + ["MACs ratio of best feasible", "its val acc %"]
        + [f"evals to {name}'s final best (median, seeds reaching)" for name in targets]
    )
    rows = []
    for m in ordered_methods(records, methods):
        runs = by_method[(m,)]
        found = [b for b in map(best_feasible, runs) if b is not None]
        reach = []
        for target in targets.values():
            median, reached = reach_summary(runs, target)
            reach.append(f"{int(median) if math.isfinite(median) else f'> {total}'} ({reached}/{len(runs)})")
        rows.append(
            [m, str(len(runs))]
            + [mean_std([best_so_far(r["f"])[n - 1] for r in runs], 4) for n in checkpoints]
            + [
                mean_std([b[0] for b in found]) + ("" if len(found) == len(runs) else f" ({len(found)} seeds)"),
                mean_std([b[1] for b in found], 2),
            ]
            + reach
        )
    return table(header, rows)


def behaviour_table(records: list[dict], methods: Sequence[str]) -> str:
    """How each method spent its budget, and the AdaNS loop's own diagnostics."""
    by_method = group(records, "method")
    header = [
        "method",
        "distinct designs / proposals",
        "feasible proposals",
        "α_t it 1 → mid → last",
        "#S_g last",
        "mean f(S_g) last",
        "e_avg median it 1 → mid → last",
    ]
    rows = []
    for m in ordered_methods(records, methods):
        runs = by_method[(m,)]
        distinct = np.mean([r["n_distinct"] / len(r["f"]) for r in runs])
        feasible = np.mean([np.mean(r["feasible"]) for r in runs]) if "feasible" in runs[0] else None
        alpha = n_good = mean_good = e_avg = "–"
        if runs[0].get("summaries"):
            its = [r["summaries"] for r in runs]
            picks = _picks(len(its[0]))
            alpha = " → ".join(f"{np.mean([it[k]['alpha'] for it in its]):.2f}" for k in picks)
            n_good = f"{np.mean([it[-1]['n_good'] for it in its]):.0f}"
            mean_good = _fmt(float(np.mean([it[-1]["mean_good_f"] for it in its])), 3)
            e_avg = " → ".join(_fmt(_median_e(its, k), 2) for k in picks)
        rows.append([m, f"{distinct:.0%}", "–" if feasible is None else f"{feasible:.0%}", alpha, n_good, mean_good, e_avg])
    return table(header, rows)


def _picks(n: int) -> list[int]:
    return [1, n // 2, n - 1] if n > 2 else list(range(n))


def _median_e(its: list[list[dict]], k: int) -> float:
    values = [it[k]["e_avg"] for it in its if it[k]["e_avg"] is not None]
    return float(np.median(values)) if values else float("nan")


def feasible_score_range(records: list[dict]) -> tuple[float, float]:
    """(lowest, highest) score of any feasible proposal: how flat f is inside the feasible region."""
    scores = [f for r in records for f, ok in zip(r["f"], r["feasible"]) if ok]
    return min(scores), max(scores)


def best_feasible_cost_means(records: list[dict]) -> dict[str, float]:
    """Mean over seeds of the MACs ratio of each run's best feasible proposal (methods with any)."""
    out = {}
    for (m,), runs in group(records, "method").items():
        found = [b[0] for b in map(best_feasible, runs) if b is not None]
        if found:
            out[m] = float(np.mean(found))
    return out


def final_means(records: list[dict], normalise: bool = False) -> dict[str, float]:
    """Mean final best score (over seeds and problems) per method; optionally f/f*."""
    out = {}
    for (m,), runs in group(records, "method").items():
        out[m] = float(np.mean([max(r["f"]) / (r["f_star"] if normalise else 1.0) for r in runs]))
    return out


def ordering_line(means: dict[str, float], what: str, *, higher_is_better: bool = True) -> str:
    """Does Table I's ordering (Gaussian ≥ Genetic, Zoom ≥ Uniform) hold on these means?"""
    parts = []
    for better, worse in (("adans-gaussian", "adans-genetic"), ("adans-zoom", "adans-uniform")):
        if better in means and worse in means:
            holds = means[better] >= means[worse] if higher_is_better else means[better] <= means[worse]
            sign = {(True, True): "≥", (True, False): "<", (False, True): "≤", (False, False): ">"}[(higher_is_better, holds)]
            parts.append(
                f"{better.removeprefix('adans-')} {_fmt(means[better], 3)} {sign} "
                f"{worse.removeprefix('adans-')} {_fmt(means[worse], 3)} ({'holds' if holds else 'does not hold'})"
            )
    return f"Table I ordering on {what}: " + "; ".join(parts) + "."


# -- the BENCHMARKS.md section ---------------------------------------------------------


def replace_section(path: Path, section: str) -> None:
    """Put `section` (starting with SECTION_TITLE) into the file, leaving other sections alone.

    Re-reads the file immediately before writing: another engineer appends
    their own section to the same file concurrently.
    """
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.split("\n")
    try:
        start = lines.index(SECTION_TITLE)
    except ValueError:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + "\n" + section.rstrip("\n") + "\n" + ("\n" + rest if rest.strip() else "")
    path.write_text(new)
