"""Early rejection (issue 13): false rejections and savings against full evaluation.

Samples N random candidates around the accuracy boundary of a model, scores
each on all of VAL and again with early rejection (exact, and the
Hoeffding-Serfling bound at confidence 0.99 and 0.999), and prints

  - the false-rejection rate: feasible candidates (full top-1 >= threshold) that a rule stopped,
  - the fraction rejected (of all candidates, and of the infeasible ones),
  - whether every candidate that was not stopped kept its full accuracy bit for bit,
  - the speedup in images evaluated and in wall time (BatchNorm re-estimation,
    paid once per candidate whatever the rule, included).

Candidates: the uniform pruning rate whose top-1 is the threshold is found by
bisection on the diagonal of the compression space; each candidate is that
point scaled by r ~ U(0.5, 1.5), times per-coordinate jitter U(0, 2), clipped
to [0, 1], so about half fall on each side of the threshold, some far.

    python tools/bench_early_rejection.py                      # bundled ResNet-20, its 1,000 VAL images
    python tools/bench_early_rejection.py --model ../shared/data/cifar10_resnets/resnet56.th \\
        --arch cifar_resnet56 --data ../shared/data/cifar10/train_lossless_4000.npz --limit 1000
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from adans_toolchain.analysis.channels import analyse_channels
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.evaluation.base import ACCURACY, IMAGES, REJECTED, make_evaluator
from adans_toolchain.evaluation.rejection import EarlyRejection
from adans_toolchain.evaluation.substitution import original_weights
from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.frontend.export import export_onnx
from adans_toolchain.frontend.loading import load_model
from adans_toolchain.plan import Plan
from adans_toolchain.plan.space import CompressionSpace
from adans_toolchain.transforms.plan_transform import PlanTransform

EXAMPLES = Path(__file__).resolve().parents[1] / "adans_toolchain" / "examples"
RULES = {"exact": None, "0.99": 0.99, "0.999": 0.999}


def candidate_arguments(doc: str, *, limit: int, limit_help: str, candidates: int, threads: int) -> argparse.ArgumentParser:
    """The model, VAL and candidate options this benchmark shares with bench_evaluation_speed."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default=str(EXAMPLES / "resnet20.th"))
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--data", default=str(EXAMPLES / "cifar10_val_1000.npz"))
    p.add_argument("--limit", type=int, default=limit, help=limit_help)
    p.add_argument("-n", "--candidates", type=int, default=candidates)
    p.add_argument("--max-drop", type=float, default=2.0, help="threshold = baseline - this (points)")
    p.add_argument("--bn-recalibrate", type=int, default=500, help="calibration images per candidate (0: off)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--seed", type=int, default=0)
    return p


def _args(argv=None) -> argparse.Namespace:
    return candidate_arguments(__doc__, limit=1000, limit_help="VAL images (the first N)", candidates=40, threads=1).parse_args(argv)


def load_problem(args: argparse.Namespace):
    """The model, its first --limit VAL images and its channel analysis, as both benchmarks build them."""
    loaded = load_model(args.model, args.arch)
    val = load_image_set(args.data, Preprocessing(), limit=args.limit)
    shape = tuple(val.image_shape)
    analysis = analyse_channels(Graph.from_model(export_onnx(loaded.module.eval(), shape), shape))
    return loaded, val, analysis


