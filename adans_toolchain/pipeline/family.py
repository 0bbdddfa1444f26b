"""A nested family of models, one per cost budget, from one search (`--budgets B1 B2 ...`, issue 17).

The search (docs/DESIGN.md, "Budgets"):

1. The one-rate rule and the boundary characterisation, as in a single
   compile, against the ordinary accuracy threshold; they bound the search's
   box. Where the box holds no plan cheap enough for the smallest budget it
   is widened towards full compression until it does.
2. One AdaNS phase per budget, largest first, --iterations split among them
   (`search.budgets.split_iterations`), so the search pays what a single
   compile's does. Phase k is scored by `CappedScore`: accuracy, with its
   budget as a cap on cost. Its first batch carries every plan the earlier
   phases evaluated (cache hits: free, and the sampler then sees them scored
   the phase's way) and `--samples` new points aimed at the budget: the most
   accurate plan within the previous budget moved towards full compression
   until its cost is within this one (nested in it by construction), the
   same from the uncompressed model, and jitter around both.
3. Members, largest budget first. Every evaluated plan is a candidate for
   every budget. The member of budget B is the most accurate evaluated plan
   (SEARCH-VAL; ties: the cheaper) whose cost is within B x the baseline's
   and that is nested in the next larger member (keeps a subset of its
   channels: every coordinate's state at least the larger one's). More
   accurate candidates that are not nested are clamped to the larger member
   (coordinate-wise maximum: only lowers cost) and evaluated, at most
   --rescore-top per budget and never more than a single compile's
   evaluations in all. With --holdout, the --rescore-top best nested
   candidates are scored on the held-back images and the most accurate
   there is the member. A smaller member at least as accurate as a larger
   one replaces it (it is within the larger budget too), so accuracy never
   rises as the budget shrinks.
4. With --finetune-epochs and --family-finetune joint (the default), the
   family is fine-tuned as one set of weights (finetune/sandwich.py): the
   distinct members are lowered (BatchNorm separate), the largest member's
   weights are the shared ones, every other member runs them sliced to its
   channels (family.json's indices, in the largest member's numbering), each
   step trains the largest, the smallest and two others drawn at random, and
   each member's BatchNorm statistics are re-estimated afterwards. The
   checkpoint (OUT/state/finetune_family.pt) is written per epoch, so a
   killed compile resumes the fine-tune where it stopped.
5. Each member is lowered, validated, measured and fine-tuned if asked (its
   share of the joint fine-tune, or on its own with --family-finetune
   separate) by the ordinary emission, into OUT/budgets/<B>/; OUT/budgets/
   family.json, family.md and pareto.png describe the family, and with joint
   fine-tuning OUT/budgets/shared_weights.onnx holds the one set of weights
   every member's model_unfolded.onnx slices; OUT's own model, plan and
   report are the largest budget's member.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np

from cost_models import workload_macs

from adans_toolchain.errors import ConfigError, SearchStateError
from adans_toolchain.evaluation.cache import BudgetedAccuracy, CachedAccuracy, EvaluationCache
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text
from adans_toolchain.finetune.sandwich import (
    RANDOM_MEMBERS, STATISTICS_IMAGES, FamilyMember, SandwichFamily, SandwichLog, emit_member, estimate_statistics,
    finetune_family, interpreter_check, shared_slices, shared_weights_model,
)
from adans_toolchain.finetune.train import FinetuneConfig
from adans_toolchain.frontend.training_data import training_sources
from adans_toolchain.lowering.emit import lower_plan, simplify
from adans_toolchain.pipeline import compile as pipeline
from adans_toolchain.pipeline.workspace import Workspace
from adans_toolchain.plan import Plan
from adans_toolchain.plan.workload import plan_workloads
from adans_toolchain.reporting.facts import Accuracies, FinetuneFacts, FinetuneRun
from adans_toolchain.reporting.family import plot_pareto, render_family_markdown
from adans_toolchain.search import maximize
from adans_toolchain.search.boundary import max_boundary_evaluations, one_rate_rule
from adans_toolchain.search.budgets import (
    CappedScore, clamp, is_nested, pareto_front, point_within, rank_candidates, split_iterations,
)
from adans_toolchain.search.samplers import ScoreParts
from adans_toolchain.search.types import Evaluation, SearchResult
from adans_toolchain.transforms.channel_pruning import kept_channels

BUDGETS = "budgets"  # OUT/budgets/: a folder per member, family.json, family.md, pareto.png
PHASES = "phases.json"  # OUT/budgets/phases.json: how --iterations was split (a resume must split it the same way)
# OUT's own files: the largest budget's member (baseline.onnx is written there once, for all members).
TOP_FILES = ("model.onnx", "plan.json", "model_before_finetune.onnx", "baseline_finetuned.onnx", "model_int8.onnx",
             "model_unfolded.onnx", "report.md", "convergence.png")
SHARED_WEIGHTS = "shared_weights.onnx"  # OUT/budgets/: joint fine-tuning's one set of weights (the largest member's graph)
UNFOLDED = "model_unfolded.onnx"  # OUT/budgets/<B>/: the member, BatchNorm separate: its weights slices of SHARED_WEIGHTS
JOINT_CHECKPOINT = "finetune_family.pt"  # OUT/state/: the joint fine-tune's per-epoch checkpoint
JITTER = (0.85, 1.15)  # a phase's new points around its aimed points: each coordinate scaled within this range


def folder_name(budget: float) -> str:
    return f"{budget:.2f}"


@dataclass(eq=False)  # compared by identity: it holds an array
class Candidate:
    """One distinct evaluated plan (a design: its discrete states), with where it came from."""

    key: str
    x: np.ndarray
    states: tuple[int, ...]
    accuracy: float  # top-1 on the images the search scores (SEARCH-VAL)
    cost: float  # by the search's cost model
    cost_ratio: float
    phase: float | None  # the budget of the phase that first evaluated it; None: the baseline or a clamp
    iteration: int  # in that phase (-1: the baseline or a clamp)
    clamped_from: "Candidate | None" = None
    clamped_to: float | None = None  # the budget whose larger member it was clamped to
    holdout: float | None = None  # top-1 on HOLDOUT-VAL, once scored there

    @property
    def identity(self) -> bool:
        return not any(self.states)

    def source(self) -> dict:
        if self.identity:
            return {"kind": "baseline"}
        if self.clamped_from is not None:
            c = self.clamped_from
            return {"kind": "clamped", "clamped_to_member_of": self.clamped_to,
                    "from": {"phase": c.phase, "iteration": c.iteration, "accuracy": c.accuracy, "cost_ratio": c.cost_ratio}}
        return {"kind": "searched", "phase": self.phase, "iteration": self.iteration}


@dataclass(eq=False)
class Member:
    budget: float
    candidate: Candidate
    rank: int  # among the nested candidates within the budget, by SEARCH-VAL accuracy (1: the most accurate)
    candidates: int  # evaluated plans within the budget
    nested_candidates: int  # of those, nested in the larger member
    rescored: list[Candidate] = field(default_factory=list)  # --holdout: the nested candidates scored there
    replaced: str | None = None  # why the member is a smaller budget's (at least as accurate)

    @property
    def measure(self) -> float:
        """What members are compared by: top-1 on the held-back images with --holdout, else SEARCH-VAL."""
        c = self.candidate
        return c.accuracy if c.holdout is None else c.holdout


class _PhaseObjective(pipeline._Objective):
    """One phase's objective: the ordinary one under the phase's CappedScore, each info marked with the
    phase's budget and whether the plan is within it."""

    def __init__(self, run, accuracies: CachedAccuracy, budget: float, iterations: int) -> None:
        super().__init__(run, accuracies)
        self.budget, self.iterations = budget, iterations
        self.best_within: float | None = None

    def __call__(self, xs: np.ndarray):
        fs, infos = super().__call__(xs)
        for info in infos:
            info["budget"] = self.budget
            info["within_budget"] = bool(self.run.score.within(info["cost"]))
            if info["within_budget"]:
                self.best_within = max(self.best_within or -np.inf, info["accuracy"])
        return fs, infos

    def show(self, summary) -> None:
        best = "none yet" if self.best_within is None else f"{self.best_within:.2f}%"
        self.run.progress.bar(
            summary.iteration + 1, self.iterations,
            f"budget {folder_name(self.budget)}: most accurate within it {best}  ({self.accuracies.rate:.1f} eval/s)",
        )


