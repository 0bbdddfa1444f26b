"""OUT/model_int8.onnx: the emitted float model (after fine-tuning, if any) quantized, validated, measured.

One story for both ways to ask for int8: model.onnx is always the float
model (pruned and factorised; what fine-tuning trains and --rounds
composes), and model_int8.onnx beside it is its QDQ int8 version:
- --quantize int8: every weighted layer, after the search (post-training);
- --methods ...,int8: exactly the layers the plan runs in int8, calibrated
  on the images the search scored it with (quantization/searched.py), so
  the file is the model the search chose. A plan that keeps every layer
  float writes no model_int8.onnx.
Called once by compile._emit; everything it needs is passed in, so the hook
there stays two lines. What is quantized and why: quantization/qdq.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from adans_toolchain.plan import Plan
from adans_toolchain.quantization import INT8_SCHEME, quantize_model, validate_int8, weighted_layers
from adans_toolchain.quantization.cost import precision_costs
from adans_toolchain.quantization.searched import int8_nodes, search_calibration
from adans_toolchain.reporting.int8 import Int8Facts
from adans_toolchain.runtime.measure import compare_latency
from adans_toolchain.runtime.sessions import top1

# Calibration images when BatchNorm re-estimation is off (--bn-recalibrate 0), from the searched part of VAL.
DEFAULT_CALIBRATION_IMAGES = 500


@dataclass(frozen=True)
class Int8Outcome:
    model: onnx.ModelProto  # written to OUT/model_int8.onnx
    facts: Int8Facts


def wants_int8(cfg, plan: Plan) -> bool:
    """Whether a model_int8.onnx is emitted for `plan`: --quantize int8, or a searched plan with int8 layers."""
    return bool(cfg.quantize) or bool(plan.int8_layers)


def emit_int8(cfg, inputs, baseline: onnx.ModelProto, emitted: onnx.ModelProto, accuracies, progress,
              timings: dict[str, float], plan: Plan) -> Int8Outcome:
    """Quantize `emitted` (model.onnx) as asked (see the module docstring), validate it against its simulation,
    score it, and time it beside `baseline` (baseline.onnx) and `emitted` in one interleaved run."""
    t = time.perf_counter()
    layers = weighted_layers(emitted)
    searched = bool(plan.int8_layers)
    if searched:
        calibration, source = search_calibration(inputs.calibration, inputs.search_val)
        chosen = set(int8_nodes(emitted, inputs.analysis, plan))
        if cfg.calibration_data and inputs.calibration is not None:
            source = f"`{cfg.calibration_data}` (--calibration-data)"
    elif inputs.calibration is not None:
        calibration, chosen = inputs.calibration, None
        source = f"`{cfg.calibration_data}` (--calibration-data)" if cfg.calibration_data else "the searched VAL images"
    else:
        calibration, chosen = inputs.search_val.subset(min(DEFAULT_CALIBRATION_IMAGES, len(inputs.search_val))), None
        source = "the searched VAL images"
    what = "every" if chosen is None else f"the plan's {len(chosen)} of"
    progress.step(f"int8: quantizing {what} {len(layers)} layers of the emitted model, calibrated on {len(calibration)} images")
    int8 = quantize_model(emitted, calibration.x, chosen)
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
        searched=searched,
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