def _diagonal_scale(evaluator, space: CompressionSpace, threshold: float, rounds: int = 7) -> float:
    """The largest uniform rate s (x = s * ones) whose full top-1 is still >= threshold, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(rounds):
        mid = (lo + hi) / 2
        if float(evaluator.accuracy([space.decode(np.full(space.dim, mid))])[0]) >= threshold:
            lo = mid
        else:
            hi = mid
    return lo


def boundary_candidates(evaluator, space: CompressionSpace, threshold: float, n: int, seed: int) -> tuple[float, list[Plan]]:
    """The diagonal boundary scale and `n` plans around it (see the module docstring), seeded."""
    scale = _diagonal_scale(evaluator, space, threshold)
    rng = np.random.default_rng(seed)
    xs = np.clip(scale * rng.uniform(0.5, 1.5, (n, 1)) * rng.uniform(0, 2, (n, space.dim)), 0, 1)
    return scale, space.decode_batch(xs)


def _timed(evaluator, plans, rule: EarlyRejection | None) -> tuple[np.ndarray, float]:
    evaluator.early_rejection = rule
    start = time.perf_counter()
    rows = evaluator.screen(plans)
    return rows, time.perf_counter() - start


def main(argv=None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    loaded, val, analysis = load_problem(args)
    transform = PlanTransform(analysis, original_weights(loaded.module, analysis))
    calibration = val.subset(args.bn_recalibrate) if args.bn_recalibrate else None
    evaluator = make_evaluator(loaded.module, val, transform, batch_size=args.batch_size, calibration=calibration,
                               precision="fp32")
    groups = analysis.prunable_groups
    space = CompressionSpace.from_priorities(groups, evaluator.priorities(analysis, groups, "l1"))
    t = time.perf_counter()
    baseline = float(evaluator.accuracy([Plan(())])[0])
    threshold = baseline - args.max_drop
    scale, plans = boundary_candidates(evaluator, space, threshold, args.candidates, args.seed)
    setup_s = time.perf_counter() - t

    full, full_s = _timed(evaluator, plans, None)
    feasible = full[:, ACCURACY] >= threshold
    n = len(plans)
    print(f"# early rejection on {Path(args.model).name} ({args.arch}), {len(val)} VAL images from {Path(args.data).name}")
    print(f"host {platform.node()} {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch_size}, BatchNorm re-estimation on {args.bn_recalibrate} images per candidate")
    print(f"baseline top-1 {baseline:.2f} %, threshold {threshold:.2f} % (max drop {args.max_drop:g}); diagonal "
          f"boundary scale {scale:.3f}; {n} candidates (seed {args.seed}): {feasible.sum()} feasible, "
          f"{n - feasible.sum()} infeasible; setup {setup_s:.0f} s")
    print(f"full evaluation: {n * len(val)} images, {full_s:.1f} s ({full_s / n:.2f} s per candidate)")
    print()
    print("| rule | false rejections (feasible stopped) | rejected (of all) | rejected (of infeasible) | "
          "kept plans' accuracy unchanged | images evaluated | image speedup | wall time | wall speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, confidence in RULES.items():
        rule = EarlyRejection(threshold, confidence=confidence)
        rows, seconds = _timed(evaluator, plans, rule)
        rejected = rows[:, REJECTED] == 1
        false = int((rejected & feasible).sum())
        unchanged = bool(np.array_equal(rows[~rejected, ACCURACY], full[~rejected, ACCURACY]))
        below = bool((rows[rejected, ACCURACY] < threshold).all())
        images = int(rows[:, IMAGES].sum())
        infeasible = max(int((~feasible).sum()), 1)
        print(f"| {name} | {false}/{int(feasible.sum())} ({false / max(int(feasible.sum()), 1):.1%}) | "
              f"{int(rejected.sum())}/{n} ({rejected.mean():.0%}) | "
              f"{int((rejected & ~feasible).sum())}/{infeasible} ({(rejected & ~feasible).sum() / infeasible:.0%}) | "
              f"{'yes' if unchanged else 'NO'}{'' if below else ' (a rejected estimate is not below the threshold!)'} | "
              f"{images} | {n * len(val) / images:.2f}x | {seconds:.1f} s | {full_s / seconds:.2f}x |")
    print()
    print("A rejected candidate's accuracy is its estimate on the images seen; rejections happen after "
          f"{', '.join(f'{100 * c:g}' for c in EarlyRejection(threshold).checkpoints)} % of VAL.")


if __name__ == "__main__":
    main()