def compile_family(run) -> dict:
    """The --budgets compile of `run` (compile._Run, built as for one compile): search, members, emission."""
    cfg, space, progress = run.cfg, run.space, run.progress
    budgets = tuple(cfg.budgets)  # largest first (the config sorted them)
    _check_space_reaches(run, budgets[-1])
    splits = split_iterations(cfg.iterations, len(budgets))
    accuracies = CachedAccuracy(run.cache, space, run.executor, progress)
    budget = BudgetedAccuracy(accuracies, cfg.max_evaluations)
    progress.step(_budget_line(run, splits))
    rule, rule_facts = pipeline._one_rate_rule(run, budget)
    boundary = pipeline._characterise_boundary(run, budget, rule)
    upper = _box(run, rule, boundary, budgets[-1])
    _check_split(run, budgets, splits)
    t = time.perf_counter()
    results, phase_facts = [], []
    for k, b in enumerate(budgets):
        before = accuracies.evaluated
        result = _phase(run, k, b, splits[k], results, rule, boundary, upper, accuracies, budget)
        results.append(result)
        phase_facts.append({"budget": b, "iterations": splits[k], "evaluations": accuracies.evaluated - before,
                            "samples": len(result.history), "iterations_run": len(result.iterations)})
    run.timings["search_s"] = time.perf_counter() - t
    notes = tuple(run.evaluator.notes)
    candidates = _candidates(run, budgets, results)
    allowance = _single_compile_evaluations(run)
    members, clamp_evaluations = _choose_members(run, budgets, candidates, budget, allowance)
    stats = {"evaluated": accuracies.evaluated, "cached": accuracies.cached, "eval_seconds": accuracies.eval_seconds,
             "executor": run.executor.describe(), "precision": run.evaluator.precision,
             "images": accuracies.images, "rejected": accuracies.rejected}
    baseline = simplify(run.inputs.onnx_model)
    joint = _joint_finetune(run, members) if _finetunes_jointly(cfg) else None
    reports = _emit_members(run, members, results, boundary, rule_facts, stats, notes, budgets, baseline, joint)
    family = _family_facts(run, members, reports, list(candidates.values()), phase_facts, clamp_evaluations,
                           accuracies, rule_facts, boundary, joint)
    _write_family(run, family)
    return _write_top(run, members, reports, family, baseline)


# -- reach -----------------------------------------------------------------------------------------


def _check_space_reaches(run, smallest: float) -> None:
    """Before any evaluation: a budget below the cheapest plan of the whole search space is an error."""
    cheapest = float(pipeline.points_cost(run, np.ones(run.space.dim))[0]) / run.score.baseline_cost
    if cheapest > smallest:
        raise ConfigError(
            f"--budgets {smallest:g} is out of reach: the cheapest plan the search can make (every searched group cut "
            f"as far as it goes) costs {cheapest:.1%} of the baseline's "
            f"{run.cfg.cost}; give budgets of at least {np.ceil(cheapest * 100) / 100:.2f}"
        )


