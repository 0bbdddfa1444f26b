"""Ray actors (`--executor ray`): a local Ray started on demand, or an existing cluster.

Each actor holds the model and the validation data (shared once through the
object store) and evaluates a contiguous chunk of each batch. Actors restart
when their process dies and Ray re-runs the interrupted call, so a lost
worker costs time, not results.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from adans_toolchain.errors import ConfigError
from adans_toolchain.plan import Plan
from adans_toolchain.evaluation.base import SCREEN_COLUMNS
from adans_toolchain.evaluation.executors.base import Executor, chunk_bounds
from adans_toolchain.evaluation.executors.spec import EvaluatorSpec


def _require_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray)") from e
    return ray


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, spec: EvaluatorSpec, *, workers: int | None = None, address: str | None = None,
                 threads_per_worker: int = 1, restarts: int = 3) -> None:
        ray = _require_ray()
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
                self._started = True
        self._ray = ray
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_worker)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = spec.device.startswith("cuda") and gpus > 0
        spec_ref = ray.put(spec)

        @ray.remote(max_restarts=restarts, max_task_retries=restarts)
        class _Worker:
            def __init__(self, spec_ref, device: str, threads: int):
                self.spec = spec_ref.on(device, threads)
                self.evaluator = self.spec.build()

            def screen(self, plans):
                return self.evaluator.screen(plans)

        options = {"num_cpus": threads_per_worker, "num_gpus": 1 if use_gpu else 0}
        device = "cuda" if use_gpu else "cpu"
        self.actors = [_Worker.options(**options).remote(spec_ref, device, threads_per_worker) for _ in range(count)]

    @property
    def workers(self) -> int:
        return len(self.actors)

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers, "ray_address": self._ray.get_runtime_context().gcs_address}

    def screen(self, plans: Sequence[Plan]) -> np.ndarray:
        plans = list(plans)
        bounds = chunk_bounds(len(plans), self.workers)
        futures = [self.actors[i].screen.remote(plans[a:b]) for i, (a, b) in enumerate(bounds)]
        results = self._ray.get(futures)
        return np.concatenate(results) if results else np.zeros((0, len(SCREEN_COLUMNS)))

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self._ray.kill(actor)
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False
