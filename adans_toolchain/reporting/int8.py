"""The report's "int8" section (--quantize int8, or a searched plan with int8 layers): facts the pipeline computed,
and their Markdown."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class Int8Facts:
    """model_int8.onnx beside model.onnx: what was quantized, how it validated, its size, accuracy and speed."""

    scheme: Mapping[str, str]  # quantization.INT8_SCHEME
    layers: tuple[str, ...]  # weighted layers with int8 weights (node names)
    float_layers: tuple[str, ...]  # weighted layers left float
    calibration_images: int
    calibration_source: str
    file_bytes: Mapping[str, int]  # {"float": model.onnx, "int8": model_int8.onnx}
    costs: Mapping[str, Any]  # quantization.cost.precision_costs: weight bytes, MACs per precision, memory
    top1: Mapping[str, Mapping[str, float]]  # split -> {"float": model.onnx, "int8": model_int8.onnx}
    validation: Mapping[str, Any]  # quantization.Int8Validation.as_dict()
    # Per batch: baseline, float (model.onnx) and int8 ms, interleaved in one run, and both speedups over the
    # baseline; None with --no-measure.
    measured: Mapping[str, Any] | None = None
    # True: the layers are the plan's (--methods ...,int8), chosen by the search; False: --quantize int8, every layer.
    searched: bool = False

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layers"], d["float_layers"] = list(self.layers), list(self.float_layers)
        d["file_ratio"] = self.file_bytes["int8"] / self.file_bytes["float"]
        return d


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} %"


def _runtime_agreement(v: dict) -> str:
    """How often ONNX Runtime's fused and unfused runs agreed, where validation measured it (what below 99 % rests on)."""
    agreement = v.get("runtime_noise_agreement")
    return "" if agreement is None else f"; ONNX Runtime's fused and unfused runs agree on {agreement:.1%}"


def int8_markdown(r: dict) -> list[str]:
    """The report.md section for report.json's "int8" entry ([] without one)."""
    q = r.get("int8")
    if not q:
        return []
    v, s, files = q["validation"], q["scheme"], q["file_bytes"]
    weights = q["costs"]["weight_bytes"]
    float_weights, int8_weights = sum(weights["float"].values()), sum(weights["int8"].values())
    searched = q.get("searched", False)
    lines = [
        "## int8 (precision searched per layer)" if searched else "## int8 (post-training quantization)",
        "",
        *([
            "`model_int8.onnx` is the searched model: the plan's int8 layers quantized, calibrated on the images its "
            "candidates were scored with; `model.onnx` is its float version (the plan's pruning and decomposition only). "
            "The layer table gives each layer's precision.",
            "",
        ] if searched else []),
        f"`model_int8.onnx`: {len(q['layers'])} of {len(q['layers']) + len(q['float_layers'])} weighted layers int8. "
        f"Format: {s['format']}. Weights: {s['weights']}. Activations: {s['activations']}. Bias: {s['bias']}. "
        f"Calibration: {s['calibration']}, {q['calibration_images']} images from {q['calibration_source']}.",
        "",
        "| | model.onnx (float) | model_int8.onnx |",
        "|---|---|---|",
    ]
    for split, label in (("val", "VAL"), ("test", "TEST")):
        if split in q["top1"]:
            t = q["top1"][split]
            lines.append(f"| top-1 {label} | {_pct(t['float'])} | {_pct(t['int8'])} |")
    lines += [
        f"| ONNX file bytes | {files['float']:,} | {files['int8']:,} ({q['file_ratio']:.1%}) |",
        f"| weight bytes (with biases, int8 scales) | {float_weights:,} | {int8_weights:,} ({int8_weights / float_weights:.1%}) |",
        f"| memory (weights + peak float activations), bytes | {q['costs']['memory_bytes']['float']:,} | "
        f"{q['costs']['memory_bytes']['int8']:,} |",
        "| MACs by precision | | " + ", ".join(f"{k} {v_:,}" for k, v_ in sorted(q["costs"]["macs"].items())) + " |",
        "",
    ]
    m = q.get("measured")
    if m:
        lines += [
            f"Measured on this host (ONNX Runtime, {m['threads']} thread{'s' if m['threads'] != 1 else ''}, minimum of "
            "interleaved repetitions of the three models):",
            "",
            "| batch | baseline ms | float ms | int8 ms | float speedup | int8 speedup |",
            "|---|---|---|---|---|---|",
        ]
        for key, b in m.items():
            if key.startswith("batch_"):
                lines.append(f"| {key.removeprefix('batch_')} | {b['baseline_ms']:.3f} | {b['float_ms']:.3f} | {b['int8_ms']:.3f} | "
                             f"{b['float_speedup']:.2f}× | **{b['int8_speedup']:.2f}×** |")
        lines.append("")
    if v.get("allowed_by", "tolerance") == "tolerance":
        allowed = f"({v['relative_diff']:.2%} of the largest |logit|; tolerance {v['tolerance']:.0%})"
    else:  # beyond the tolerance: a multiple of ONNX Runtime's own rounding noise allowed (quantization/validate.py)
        allowed = (
            f"({v['max_abs_diff'] / v['largest_logit']:.2%} of the largest |logit|, beyond the tolerance "
            f"{v['tolerance']:.0%}; allowed {v['allowed_diff']:.3g}: {v['runtime_noise_factor']:g}× ONNX Runtime's own "
            f"rounding noise {v['runtime_noise']:.3g}, its fused vs unfused runs of the model on the same images, at most "
            f"{v['max_tolerance']:.0%} of the largest |logit|)"
        )
    lines += [
        f"Validated: ONNX Runtime's int8 model against {v['reference']} on {v['images']} VAL images: top-1 agreement "
        f"{v['top1_agreement']:.1%} (required {v['min_top1_agreement']:.1%}{_runtime_agreement(v)}), max |logit diff| "
        f"{v['max_abs_diff']:.3g} "
        f"{allowed}, mean {v['mean_abs_diff']:.3g}.",
        "",
    ]
    if q["float_layers"]:
        lines += ["Float layers: " + ", ".join(f"`{n}`" for n in q["float_layers"]) + ".", ""]
    return lines