def _box(run, rule, boundary, smallest: float) -> np.ndarray:
    """The search's box: the boundary's (and the rule's point), widened towards full compression until it holds
    a plan within the smallest budget."""
    upper = boundary.box()
    if rule.rate:
        upper = np.maximum(upper, rule.point(run.space.dim))
    cap = smallest * run.score.baseline_cost
    if float(pipeline.points_cost(run, upper)[0]) <= cap:
        return upper
    widened = point_within(upper, np.ones(run.space.dim), lambda xs: pipeline.points_cost(run, xs), cap)
    if widened is None:  # only a cost that rises with compression (a latency table) can get here
        raise ConfigError(f"--budgets {smallest:g}: no plan of the search space is within it by the {run.cfg.cost} model")
    run.progress.step(f"the boundary's box holds nothing within budget {smallest:g}: widened towards full compression "
                      f"(mean upper bound {upper.mean():.2f} -> {widened.mean():.2f})")
    return widened


def _single_compile_evaluations(run) -> int:
    """The most a single-budget compile with these settings evaluates: rule, boundary and search."""
    cfg = run.cfg
    rule = pipeline.ONE_RATE_ROUNDS * len(pipeline._one_rate_variants(run.space))
    boundary = max_boundary_evaluations(run.space.levels, rounds=cfg.boundary_rounds, max_groups=cfg.boundary_groups)
    return rule + boundary + cfg.samples * cfg.iterations


def _budget_line(run, splits: list[int]) -> str:
    cfg = run.cfg
    single = _single_compile_evaluations(run)
    nesting = min(cfg.rescore_top * (len(splits) - 1), single)
    shares = ", ".join(f"{s} for {folder_name(b)}" for s, b in zip(splits, cfg.budgets))
    return (f"budgets {', '.join(folder_name(b) for b in cfg.budgets)} of the baseline's {cfg.cost}: at most {single} "
            f"evaluations as a single compile (--iterations {cfg.iterations} split {shares}; --samples {cfg.samples}) "
            f"+ {nesting} nesting re-evaluations; every candidate runs on all of the searched images (no early rejection)"
            + (f", capped at {cfg.max_evaluations} by --max-evaluations" if cfg.max_evaluations is not None else ""))


def _check_split(run, budgets: tuple[float, ...], splits: list[int]) -> None:
    """A resume must split --iterations among the budgets as the run did: each phase's first batch carries the
    phases before it, so a phase that grew would change every later one's."""
    path = run.ws.root / BUDGETS / PHASES
    record = {"budgets": list(budgets), "iterations": list(splits)}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SearchStateError(f"cannot read {path} ({e}); start a fresh run with --overwrite") from e
        if previous != record:
            raise SearchStateError(
                f"cannot resume: --budgets split --iterations {sum(previous.get('iterations', []))} as "
                f"{previous.get('iterations')} among the budgets and --iterations {run.cfg.iterations} splits it as "
                f"{splits}; give the same --iterations, or start a fresh run with --overwrite")
        return
    atomic_write_text(path, json.dumps(record, indent=1))


# -- the phases ------------------------------------------------------------------------------------


def _phase_score(run, budget: float) -> CappedScore:
    """Phase `budget`'s score: the search's own baseline, threshold and cost, the floor one image (or
    --accuracy-floor), and the budget as a cap."""
    score = run.score
    floor = run.cfg.accuracy_floor or 100.0 / len(run.inputs.search_val)
    return CappedScore(score.baseline_accuracy, score.baseline_cost, score.accuracy_threshold, floor,
                       cost_cap=budget * score.baseline_cost)


def _member_workspace(run, budget: float) -> Workspace:
    ws = Workspace(run.ws.root / BUDGETS / folder_name(budget))
    ws.create()
    return ws


def _most_accurate_within(results: list[SearchResult], budget: float) -> np.ndarray | None:
    """The most accurate evaluated point within `budget` (ties: the cheaper, then the earlier)."""
    points = [e for r in results for e in r.history if e.info["cost_ratio"] <= budget * (1 + 1e-12)]
    if not points:
        return None
    best = rank_candidates([e.info["accuracy"] for e in points], [e.info["cost"] for e in points])[0]
    return np.asarray(points[best].x)


def _phase(run, k: int, budget: float, iterations: int, earlier: list[SearchResult], rule, boundary, upper: np.ndarray,
           accuracies: CachedAccuracy, evaluation_budget: BudgetedAccuracy) -> SearchResult:
    cfg, space, progress = run.cfg, run.space, run.progress
    score = _phase_score(run, budget)
    phase_run = dataclasses.replace(run, score=score)
    objective = _PhaseObjective(phase_run, accuracies, budget, iterations)
    start = rule.point(space.dim) if rule.rate else None
    zeros = np.zeros(space.dim)
    anchor = (start if start is not None else zeros) if k == 0 else _most_accurate_within(earlier, cfg.budgets[k - 1])
    if anchor is None:  # nothing within the previous budget (cut short by --max-evaluations): start from the rule
        anchor = start if start is not None else zeros
    rng = np.random.default_rng([cfg.seed, 2**31 - 3, k])  # apart from the loop's [seed + k, t] and the others
    lead = [] if k or start is None else [start]  # phase 1 leads with the rule's point (evaluated: free)
    # Phase 1 carries the one-rate rule's bisection points (all evaluated: free), later phases every plan before.
    carried = _distinct_points(space, earlier) if k else _rule_points(run, evaluation_budget)
    known = {space.states(x) for x in [*lead, *carried]}
    aimed = _aimed_points(space, anchor, upper, objective.costs, score.cost_cap, cfg.samples - len(lead), rng, known)
    new = np.array(lead + aimed).reshape(-1, space.dim)
    init = np.vstack([carried, new])
    if evaluation_budget.affordable(init) == 0:
        raise ConfigError(
            f"--max-evaluations {cfg.max_evaluations} was spent before the search could evaluate a candidate; "
            "raise it and --resume (what was evaluated is kept)"
        )
    progress.step(f"phase {k + 1}/{len(cfg.budgets)}: budget {folder_name(budget)} of the baseline's {cfg.cost} "
                  f"({iterations} iteration{'s' if iterations != 1 else ''}; the first carries {len(carried)} plans "
                  f"evaluated before and {len(new)} new ones aimed at the budget)")
    ws = _member_workspace(run, budget)
    journal = ws.history_path if rule.complete and boundary.complete else None
    result = maximize(
        objective, space.dim, sampler=cfg.sampler, samples=cfg.samples, iterations=iterations, seed=cfg.seed + k,
        lower=zeros, upper=upper, init=init, journal=journal, callback=objective.show,
        budget=None if cfg.max_evaluations is None else evaluation_budget,
        score_parts=ScoreParts(cost=objective.costs, score=score, design_key=space.states),
    )
    progress.done()
    return result


