"""The one ONNX Runtime session recipe: every model adans runs (candidates, validation, measurement, profiling) runs with these options."""

from __future__ import annotations

import numpy as np
import onnx


def session_options(
    threads: int, *, profile_prefix: str | None = None, optimized_path: str | None = None, optimize: bool = True
):
    """How every adans session runs a model: `threads` intra-op threads, sequential, full graph optimisation.

    The profiler (profiling/timing.py) times single kernels with these same
    options, so its table describes the runtime the measurements use.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # optimize=False runs the graph as written (shape probing reads every intermediate tensor).
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.graph_optimization_level = level
    # 3 = errors only: "initializer appears in graph inputs" is intended where candidates override initializers.
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


def make_session(
    model: onnx.ModelProto, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",), *, optimize: bool = True
):
    import onnxruntime as ort

    options = session_options(threads, optimize=optimize)
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))


def run_onnx(
    model: onnx.ModelProto, x: np.ndarray, threads: int = 1, batch_size: int = 64, *, optimize: bool = True
) -> np.ndarray:
    """Logits of `model` on `x`, in batches; optimize=False runs the graph as written (no fusion, ORT_DISABLE_ALL)."""
    session = make_session(model, threads, optimize=optimize)
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, *, threads: int, batch_size: int) -> float:
    """Top-1 accuracy in percent of `model` on images `x` with labels `y`."""
    logits = run_onnx(model, x, threads=threads, batch_size=batch_size)
    return float(100.0 * np.mean(logits.argmax(1) == y))


