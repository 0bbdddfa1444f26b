"""Part 3 of the sampler benchmark: the real objective, built from library pieces.

Structured channel pruning of the CIFAR ResNet-20 on CPU, scored exactly as
`adans_toolchain/pipeline.py` scores it (AdaNSScore on the MACs cost model,
threshold = baseline − 2 points, floor = 2), over the box [0, θ] from the
pipeline's boundary characterisation, with the pipeline's initial batch.

Accuracy of a plan is deterministic, so evaluations are cached on disk by
plan (the removed-count tuple) and shared by every method and seed. The
cache only saves wall time: the benchmark counts proposals, not cache misses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "adans_toolchain" / "examples"
MODEL = EXAMPLES / "resnet20.th"
VAL_DATA = EXAMPLES / "cifar10_val_1000.npz"
ALLOWED_DROP = 2.0  # points; also the score's floor (the pipeline's default)
PRIORITY = "taylor"  # the pipeline's default channel order


@dataclass
class PruningObjective:
    """fn for `maximize` (scores and infos per sample) plus what the benchmark reports."""

    space: object  # CompressionSpace
    analysis: object  # ChannelAnalysis
    evaluator: object  # SubstitutionEvaluator
    cost_model: object
    score: object  # AdaNSScore
    baseline_cost: float
    cache: object  # EvaluationCache
    val_size: int
    boundary: object = None  # Boundary, set by `characterise`
    stats: dict = field(default_factory=lambda: {"proposals": 0, "evaluated": 0, "eval_s": 0.0})

    def key(self, x: np.ndarray) -> str:
        return self.cache.key(tuple(self.space.removed_count(i, v) for i, v in enumerate(x)))

    def accuracies(self, xs: np.ndarray) -> np.ndarray:
        import time

        xs = np.atleast_2d(xs)
        keys = [self.key(x) for x in xs]
        missing: dict[str, np.ndarray] = {}
        for k, x in zip(keys, xs):
            if self.cache.get(k) is None and k not in missing:
                missing[k] = x
        if missing:
            start = time.perf_counter()
            acc = self.evaluator.accuracy(self.space.decode_batch(np.array(list(missing.values()))))
            self.stats["eval_s"] += time.perf_counter() - start
            self.cache.put_many([{"key": k, "accuracy": float(a)} for k, a in zip(missing, acc)])
        self.stats["proposals"] += len(xs)
        self.stats["evaluated"] += len(missing)
        return np.array([self.cache.get(k)["accuracy"] for k in keys])

    def __call__(self, xs: np.ndarray):
        xs = np.atleast_2d(xs)
        acc = self.accuracies(xs)
        costs = self.costs(xs)
        scores = self.score(acc, costs)
        feasible = self.score.feasible(acc)
        infos = [
            {"accuracy": float(a), "cost_ratio": float(c / self.baseline_cost), "feasible": bool(ok)}
            for a, c, ok in zip(acc, costs, feasible)
        ]
        return scores, infos

    def costs(self, xs: np.ndarray) -> np.ndarray:
        """Exact cost of each point's plan (the cost model, as the pipeline prices candidates)."""
        from adans_toolchain.plan.workload import plan_workloads

        return self.cost_model.estimate(plan_workloads(self.analysis, self.space.decode_batch(np.atleast_2d(xs))))

    @property
    def parts(self):
        """What the compiler tells a sampler: the exact cost and the score (accuracy stays a black box)."""
        from adans_toolchain.search.samplers import ScoreParts

        return ScoreParts(cost=self.costs, score=self.score, design_key=self.space.states)

    def characterise(self) -> None:
        """The pipeline's boundary characterisation (cached evaluations: free on reruns)."""
        from adans_toolchain.search.boundary import characterise_boundary

        sizes = np.array([s.size for s in self.space.sites])
        self.boundary = characterise_boundary(self.accuracies, sizes, self.score.accuracy_threshold)

    @property
    def lower(self) -> np.ndarray:
        return np.zeros(self.space.dim)

    @property
    def upper(self) -> np.ndarray:
        return self.boundary.theta

    def setting(self) -> dict:
        """What the report states about this objective (JSON values)."""
        import torch

        return {
            "val_images": self.val_size,
            "baseline_val": self.score.baseline_accuracy,
            "threshold": self.score.accuracy_threshold,
            "sites": [s.group.id for s in self.space.sites],
            "site_sizes": [s.size for s in self.space.sites],
            "theta": [round(float(t), 4) for t in self.boundary.theta],
            "diagonal_scale": self.boundary.diagonal_scale,
            "boundary_evaluations": self.boundary.evaluations,
            "cached_plans": len(self.cache.values),
            "eval_s_per_plan_this_run": self.stats["eval_s"] / max(self.stats["evaluated"], 1),
            "threads": torch.get_num_threads(),
        }

    def initial_batch(self, n: int, seed: int) -> np.ndarray:
        """The pipeline's initial batch for this seed (same generator seeding)."""
        from adans_toolchain.search.boundary import initial_batch

        return initial_batch(self.boundary, n, np.random.default_rng([seed, 2**31 - 1]))