def _aimed_points(space, anchor: np.ndarray, upper: np.ndarray, costs, cap: float, n: int,
                  rng: np.random.Generator, known: set) -> list[np.ndarray]:
    """n new plans just within `cap`, none of the designs in `known`: from `anchor` (nested in it) straight towards
    the box's corner, from the uncompressed model the same way, then from `anchor` along skewed paths (random
    speeds per coordinate); jitter around those fills what distinct paths cannot (a small space)."""
    zeros = np.zeros(space.dim)
    points, seen = [], set(known)

    def add(point: np.ndarray | None) -> None:
        if point is not None and len(points) < n and space.states(point) not in seen:
            seen.add(space.states(point))
            points.append(point)

    add(point_within(anchor, upper, costs, cap))
    add(point_within(zeros, upper, costs, cap))
    for _ in range(3 * n):
        if len(points) >= n:
            break
        add(point_within(anchor, upper, costs, cap, weights=rng.uniform(0.2, 1.0, space.dim)))
    around = points or [upper]
    while len(points) < n:
        points.append(np.clip(around[len(points) % len(around)] * rng.uniform(*JITTER, size=space.dim), 0.0, upper))
    return points


def _rule_points(run, evaluation_budget: BudgetedAccuracy) -> np.ndarray:
    """The points the one-rate rule's bisections evaluated, so they are candidates too: the bisections again,
    every point a cache hit (a variant cut short by --max-evaluations stops at its first unpaid point)."""
    space, points = run.space, []
    for _, mask in pipeline._one_rate_variants(space):
        direction = np.ones(space.dim) if mask is None else np.asarray(mask, dtype=np.float64)
        rule = one_rate_rule(evaluation_budget, space.dim, run.score.accuracy_threshold,
                             rounds=pipeline.ONE_RATE_ROUNDS, mask=mask)
        points += [entry["rate"] * direction for entry in rule.rounds]
        if not rule.complete:
            break
    return np.array(points).reshape(-1, space.dim)


def _distinct_points(space, results: list[SearchResult]) -> np.ndarray:
    """Every distinct design the phases so far evaluated, in evaluation order (one point each)."""
    seen, points = set(), []
    for r in results:
        for e in r.history:
            key = space.states(e.x)
            if key not in seen:
                seen.add(key)
                points.append(np.asarray(e.x))
    return np.array(points).reshape(-1, space.dim)


# -- the members -----------------------------------------------------------------------------------


def _candidates(run, budgets, results: list[SearchResult]) -> dict[str, Candidate]:
    """Every distinct evaluated design (first evaluation), and the uncompressed model."""
    space = run.space
    out: dict[str, Candidate] = {}
    zeros = np.zeros(space.dim)
    identity = EvaluationCache.key(space.states(zeros))
    out[identity] = Candidate(identity, zeros, space.states(zeros), pipeline._start_accuracy(run),
                              run.score.baseline_cost, 1.0, None, -1)
    for b, r in zip(budgets, results):
        for e in r.history:
            states = space.states(e.x)
            key = EvaluationCache.key(states)
            if key not in out:
                out[key] = Candidate(key, np.asarray(e.x), states, float(e.info["accuracy"]), float(e.info["cost"]),
                                     float(e.info["cost_ratio"]), b, e.iteration)
    return out


def _within(c: Candidate, budget: float) -> bool:
    return c.cost_ratio <= budget * (1 + 1e-12)


def _ranked(cands: list[Candidate]) -> list[Candidate]:
    return [cands[i] for i in rank_candidates([c.accuracy for c in cands], [c.cost for c in cands])]


def _choose_members(run, budgets, candidates: dict[str, Candidate], evaluation_budget: BudgetedAccuracy,
                    allowance: int) -> tuple[list[Member], int]:
    """The members, largest budget first, each nested in the one before (see the module's docstring)."""
    space, progress = run.space, run.progress
    members: list[Member] = []
    clamps = 0
    for b in budgets:
        within = [c for c in candidates.values() if _within(c, b)]
        if not within:
            cheapest = min(c.cost_ratio for c in candidates.values())
            raise ConfigError(
                f"--budgets {b:g}: no evaluated plan costs at most {b:.0%} of the baseline's {run.cfg.cost}; the "
                f"cheapest evaluated costs {cheapest:.1%} (raise --iterations, or give budgets of at least "
                f"{np.ceil(cheapest * 100) / 100:.2f})"
            )
        larger = members[-1].candidate if members else None
        nested = within if larger is None else [c for c in within if is_nested(c.states, larger.states)]
        if larger is not None:
            best_nested = max((c.accuracy for c in nested), default=-np.inf)
            inside = {id(c) for c in nested}
            better = [c for c in _ranked(within) if c.accuracy > best_nested and id(c) not in inside]
            # Clamp the more accurate candidates that are not nested, the most accurate first: at most --rescore-top
            # per budget, within a single compile's evaluations in all; at least one when nothing is nested.
            tried = 0
            for c in better:
                if tried >= run.cfg.rescore_top or (clamps >= allowance and nested):
                    break
                x = clamp(c.x, larger.x)
                states = space.states(x)
                key = EvaluationCache.key(states)
                if key in candidates:  # evaluated already (by the search, or as another clamp)
                    existing = candidates[key]
                    if _within(existing, b) and id(existing) not in inside:
                        inside.add(id(existing))
                        nested.append(existing)
                    tried += 1
                    continue
                cost = float(pipeline.points_cost(run, x)[0])
                if cost > b * run.score.baseline_cost * (1 + 1e-12):
                    continue  # a cost that rises with compression (a latency table): the clamp is not within
                accuracy = float(evaluation_budget(x[None])[0])
                if not np.isfinite(accuracy):
                    break  # --max-evaluations reached
                clamps += 1
                tried += 1
                clamped = Candidate(key, x, states, accuracy, cost, cost / run.score.baseline_cost, None, -1,
                                    clamped_from=c, clamped_to=members[-1].budget)
                candidates[key] = clamped
                inside.add(id(clamped))
                nested.append(clamped)
            if tried:
                progress.step(f"budget {folder_name(b)}: {tried} more accurate plan{'s' if tried != 1 else ''} not nested in "
                              f"the {folder_name(members[-1].budget)} member clamped to it and evaluated")
        if not nested:
            raise SearchStateError(
                f"--budgets {b:g}: no plan within it is nested in the {members[-1].budget:g} member, and --max-evaluations "
                "leaves none to evaluate the clamped plan; raise --max-evaluations and --resume"
            )
        ranked = _ranked(nested)
        chosen, rescored = ranked[0], []
        if run.inputs.holdout is not None:
            rescored = ranked[:run.cfg.rescore_top]
            progress.step(f"budget {folder_name(b)}: scoring the {len(rescored)} most accurate nested plans within it on "
                          f"the {len(run.inputs.holdout)} held-back VAL images")
            scores = pipeline._holdout_accuracies(run, [(_holdout_key(c), space.decode(c.x)) for c in rescored])
            for c, a in zip(rescored, scores):
                c.holdout = a
            chosen = rescored[rank_candidates([c.holdout for c in rescored], [c.cost for c in rescored])[0]]
        members.append(Member(b, chosen, ranked.index(chosen) + 1, len(within), len(nested), rescored))
    # A smaller member at least as accurate as a larger one is the larger's too: it is within the larger budget,
    # and nested in every member above it.
    for i in range(len(members) - 2, -1, -1):
        small, big = members[i + 1], members[i]
        if small.candidate is not big.candidate and small.measure >= big.measure:
            which = "held-back" if small.candidate.holdout is not None else "SEARCH-VAL"
            members[i] = dataclasses.replace(
                big, candidate=small.candidate, rescored=big.rescored,
                replaced=(f"the {folder_name(small.budget)} member ({small.measure:.2f}% on {which}, "
                          f"{small.candidate.cost_ratio:.1%}) is at least as accurate as this budget's own choice "
                          f"({big.measure:.2f}%, {big.candidate.cost_ratio:.1%}), and within this budget too"))
    return members, clamps


def _holdout_key(c: Candidate) -> str:
    return "baseline" if c.identity else c.key


# -- emission --------------------------------------------------------------------------------------


def _member_notes(run, m: Member, larger: Member | None) -> list[str]:
    c, b = m.candidate, m.budget
    where = "SEARCH-VAL" if run.inputs.holdout is not None else "VAL"
    notes = [
        f"member of a --budgets family (OUT/{BUDGETS}/family.md): budget {b:g} of the baseline's {run.cfg.cost}; this "
        f"plan costs {c.cost_ratio:.1%}, the most accurate of {m.nested_candidates} evaluated plans within the budget "
        + ("" if larger is None else f"nested in the {folder_name(larger.budget)} member's channels ")
        + f"({m.candidates} within it in all), {c.accuracy:.2f}% on {where}"
        + ("" if c.holdout is None else f", {c.holdout:.2f}% on the held-back images (the {len(m.rescored)} most "
           "accurate re-scored there)")
    ]
    if c.clamped_from is not None:
        f = c.clamped_from
        origin = "an earlier clamped plan" if f.phase is None else f"a plan of phase {folder_name(f.phase)}"
        notes.append(f"clamped: {origin} ({f.accuracy:.2f}%, {f.cost_ratio:.1%}) was not "
                     f"nested in the {folder_name(c.clamped_to)} member, so every group keeps at most what that member "
                     f"keeps; the clamped plan was evaluated again ({c.accuracy:.2f}%)")
    if m.replaced:
        notes.append(m.replaced)
    if c.accuracy < run.score.accuracy_threshold:
        notes.append(f"below the accuracy threshold {run.score.accuracy_threshold:.2f}% (--budgets chooses the most "
                     "accurate plan within each budget, whatever its accuracy)")
    if _finetunes_jointly(run.cfg):
        notes.append(f"fine-tuned jointly with the family's other members (sandwich rule): its weights are slices of "
                     f"OUT/{BUDGETS}/{SHARED_WEIGHTS} ({UNFOLDED}: BatchNorm separate), its BatchNorm statistics its own")
    elif run.cfg.finetune_epochs:
        notes.append("fine-tuned on its own (the members' weights are no longer slices of one weight file)")
    return notes


