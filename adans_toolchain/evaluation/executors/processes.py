"""One worker process per device (`--executor multi-gpu`).

Each device gets its own single-process pool holding the model and the
validation data on that device; a batch is split into one contiguous chunk
per device. A worker that dies breaks only its pool, which is rebuilt and
its chunk evaluated again.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import numpy as np

from adans_toolchain.errors import ConfigError
from adans_toolchain.plan import Plan
from adans_toolchain.evaluation.base import SCREEN_COLUMNS
from adans_toolchain.evaluation.executors.base import Executor, chunk_bounds
from adans_toolchain.evaluation.executors.spec import EvaluatorSpec

_EVALUATOR = None


def _init(spec: EvaluatorSpec) -> None:
    global _EVALUATOR
    _EVALUATOR = spec.build()


def _evaluate(plans: list[Plan]) -> np.ndarray:
    """Rows [accuracy, images seen, rejected] (Evaluator.screen) of `plans`."""
    return _EVALUATOR.screen(plans)


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--executor multi-gpu needs CUDA devices and PyTorch sees none; use --executor local or ray")
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class MultiProcessExecutor(Executor):
    name = "multi-gpu"

    def __init__(self, spec: EvaluatorSpec, devices: Sequence[str], *, threads_per_worker: int = 1, retries: int = 2) -> None:
        if not devices:
            raise ConfigError("no device to run workers on")
        self.spec = spec
        self.devices = list(devices)
        self.threads = threads_per_worker
        self.retries = retries
        # spawn: CUDA cannot be used in a forked child.
        self._context = multiprocessing.get_context("spawn")
        self._pools = [self._pool(d) for d in self.devices]

    def _pool(self, device: str) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=self._context, initializer=_init, initargs=(self.spec.on(device, self.threads),))

    @property
    def workers(self) -> int:
        return len(self.devices)

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers, "devices": self.devices}

    def screen(self, plans: Sequence[Plan]) -> np.ndarray:
        plans = list(plans)
        bounds = chunk_bounds(len(plans), self.workers)
        results: list[np.ndarray | None] = [None] * len(bounds)
        pending = list(range(len(bounds)))
        for attempt in range(self.retries + 1):
            futures = {i: self._pools[i].submit(_evaluate, plans[slice(*bounds[i])]) for i in pending}
            failed = []
            for i, future in futures.items():
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    failed.append(i)
            for i in failed:  # the worker died: a fresh process, the same chunk
                self._pools[i].shutdown(wait=False, cancel_futures=True)
                self._pools[i] = self._pool(self.devices[i])
            pending = failed
            if not pending:
                break
        if pending:
            raise RuntimeError(f"workers on {[self.devices[i] for i in pending]} died {self.retries + 1} times in a row")
        return np.concatenate(results) if results else np.zeros((0, len(SCREEN_COLUMNS)))

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools = []
