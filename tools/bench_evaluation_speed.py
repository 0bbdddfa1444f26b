"""Evaluations per second (issue 13): what a candidate costs, before and after, with identical decisions.

The same candidates around the accuracy boundary (as in
bench_early_rejection) are evaluated by four evaluator configurations:

  reference   zeroed at full size, NCHW, 1 thread, every candidate on all of VAL
              (the configuration of issue 13's 0.14 evaluations/s)
  before      zeroed, NCHW, the given threads, exact early rejection (the search before slicing)
  zeroed-cl   as before, in channels-last
  after       sliced (evaluation.slicing) and channels-last, exact early rejection: the default now

Each candidate is run by every configuration in turn, for --repeats rounds
(interleaved, so machine noise hits all alike), and its time is the minimum
over the rounds. BatchNorm re-estimation (once per candidate) is included.
Decisions: every configuration must give each feasible candidate the same
accuracy (and every one the same verdict); the table says whether it did.

    python tools/bench_evaluation_speed.py --model ../shared/data/cifar10_resnets/resnet56.th \\
        --arch cifar_resnet56 --data ../shared/data/cifar10/train_lossless_4000.npz --limit 700
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch

from adans_toolchain.evaluation.base import ACCURACY, REJECTED
from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.evaluation.substitution import SubstitutionEvaluator, original_weights
from adans_toolchain.plan import Plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform
from bench_early_rejection import boundary_candidates, candidate_arguments, load_problem

# name -> (slicing, precision, threads: None = --threads, early rejection)
CONFIGS = {
    "reference": (False, "fp32", 1, False),
    "before": (False, "fp32", None, True),
    "zeroed-cl": (False, "auto", None, True),
    "after": (True, "auto", None, True),
}


def _args(argv=None) -> argparse.Namespace:
    p = candidate_arguments(__doc__, limit=700, limit_help="VAL images (the first N; the search ranks on 70 %% of 1,000)",
                            candidates=24, threads=2)
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args(argv)


def _evaluators(args, loaded, val, analysis, threshold: float) -> dict[str, SubstitutionEvaluator]:
    calibration = val.subset(args.bn_recalibrate) if args.bn_recalibrate else None
    weights = original_weights(loaded.module, analysis)
    evaluators = {}
    for name, (slicing, precision, threads, rejection) in CONFIGS.items():
        torch.set_num_threads(threads or args.threads)
        # Each its own module: channels-last changes the module's memory format in place.
        evaluator = SubstitutionEvaluator(copy.deepcopy(loaded.module), val, PlanTransform(analysis, weights),
                                          batch_size=args.batch_size, calibration=calibration, precision=precision,
                                          slicing=slicing)
        evaluator.early_rejection = EarlyRejection(threshold) if rejection else None
        evaluators[name] = evaluator
    return evaluators


def main(argv=None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    loaded, val, analysis = load_problem(args)
    probe = SubstitutionEvaluator(loaded.module, val, PlanTransform(analysis, original_weights(loaded.module, analysis)),
                                  batch_size=args.batch_size)
    groups = analysis.prunable_groups
    space = CompressionSpace.from_priorities(groups, probe.priorities(analysis, groups, "l1"))
    baseline = float(probe.accuracy([Plan(())])[0])
    threshold = baseline - args.max_drop
    scale, plans = boundary_candidates(probe, space, threshold, args.candidates, args.seed)
    evaluators = _evaluators(args, loaded, val, analysis, threshold)
    seconds = {name: np.full((args.repeats, len(plans)), np.inf) for name in evaluators}
    rows = {name: np.zeros((len(plans), 3)) for name in evaluators}
    for r in range(args.repeats):
        for i, plan in enumerate(plans):
            for name, evaluator in evaluators.items():
                torch.set_num_threads(CONFIGS[name][2] or args.threads)
                start = time.perf_counter()
                rows[name][i] = evaluator.screen([plan])[0]
                seconds[name][r, i] = time.perf_counter() - start
    _print(args, loaded, val, evaluators, plans, rows, seconds, baseline, threshold, scale)


def _print(args, loaded, val, evaluators, plans, rows, seconds, baseline, threshold, scale) -> None:
    full = rows["reference"][:, ACCURACY]
    feasible = full >= threshold
    per_candidate = {name: s.min(axis=0) for name, s in seconds.items()}
    print(f"# evaluation speed on {Path(args.model).name} ({args.arch}), {len(val)} VAL images, {datetime.date.today()}")
    print(f"host {platform.node()} {platform.machine()}, torch {torch.__version__}, batch {args.batch_size}, "
          f"BatchNorm re-estimated on {args.bn_recalibrate} images per candidate; {len(plans)} candidates around the "
          f"boundary (diagonal scale {scale:.3f}, seed {args.seed}): {int(feasible.sum())} feasible at threshold "
          f"{threshold:.2f} % (baseline {baseline:.2f}); minimum of {args.repeats} interleaved rounds per candidate")
    print(f"notes of 'after': {'; '.join(evaluators['after'].notes)}")
    print()
    print("| configuration | threads | s per candidate | evaluations/s | vs reference | vs before | "
          "feasible candidates' accuracy as reference | verdicts as reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, times in per_candidate.items():
        threads = CONFIGS[name][2] or args.threads
        same_feasible = bool(np.array_equal(rows[name][feasible, ACCURACY], full[feasible]))
        verdict = rows[name][:, ACCURACY] >= threshold
        same_verdict = bool(np.array_equal(verdict, feasible))
        rejected = int(rows[name][:, REJECTED].sum())
        print(f"| {name} | {threads} | {times.mean():.2f} | {1 / times.mean():.2f} | "
              f"{per_candidate['reference'].mean() / times.mean():.2f}x | {per_candidate['before'].mean() / times.mean():.2f}x | "
              f"{'yes' if same_feasible else 'NO'} | {'yes' if same_verdict else 'NO'} ({rejected} rejected early) |")


if __name__ == "__main__":
    main()