def _emit_members(run, members: list[Member], results: list[SearchResult], boundary, rule_facts, stats, notes,
                  budgets, baseline, joint: "JointFinetune | None") -> list[dict]:
    reports = []
    for i, m in enumerate(members):
        c = m.candidate
        k = budgets.index(m.budget)
        ws = _member_workspace(run, m.budget)
        score = _phase_score(run, m.budget)
        member_run = dataclasses.replace(run, ws=ws, timings=dict(run.timings), score=score)
        run.progress.step(f"member for budget {folder_name(m.budget)} ({c.cost_ratio:.1%} of the baseline's {run.cfg.cost}, "
                          f"{c.accuracy:.2f}%): emitting in {ws.root}")
        info = {"accuracy": c.accuracy, "cost": c.cost, "cost_ratio": c.cost_ratio,
                "feasible": bool(c.accuracy >= run.score.accuracy_threshold), "budget": m.budget,
                "within_budget": True, **({} if c.holdout is None else {"holdout_accuracy": c.holdout})}
        best = Evaluation(c.x, float(score(c.accuracy, c.cost)), max(c.iteration, 0), info)
        plan = run.identity if c.identity else run.space.decode(c.x)
        selected = pipeline.SelectedPlan(best, plan, tuple(_member_notes(run, m, members[i - 1] if i else None)))
        search = pipeline.SearchOutcome(boundary, results[k], stats, rule_facts)
        extra = {"budget": {"budget": m.budget, "folder": folder_name(m.budget), "source": c.source(),
                            "nested_in": None if i == 0 else members[i - 1].budget,
                            "search_rank_within_budget": m.rank, "plans_within_budget": m.candidates,
                            "nested_plans_within_budget": m.nested_candidates, "family": "../family.json"}}
        finetune = None if joint is None else joint.finetuner(m)
        reports.append(pipeline._emit(member_run, search, selected, notes, baseline=baseline, report_extra=extra,
                                      finetune=finetune))
    return reports


# -- joint fine-tuning -------------------------------------------------------------------------------


def _finetunes_jointly(cfg) -> bool:
    return bool(cfg.finetune_epochs) and cfg.family_finetune == "joint"


@dataclass
class JointFinetune:
    """The family fine-tuned as one set of weights: what each member's emission needs of it."""

    family: SandwichFamily
    index: dict[str, int]  # a member's candidate key -> its member in `family` (members of equal plans share one)
    log: SandwichLog
    config: FinetuneConfig
    self_checks: list[float]  # per member of `family`: max |sliced member - ONNX Runtime|, relative, before training
    statistics_images: int

    def shared(self, m: Member) -> dict:
        """family.json's account of member `m`'s weights: the slices it takes and what is its own."""
        k = self.index[m.candidate.key]
        member = self.family.members[k]
        return {"file": SHARED_WEIGHTS, "unfolded": f"{folder_name(m.budget)}/{UNFOLDED}",
                "slices": {name: {str(axis): getattr(member, key).tolist() for axis, key in steps}
                           for name, steps in member.slices.items() if steps},
                "own": sorted(member.statistics)}

    def facts(self) -> dict:
        log = self.log
        return {"mode": "joint", "rule": f"sandwich: each step the largest member, the smallest and {RANDOM_MEMBERS} "
                f"others drawn at random (every member when there are no more), gradients accumulated, one SGD step",
                "random_members": RANDOM_MEMBERS, "distinct_members": len(self.family),
                "distillation": "from the original model" if self.config.distill else None,
                "shared_weights": SHARED_WEIGHTS, "batchnorm": f"each member's statistics re-estimated on "
                f"{self.statistics_images} training images after training", "statistics_images": self.statistics_images,
                "epochs": log.epochs_done, "resumed_from_epoch": log.resumed_from_epoch}

    def finetuner(self, m: Member):
        """A stand-in for pipeline._finetune that gives member `m` its slice of the shared weights."""
        k = self.index[m.candidate.key]

        def finetune(cfg, inputs, models, ws, progress, accuracies, stage=None):
            progress.step(f"budget {folder_name(m.budget)}: its slice of the jointly fine-tuned weights, validated")
            compressed = models.compressed
            emitted = emit_member(self.family, k, compressed.pre_simplify, inputs.val.x, threads=inputs.threads,
                                  pass_log=compressed.pass_log)
            atomic_write_bytes(ws.root / UNFOLDED, emitted.pre_simplify.SerializeToString())
            splits = {"val": accuracies.val, "test": accuracies.test}
            for split, data in (("val", inputs.val), ("test", inputs.test)):
                if data is not None:
                    after = pipeline._top1(emitted.model, data, threads=inputs.threads, batch_size=cfg.batch_size)
                    splits[split] = dataclasses.replace(splits[split], compressed=after,
                                                        compressed_before_finetune=splits[split].compressed)
            name = self.family.members[k].name
            own = FinetuneRun(train_loss=self.log.train_loss[name], train_top1=self.log.train_top1[name],
                              resumed_from_epoch=self.log.resumed_from_epoch,
                              interpreter_check_relative_diff=self.self_checks[k], validation=emitted.validation.as_dict())
            config = {**dataclasses.asdict(self.config), **self.facts(), "steps_trained": self.log.steps[name]}
            facts = FinetuneFacts(config, len(inputs.train), ", ".join(training_sources(cfg.train_data)), own)
            return pipeline.FinetuneOutcome(facts, pipeline.EmittedModels(models.baseline, emitted), Accuracies(**splits),
                                            before_finetune=compressed.model, baseline_finetuned=None)

        return finetune


