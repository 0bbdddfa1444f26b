"""Measured latency of ONNX models in ONNX Runtime.

Machines are noisy, so speed is always a ratio of two models measured in the
same run: repetitions of baseline and candidate are interleaved (alternating
which goes first) and the minimum of each is compared. The minimum is the
run least disturbed by anything else on the machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from adans_toolchain.runtime.sessions import make_session


@dataclass(frozen=True)
class Timing:
    batch_size: int
    min_ms: float
    median_ms: float
    repeats: int


def compare_latency(
    models: dict[str, onnx.ModelProto],
    image_shape: tuple[int, ...],
    batch_size: int,
    *,
    threads: int,
    min_repeats: int = 10,
    max_repeats: int = 200,
    time_budget_s: float = 8.0,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Timing]:
    """Interleaved timing of several models on the same input; stops at the time budget."""
    sessions = {name: make_session(m, threads) for name, m in models.items()}
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *image_shape)).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for _ in range(warmup):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    start = time.perf_counter()
    for r in range(max_repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            sessions[name].run(None, feeds[name])
            samples[name].append((time.perf_counter() - t0) * 1e3)
        if r + 1 >= min_repeats and time.perf_counter() - start > time_budget_s:
            break
    return {
        name: Timing(batch_size, float(np.min(v)), float(np.median(v)), len(v)) for name, v in samples.items()
    }


def measured_speedup(
    baseline: onnx.ModelProto,
    compressed: onnx.ModelProto,
    image_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    *,
    threads: int,
    time_budget_s: float = 8.0,
) -> dict:
    result = {"threads": threads, "method": "min of interleaved repetitions, ONNX Runtime CPU, ORT_ENABLE_ALL"}
    for batch in batch_sizes:
        t = compare_latency(
            {"baseline": baseline, "compressed": compressed}, image_shape, batch, threads=threads, time_budget_s=time_budget_s
        )
        result[f"batch_{batch}"] = {
            "baseline_ms": t["baseline"].min_ms,
            "compressed_ms": t["compressed"].min_ms,
            "baseline_median_ms": t["baseline"].median_ms,
            "compressed_median_ms": t["compressed"].median_ms,
            "speedup": t["baseline"].min_ms / t["compressed"].min_ms,
            "repeats": t["baseline"].repeats,
        }
    return result
