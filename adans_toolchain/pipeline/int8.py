"""--quantize int8: the emitted float model (after fine-tuning, if any) quantized, validated, measured.

Called once by compile._emit; everything it needs is passed in, so the hook
there stays two lines. What is quantized and why: quantization/qdq.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from adans_toolchain.quantization import INT8_SCHEME, quantize_model, validate_int8, weighted_layers
from adans_toolchain.quantization.cost import precision_costs
from adans_toolchain.reporting.int8 import Int8Facts
from adans_toolchain.runtime.measure import compare_latency
from adans_toolchain.runtime.sessions import top1

# Calibration images when BatchNorm re-estimation is off (--bn-recalibrate 0), from the searched part of VAL.
DEFAULT_CALIBRATION_IMAGES = 500


@dataclass(frozen=True)
class Int8Outcome:
    model: onnx.ModelProto  # written to OUT/model_int8.onnx
    facts: Int8Facts


def emit_int8(cfg, inputs, baseline: onnx.ModelProto, emitted: onnx.ModelProto, accuracies, progress,
              timings: dict[str, float]) -> Int8Outcome:
    """Quantize `emitted` (model.onnx), validate it against its simulation, score it, and time it beside
    `baseline` (baseline.onnx) and `emitted` in one interleaved run."""
    t = time.perf_counter()
    if inputs.calibration is not None:
        calibration = inputs.calibration
        source = f"`{cfg.calibration_data}` (--calibration-data)" if cfg.calibration_data else "the searched VAL images"
    else:
        calibration = inputs.search_val.subset(min(DEFAULT_CALIBRATION_IMAGES, len(inputs.search_val)))
        source = "the searched VAL images"
    layers = weighted_layers(emitted)
    progress.step(f"int8: quantizing {len(layers)} layers of the emitted model, calibrated on {len(calibration)} images")
    int8 = quantize_model(emitted, calibration.x, None)
    progress.step(f"int8: validating against its simulation on {len(inputs.val)} VAL images")
    validation = validate_int8(int8, emitted, inputs.val.x.numpy(), threads=inputs.threads,
                               image_shape=tuple(inputs.val.image_shape))
    quantized = validation.spec.layers
    splits = {"val": (inputs.val, accuracies.val)}
    if inputs.test is not None:
        splits["test"] = (inputs.test, accuracies.test)
    scores = {
        split: {"float": acc.compressed,
                "int8": top1(int8, data.x.numpy(), data.y.numpy(), threads=inputs.threads, batch_size=cfg.batch_size)}
        for split, (data, acc) in splits.items()
    }
    measured = None
    if not cfg.no_measure:
        progress.step(f"int8: measuring speed beside the float models (batches {list(cfg.measure_batches)})")
        measured = _measure(baseline, emitted, int8, tuple(inputs.val.image_shape), cfg, inputs.threads)
    facts = Int8Facts(
        scheme=dict(INT8_SCHEME),
        layers=tuple(n for n in layers if n in quantized),
        float_layers=tuple(n for n in layers if n not in quantized),
        calibration_images=len(calibration),
        calibration_source=source,
        file_bytes={"float": len(emitted.SerializeToString()), "int8": len(int8.SerializeToString())},
        costs=precision_costs(emitted, quantized, tuple(inputs.val.image_shape)),
        top1=scores,
        validation=validation.as_dict(),
        measured=measured,
    )
    timings["int8_s"] = time.perf_counter() - t
    return Int8Outcome(int8, facts)


def _measure(baseline: onnx.ModelProto, emitted: onnx.ModelProto, int8: onnx.ModelProto, image_shape, cfg,
             threads: int) -> dict:
    result = {"threads": threads, "method": "min of interleaved repetitions of baseline, float and int8, ONNX Runtime CPU, "
              "ORT_ENABLE_ALL"}
    for batch in cfg.measure_batches:
        t = compare_latency({"baseline": baseline, "float": emitted, "int8": int8}, image_shape, batch, threads=threads,
                            time_budget_s=cfg.measure_budget_s)
        base = t["baseline"].min_ms
        result[f"batch_{batch}"] = {
            "baseline_ms": base, "float_ms": t["float"].min_ms, "int8_ms": t["int8"].min_ms,
            "float_speedup": base / t["float"].min_ms, "int8_speedup": base / t["int8"].min_ms,
            "int8_over_float": t["float"].min_ms / t["int8"].min_ms, "repeats": t["baseline"].repeats,
        }
    return result