def _joint_finetune(run, members: list[Member]) -> JointFinetune:
    """Lower the distinct members (largest first), train their shared weights by the sandwich rule, re-estimate
    each member's BatchNorm statistics, and write OUT/budgets/shared_weights.onnx."""
    cfg, inputs, progress = run.cfg, run.inputs, run.progress
    distinct = list({m.candidate.key: m for m in members}.values())  # members are largest first
    plans = [run.identity if m.candidate.identity else run.space.decode(m.candidate.x) for m in distinct]
    progress.step(f"joint fine-tuning of the family: lowering its {len(distinct)} distinct member"
                  f"{'s' if len(distinct) != 1 else ''}")
    graphs = [lower_plan(inputs.onnx_model, inputs.analysis, plan, run.transform, run.evaluator, inputs.val.x,
                         threads=inputs.threads).pre_simplify for plan in plans]
    kept = [_weights_kept(run, plan)[2] for plan in plans]
    shapes = {i.name: list(i.dims) for i in inputs.onnx_model.graph.initializer}
    family = SandwichFamily([FamilyMember(folder_name(m.budget), g, shared_slices(k, kept[0], shapes))
                             for m, g, k in zip(distinct, graphs, kept)], inputs.val.image_shape)
    checks = [interpreter_check(family, k, inputs.val.x, threads=inputs.threads) for k in range(len(family))]
    config = FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size,
                            distill=cfg.distill, seed=cfg.seed)
    progress.step(f"joint fine-tuning (sandwich rule, {min(len(family), RANDOM_MEMBERS + 2)} of {len(family)} members a "
                  f"step): {config.epochs} epochs on {len(inputs.train):,} images ({inputs.train.describe()})")
    log = finetune_family(
        family, inputs.train, config, random_members=RANDOM_MEMBERS, teacher=inputs.module if cfg.distill else None,
        checkpoint=run.ws.state / JOINT_CHECKPOINT, device=cfg.device,
        on_epoch=lambda e, losses: progress.bar(e, config.epochs, "loss " + "  ".join(f"{n} {v:.4f}" for n, v in losses.items())),
    )
    progress.done()
    used = estimate_statistics(family, inputs.train, images=STATISTICS_IMAGES, batch_size=cfg.finetune_batch_size,
                               seed=cfg.seed, device=cfg.device)
    atomic_write_bytes(run.ws.root / BUDGETS / SHARED_WEIGHTS, shared_weights_model(family, graphs[0]).SerializeToString())
    index = {m.candidate.key: k for k, m in enumerate(distinct)}
    return JointFinetune(family, index, log, config, checks, used)


# -- the family ------------------------------------------------------------------------------------


def _weights_kept(run, plan: Plan) -> tuple[list[dict], dict[str, list[int]], dict[str, dict[str, list[int]]]]:
    """Per group: units kept; per pruned activation tensor: channels kept; per parameter of the original model:
    the indices kept along each of its channel axes."""
    analysis = run.inputs.analysis
    kept_units = {p.group: p.keep for p in plan.pruning}
    groups = [{"group": g.id, "size": g.size, "kept": len(kept_units.get(g.id, range(g.size))),
               "kept_units": [int(u) for u in kept_units.get(g.id, range(g.size))]}
              for g in analysis.prunable_groups]
    tensors = kept_channels(analysis, plan)
    params: dict[str, dict[str, list[int]]] = {}
    for b in analysis.bindings:
        if b.tensor in tensors:
            params.setdefault(b.param, {})[str(b.axis)] = [int(i) for i in tensors[b.tensor]]
    return groups, {t: [int(i) for i in v] for t, v in tensors.items()}, params


def _macs_ratios(run, xs: np.ndarray) -> np.ndarray:
    plans = [run.identity] + run.space.decode_batch(xs)
    macs = np.array([workload_macs(w) for w in plan_workloads(run.inputs.analysis, plans)], dtype=np.float64)
    return macs[1:] / macs[0]


