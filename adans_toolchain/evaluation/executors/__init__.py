"""Where candidate accuracies are computed: in process, one process per GPU, or on a Ray cluster.

Every executor returns the accuracies of a batch of plans *in order*, so for
a given seed the search history is the same whatever the executor and the
number of workers.
"""

from dataclasses import replace

from adans_toolchain.evaluation.executors.base import Executor, chunk_bounds, evaluation_chunk
from adans_toolchain.evaluation.executors.local import LocalExecutor
from adans_toolchain.evaluation.executors.spec import EvaluatorSpec

EXECUTOR_NAMES = ("local", "multi-gpu", "ray")

__all__ = ["EXECUTOR_NAMES", "EvaluatorSpec", "Executor", "LocalExecutor", "chunk_bounds", "evaluation_chunk", "make_executor"]


def make_executor(name: str, evaluator, spec_factory, *, workers: int | None = None, ray_address: str | None = None) -> Executor:
    """`spec_factory()` builds the EvaluatorSpec lazily (only remote executors need it).

    Remote workers apply `evaluator`'s early-rejection rule as it is now (the
    spec carries it unless it names one itself): set the rule before this.
    """
    if name == "local":
        return LocalExecutor(evaluator)
    factory = spec_factory

    def spec_factory() -> EvaluatorSpec:
        spec = factory()
        rule = getattr(evaluator, "early_rejection", None)
        return spec if spec.early_rejection is not None or rule is None else replace(spec, early_rejection=rule)

    if name == "multi-gpu":
        from adans_toolchain.evaluation.executors.processes import MultiProcessExecutor, visible_gpus

        devices = visible_gpus()
        if workers is not None:
            devices = devices[:workers]
        return MultiProcessExecutor(spec_factory(), devices)
    if name == "ray":
        from adans_toolchain.evaluation.executors.ray_executor import RayExecutor

        return RayExecutor(spec_factory(), workers=workers, address=ray_address)
    raise ValueError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTOR_NAMES)}")