def build(out_dir: Path, val_size: int, threads: int) -> PruningObjective:
    """Load, export, analyse, rank channels and score, mirroring pipeline.compile_model."""
    import torch

    from adans_toolchain.analysis.channels import analyse_channels
    from adans_toolchain.analysis.graph import Graph
    from adans_toolchain.plan.workload import plan_workloads
    from adans_toolchain.evaluation.substitution import SubstitutionEvaluator
    from adans_toolchain.frontend.data import Preprocessing, load_image_set
    from adans_toolchain.frontend.export import export_onnx
    from adans_toolchain.frontend.loading import load_model
    from adans_toolchain.plan import Plan
    from adans_toolchain.search.scoring import AdaNSScore
    from adans_toolchain.plan.space import CompressionSpace
    from adans_toolchain.transforms.channel_pruning import ChannelPruningTransform
    from adans_toolchain.evaluation.cache import EvaluationCache
    from cost_models import make_cost_model
    from targets import load_target

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loaded = load_model(MODEL, "cifar_resnet20")
    val = load_image_set(VAL_DATA, Preprocessing(), limit=val_size)
    onnx_model = export_onnx(loaded.module, val.image_shape)
    analysis = analyse_channels(Graph.from_model(onnx_model, val.image_shape))
    evaluator = SubstitutionEvaluator(loaded.module, val, ChannelPruningTransform(analysis))
    identity = Plan((), hashlib.sha256(onnx_model.graph.SerializeToString()).hexdigest()[:16])

    priorities = _priorities(out_dir / f"part3_priorities_val{val_size}.npz", evaluator, analysis)
    space = CompressionSpace.from_priorities(analysis.prunable_groups, priorities, identity.model_fingerprint)
    # The cache is only valid for this exact channel order and validation set.
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(s.order).tobytes() for s in space.sites)).hexdigest()[:8]
    cache = EvaluationCache(out_dir / f"part3_cache_val{val_size}_{digest}.jsonl")

    baseline_val = float(evaluator.accuracy([identity])[0])
    cost_model = make_cost_model("macs", load_target("host"))
    baseline_cost = float(cost_model.estimate(plan_workloads(analysis, [identity]))[0])
    score = AdaNSScore(baseline_val, baseline_cost, baseline_val - ALLOWED_DROP, ALLOWED_DROP)
    objective = PruningObjective(space, analysis, evaluator, cost_model, score, baseline_cost, cache, len(val))
    objective.characterise()
    return objective


def _priorities(path: Path, evaluator, analysis) -> dict[str, np.ndarray]:
    """Channel priorities, computed once and kept so every run decodes x the same way."""
    if path.is_file():
        with np.load(path) as archive:
            return {k: archive[k] for k in archive.files}
    priorities = evaluator.priorities(analysis, analysis.prunable_groups, PRIORITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **priorities)
    return priorities