def _family_facts(run, members: list[Member], reports: list[dict], candidates: list[Candidate], phases: list[dict],
                  clamps: int, accuracies: CachedAccuracy, rule_facts, boundary, joint: JointFinetune | None) -> dict:
    cfg = run.cfg
    member_keys = {}
    for m in members:
        member_keys.setdefault(m.candidate.key, []).append(m.budget)
    macs = _macs_ratios(run, np.array([c.x for c in candidates]))
    front = set(pareto_front([c.cost_ratio for c in candidates], [c.accuracy for c in candidates]))
    evaluated = [
        {"cost_ratio": c.cost_ratio, "macs_ratio": float(r), "accuracy": c.accuracy, "source": c.source(),
         "pareto": i in front, "members": member_keys.get(c.key, [])}
        for i, (c, r) in enumerate(zip(candidates, macs))
    ]
    unit = reports[0]["search"]["cost"]["unit"]
    rows = []
    for i, (m, r) in enumerate(zip(members, reports)):
        c = m.candidate
        plan = run.identity if c.identity else run.space.decode(c.x)
        groups, tensors, params = _weights_kept(run, plan)
        comp, base = r["compressed"], r["baseline"]
        rows.append({
            "budget": m.budget,
            "folder": folder_name(m.budget),
            "cost_ratio": comp["cost"][unit] / base["cost"][unit],  # the emitted model's own graph
            "plan_cost_ratio": c.cost_ratio,
            "macs_ratio": comp["macs"] / base["macs"],
            "params_ratio": comp["params"] / base["params"],
            "macs": comp["macs"],
            "top1": {
                "search_val": c.accuracy,
                "holdout": c.holdout,
                "val": comp["top1_val"],
                "test": comp.get("top1_test"),
                "val_before_finetune": comp.get("top1_val_before_finetune"),
                "test_before_finetune": comp.get("top1_test_before_finetune"),
            },
            "meets_accuracy_threshold": bool(c.accuracy >= run.score.accuracy_threshold),
            "source": c.source(),
            "nested_in": None if i == 0 else members[i - 1].budget,
            "replaced": m.replaced,
            "search_rank_within_budget": m.rank,
            "plans_within_budget": m.candidates,
            "nested_plans_within_budget": m.nested_candidates,
            "measured": r["speedup"].get("measured_host"),
            "validation": {k: r["validation"].get(k) for k in ("relative_diff", "tolerance", "top1_agreement")},
            "finetuned": "finetuning" in r,
            "shared_weights": None if joint is None else joint.shared(m),
            "groups": groups,
            "tensors": tensors,
            "parameters": params,
            "decompositions": [d for d in plan.to_dict()["decompositions"] if d["ranks"] != d["full"]],
            "sparsity": [s for s in plan.to_dict()["sparsity"] if s["removed"]],
        })
    return {
        "format": "adans-family/1",
        "command": cfg.command,
        "model": reports[0]["model"],
        "cost": dict(reports[0]["search"]["cost"]),
        "budgets": list(cfg.budgets),
        "accuracy_threshold": run.score.accuracy_threshold,
        "baseline": {"cost": reports[0]["baseline"]["cost"][unit], "macs": reports[0]["baseline"]["macs"],
                     "top1_search_val": pipeline._start_accuracy(run), "top1_val": reports[0]["baseline"]["top1_val"],
                     "top1_test": reports[0]["baseline"].get("top1_test")},
        "holdout": None if run.inputs.holdout is None else {"images": len(run.inputs.holdout),
                                                            "search_images": len(run.inputs.search_val)},
        "evaluations": {"paid": len(run.cache.values), "cache_hits": accuracies.cached,
                        "one_rate_rule": rule_facts.evaluations, "boundary": boundary.evaluations,
                        "nesting_clamps": clamps, "single_compile_at_most": _single_compile_evaluations(run)},
        "phases": phases,
        "finetune": _finetune_facts(run, joint),
        "weights": _weights_note(run, members, joint),
        "members": rows,
        "evaluated": evaluated,
    }


def _finetune_facts(run, joint: JointFinetune | None) -> dict | None:
    """How the family was fine-tuned (None: it was not)."""
    if not run.cfg.finetune_epochs:
        return None
    if joint is None:
        return {"mode": "separate", "epochs": run.cfg.finetune_epochs}
    return joint.facts()


def _weights_note(run, members: list[Member], joint: JointFinetune | None) -> str:
    """What the nesting means for the weights, for family.json."""
    note = ("every member keeps a subset of the next larger member's channels (groups.kept_units; tensors; parameters: "
            "the indices kept along each channel axis of the original model's initializers, by name), so the members' "
            "convolution and linear weights are slices of the original model's")
    if joint is not None:
        return note + (
            f" before fine-tuning. The family was fine-tuned jointly, as one set of weights: {SHARED_WEIGHTS} (the "
            f"largest member's graph, BatchNorm separate) holds them, and every member's {UNFOLDED} (BatchNorm "
            "separate) takes each weight, BatchNorm scale and bias as the slice of it that shared_weights.slices gives "
            "(indices along each axis in shared_weights.onnx's numbering); only the BatchNorm running statistics "
            "(shared_weights.own) are each member's own, re-estimated on training images after training. Each "
            "model.onnx folds its member's BatchNorm into its convolutions, so its weights are not slices")
    if run.cfg.finetune_epochs:
        note += " before fine-tuning; each member was then fine-tuned on its own, so its model.onnx holds its own weights"
    if any(run.evaluator.recalibrates(run.space.decode(m.candidate.x)) for m in members if not m.candidate.identity):
        note += "; BatchNorm statistics are re-estimated per member (and folded into its model.onnx)"
    return note


def _write_family(run, family: dict) -> None:
    folder = run.ws.root / BUDGETS
    plots = []
    try:
        plot_pareto(family, folder / "pareto.png")
        plots.append("pareto.png")
    except Exception as e:  # noqa: BLE001 - a plot must never fail a compile
        family.setdefault("notes", []).append(f"pareto plot not written: {e}")
    atomic_write_text(folder / "family.json", json.dumps(family, indent=1))
    atomic_write_text(folder / "family.md", render_family_markdown(family, plots))


def _write_top(run, members: list[Member], reports: list[dict], family: dict, baseline) -> dict:
    """OUT's own files: the largest budget's member, baseline.onnx once, and report.json with the family's summary."""
    out = run.ws.root
    source = out / BUDGETS / folder_name(members[0].budget)
    for name in TOP_FILES:
        path = source / name
        if path.is_file():
            atomic_write_bytes(out / name, path.read_bytes())
        else:
            (out / name).unlink(missing_ok=True)
    atomic_write_bytes(out / "baseline.onnx", baseline.SerializeToString())
    summary = {
        "budgets": list(run.cfg.budgets),
        "folder": BUDGETS,
        "members": [{k: row[k] for k in ("budget", "folder", "cost_ratio", "macs_ratio", "top1", "source", "measured")}
                    for row in family["members"]],
        "note": f"OUT's model.onnx, plan.json and report are the largest budget's member ({BUDGETS}/"
                f"{folder_name(members[0].budget)}); every member and the family: {BUDGETS}/family.md",
    }
    report = {**reports[0], "family": summary}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return report
