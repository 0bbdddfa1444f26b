"""report.json (for tools) and report.md (for people), plus the convergence plot."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from cost_models import workload_macs, workload_params

from adans_toolchain import __version__
from adans_toolchain.analysis.factors import origin_layer
from adans_toolchain.analysis.graph import Graph
from adans_toolchain.plan.workload import graph_workload, plan_workload
from adans_toolchain.fileio import atomic_write_text


def _versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import onnxsim
    import torch

    return {
        "adans": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def plan_layer_table(analysis, plan) -> list[dict]:
    """Per weighted layer: what the plan does to it, channels, MACs and parameters before and after."""
    from cost_models import op_macs

    before = [op for op in plan_workload(analysis, None) if op.op_type in _WEIGHTED]
    after: dict[str, list] = {}
    for op in plan_workload(analysis, plan):
        if op.op_type in _WEIGHTED:
            after.setdefault(origin_layer(op.name), []).append(op)
    nodes = {n.name: n for n in analysis.graph.nodes}
    rows = []
    for b in before:
        node = nodes.get(b.name)
        weight = node.input[1] if node is not None and len(node.input) > 1 else b.name
        ops = after.get(b.name, [b])
        d, sp = plan.decomposition_for(weight), plan.sparsity_for(weight)
        edits = []
        if d is not None and not d.is_identity:
            edits.append(f"{d.method} rank {d.ranks[0]}" if d.method == "svd" else f"tucker ranks ({d.ranks[0]}, {d.ranks[1]})")
        if sp is not None and sp.removed:
            edits.append(f"{sp.removed / sp.size:.0%} zero weights")
        if ops[0].input_shape[1] != b.input_shape[1] or ops[-1].output_shape[1] != b.output_shape[1]:
            edits.insert(0, "channels pruned")
        rows.append(
            {
                "layer": weight.removesuffix(".weight"),
                "node": b.name,
                "op": b.op_type + (" (depthwise)" if b.groups > 1 and b.groups == b.input_shape[1] else ""),
                "edit": ", ".join(edits) or "—",
                "in_channels": [b.input_shape[1], ops[0].input_shape[1]],
                "out_channels": [b.output_shape[1], ops[-1].output_shape[1]],
                "macs": [op_macs(b), sum(op_macs(o) for o in ops)],
                "params": [_params(b), sum(_params(o) for o in ops)],
                **({"decomposition": {"method": d.method, "ranks": list(d.ranks), "full": list(d.full)}} if d and not d.is_identity else {}),
                **({"sparsity": sp.removed / sp.size} if sp and sp.removed else {}),
            }
        )
    return rows


_WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _params(op) -> int:
    from math import prod

    return prod(op.weight_shape) + (op.output_shape[1] if op.has_bias else 0)


def storage(model) -> dict:
    """Sizes of the emitted model's weights: dense, in a bitmask + values format, and the compressed file."""
    import zlib

    import numpy as np
    from onnx import numpy_helper

    elements = nonzero = 0
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype.kind == "f":
            elements += value.size
            nonzero += int(np.count_nonzero(value))
    file_bytes = model.SerializeToString()
    return {
        "weights": elements,
        "nonzero_weights": nonzero,
        "dense_bytes": 4 * elements,
        "bitmask_plus_values_bytes": (elements + 7) // 8 + 4 * nonzero,
        "file_bytes": len(file_bytes),
        "file_bytes_zlib": len(zlib.compress(file_bytes, 9)),
    }


def build_report(*, cfg, inputs, space, boundary, score, result, best, plan, baseline_onnx, lowered, validation,
                 accuracy, measured, pass_log, stats, timings, notes, cost_model, finetuning=None, latency=None) -> dict:
    analysis = inputs.analysis
    base_work = graph_workload(Graph.from_model(baseline_onnx, inputs.val.image_shape))
    comp_work = graph_workload(Graph.from_model(lowered, inputs.val.image_shape))
    base_macs, comp_macs = workload_macs(base_work), workload_macs(comp_work)
    base_cost = float(cost_model.estimate([base_work])[0])
    comp_cost = float(cost_model.estimate([comp_work])[0])

    def side(name: str, macs: int, params: int, cost: float, model) -> dict:
        entry = {"macs": macs, "params": params, "cost": {cost_model.unit: cost}, "storage": storage(model)}
        # accuracy["compressed_test_before_finetune"] -> entry["top1_test_before_finetune"]
        for key, value in sorted(accuracy.items()):
            if key.startswith(f"{name}_"):
                entry[f"top1_{key[len(name) + 1:]}"] = value
        return entry

    kept = {p.group: len(p.keep) for p in plan.pruning}
    groups = [
        {
            "id": g.id,
            "channels": g.size,
            "kept": kept.get(g.id, g.size),
            "tensors": len(g.tensors),
            "producers": len(g.producers),
            "prunable": g.prunable,
            **({"reason": g.frozen_reason} if not g.prunable else {}),
        }
        for g in analysis.groups
    ]
    speedup = {"theoretical": base_macs / comp_macs}
    if latency is not None:
        speedup["predicted"] = latency["baseline_ms"] / latency["compressed_ms"]
        speedup["predicted_source"] = latency["source"]
    if measured is not None:
        speedup["measured_host"] = measured
    layers = plan_layer_table(analysis, plan)
    report = {
        "format": "adans-report/1",
        "command": cfg.command,
        "seed": cfg.seed,
        "versions": _versions(),
        "model": {"path": cfg.model, "description": inputs.model_description, "input_shape": list(inputs.val.image_shape)},
        "target": inputs.target.as_dict(),
        "data": {
            "val": {"path": cfg.data, "images": len(inputs.val)},
            **({"test": {"path": cfg.test_data, "images": len(inputs.test)}} if inputs.test is not None else {}),
            "preprocessing": inputs.preprocessing.as_dict(),
        },
        "baseline": side("baseline", base_macs, workload_params(base_work), base_cost, baseline_onnx),
        "compressed": side("compressed", comp_macs, workload_params(comp_work), comp_cost, lowered),
        "speedup": speedup,
        "table_iv": table_iv(speedup, layers, latency, inputs.target),
        "validation": validation.as_dict(),
        "search": {
            "methods": list(space_methods(space)),
            "sampler": cfg.sampler,
            "cost": cost_model.describe(),
            "samples": cfg.samples,
            "iterations": cfg.iterations,
            "priority": cfg.priority,
            "round_to": cfg.round_to,
            "bn_recalibration": {
                "images": 0 if inputs.calibration is None else len(inputs.calibration),
                "source": cfg.calibration_data or (cfg.data if inputs.calibration is not None else None),
                "note": "every compressed candidate is scored, and the model emitted, with BatchNorm statistics "
                "re-estimated on these images (one forward pass, no weight updates)",
            },
            "score": score.as_dict(),
            "accuracy_threshold": score.accuracy_threshold,
            "baseline_top1_val_substituted": score.baseline_accuracy,
            "boundary": boundary.as_dict(),
            "sites": space.names,
            "evaluations": stats["evaluated"],
            "cache_hits": stats["cached"],
            "evaluations_per_s": stats["evaluated"] / max(stats["eval_seconds"], 1e-9),
            "executor": stats.get("executor"),
            "precision": stats.get("precision"),
            "resumed_from_iteration": result.resumed_from,
            "best": None if best is None else {"f": best.f, "iteration": best.iteration, **best.info},
            "feasible_samples": sum(1 for e in result.history if e.info.get("feasible")),
            "history_samples": len(result.history),
            "iterations_log": [
                {k: getattr(s, k) for k in ("iteration", "alpha", "n_good", "mean_good_f", "best_f", "e_avg", "e_range", "n_evaluations", "elapsed_s")}
                for s in result.iterations
            ],
        },
        "groups": groups,
        "frozen_groups": [{"id": g["id"], "channels": g["channels"], "reason": g["reason"]} for g in groups if not g["prunable"]],
        "layers": layers,
        **({"finetuning": finetuning} if finetuning else {}),
        "lowering": pass_log,
        "timings_s": timings,
        "notes": notes,
    }
    if latency is not None:
        for name in ("baseline", "compressed"):
            report[name]["latency_ms"] = latency[f"{name}_ms"]
            report[name]["latency_source"] = latency["source"]
    return report


def table_iv(speedup: dict, layers: list[dict], latency: dict | None, target) -> dict:
    """Theoretical (MACs), predicted (latency model on the target) and measured (ONNX Runtime, host) speedups.

    The paper's Table IV reports measured/theoretical per model; per layer,
    the measured column needs per-operator timing, which the report does not
    take (operators fuse differently once channels change), so layers show
    theoretical and predicted only.
    """
    measured = {k.removeprefix("batch_"): v["speedup"] for k, v in (speedup.get("measured_host") or {}).items() if k.startswith("batch_")}
    model = {
        "theoretical": speedup["theoretical"],
        "predicted": speedup.get("predicted"),
        "predicted_source": speedup.get("predicted_source"),
        "predicted_for": {"target": target.id, "batch_size": target.batch_size, "threads": target.threads},
        "measured_host": measured,
        "measured_over_theoretical": {b: m / speedup["theoretical"] for b, m in measured.items()},
        "measured_over_predicted": {b: m / speedup["predicted"] for b, m in measured.items()} if speedup.get("predicted") else {},
    }
    rows = []
    per_layer = latency["layers_ms"] if latency is not None else None
    for row in layers:
        macs_before, macs_after = row["macs"]
        entry = {"layer": row["layer"], "theoretical": macs_before / macs_after if macs_after else None}
        if per_layer is not None:
            before, after = per_layer[0].get(row["node"]), per_layer[1].get(row["node"])
            if before is not None and after:
                entry.update({"predicted_ms": [before, after], "predicted": before / after})
        rows.append(entry)
    return {"model": model, "layers": rows}


def space_methods(space) -> list[str]:
    kinds = {"ps": "ps", "pn": "pn"}
    methods = []
    for site in space.sites:
        name = kinds.get(site.kind) or site.method
        if name not in methods:
            methods.append(name)
    return methods


def write_report(out: Path, report: dict, result) -> None:
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    plots = []
    if result.iterations:
        try:
            from adans_toolchain.reporting.plots import plot_convergence

            plot_convergence(result.iterations, out / "convergence.png")
            plots.append("convergence.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a compile
            report["notes"].append(f"convergence plot not written: {e}")
    atomic_write_text(out / "report.md", render_markdown(report, plots))


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _table_iv_markdown(r: dict) -> list[str]:
    t = r["table_iv"]["model"]
    if t["predicted"] is None and not t["measured_host"]:
        return []
    source = f" ({t['predicted_source']})" if t["predicted_source"] else ""
    where = t["predicted_for"]
    lines = [
        "## Speedup: theoretical, predicted, measured (the paper's Table IV)",
        "",
        f"Predicted: the `{r['search']['cost']['name'] if r['search']['cost']['name'] == 'latency' else 'latency'}` cost model "
        f"for `{where['target']}` at batch {where['batch_size']}, {_threads(where['threads'])}{source}. "
        "Measured: ONNX Runtime on this host.",
        "",
        "| theoretical (MACs) | predicted" + source.replace(" (", ", ").rstrip(")") + " | " + " | ".join(f"measured, batch {b}" for b in t["measured_host"]) +
        " | " + " | ".join(f"measured / theoretical, batch {b}" for b in t["measured_host"]) + " |",
        "|---|---|" + "---|" * (2 * len(t["measured_host"])),
        f"| {_ratio(t['theoretical'])} | {_ratio(t['predicted'])} | "
        + " | ".join(_ratio(v) for v in t["measured_host"].values()) + " | "
        + " | ".join(f"{v:.2f}" for v in t["measured_over_theoretical"].values()) + " |",
        "",
    ]
    rows = [row for row in r["table_iv"]["layers"] if row["theoretical"] and (row["theoretical"] != 1.0 or row.get("predicted"))]
    if any("predicted" in row for row in rows):
        lines += ["| layer | theoretical | predicted ms before → after | predicted |", "|---|---|---|---|"]
        for row in rows:
            if "predicted" in row:
                before, after = row["predicted_ms"]
                lines.append(f"| {row['layer']} | {_ratio(row['theoretical'])} | {before:.4f} → {after:.4f} | {_ratio(row['predicted'])} |")
        lines.append("")
    return lines


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} %"


def render_markdown(r: dict, plots: list[str]) -> str:
    b, c = r["baseline"], r["compressed"]
    s = r["search"]
    lines = [
        "# adans compile report",
        "",
        f"Model: {r['model']['description']} — input {r['model']['input_shape']}  ",
        f"Target: `{r['target']['id']}` ({r['target']['description']})  ",
        f"Command: `{r['command']}`",
        "",
        "## Result",
        "",
        "| | baseline | compressed |",
        "|---|---|---|",
        f"| top-1 VAL ({r['data']['val']['images']} images) | {_pct(b['top1_val'])} | {_pct(c['top1_val'])} |",
    ]
    if "top1_test" in b:
        lines.append(f"| top-1 TEST ({r['data']['test']['images']} images) | {_pct(b['top1_test'])} | {_pct(c['top1_test'])} |")
    for split in ("val", "test"):
        for suffix, label in (("before_finetune", "after search, before fine-tuning"),
                              ("without_bn_recalibration", "after search, trained BatchNorm statistics")):
            key = f"top1_{split}_{suffix}"
            if key in c:
                lines.append(f"| top-1 {split.upper()}, {label} | | {_pct(c[key])} |")
        key = f"top1_{split}_finetuned"
        if key in b:
            lines.append(f"| top-1 {split.upper()}, baseline fine-tuned the same way | {_pct(b[key])} | |")
    lines += [
        f"| MACs | {b['macs']:,} | {c['macs']:,} ({c['macs'] / b['macs']:.1%}) |",
        f"| parameters | {b['params']:,} | {c['params']:,} ({c['params'] / b['params']:.1%}) |",
        *([f"| latency on `{r['target']['id']}`, batch {r['target']['batch_size']}, {b['latency_source']} | "
           f"{b['latency_ms']:.3f} ms | {c['latency_ms']:.3f} ms |"] if "latency_ms" in b else []),
        "",
        f"Theoretical speedup (MACs): **{r['speedup']['theoretical']:.2f}×**",
        "",
        "| storage | baseline | compressed |",
        "|---|---|---|",
        f"| weights (non-zero) | {b['storage']['weights']:,} ({b['storage']['nonzero_weights']:,}) | "
        f"{c['storage']['weights']:,} ({c['storage']['nonzero_weights']:,}) |",
        f"| dense fp32 bytes | {b['storage']['dense_bytes']:,} | {c['storage']['dense_bytes']:,} |",
        f"| bitmask + values bytes | {b['storage']['bitmask_plus_values_bytes']:,} | {c['storage']['bitmask_plus_values_bytes']:,} |",
        f"| ONNX file, zlib-compressed bytes | {b['storage']['file_bytes_zlib']:,} | {c['storage']['file_bytes_zlib']:,} |",
        "",
    ]
    if any("sparsity" in row for row in r["layers"]):
        lines += [
            "Unstructured zeros are stored as dense weights: the runtime's dense kernels do not skip them, so no "
            "speedup is claimed for them beyond what is measured below; their saving is in the sparse and compressed sizes.",
            "",
        ]
    m = r["speedup"].get("measured_host")
    if m:
        lines += [
            f"Measured on this host (ONNX Runtime, {_threads(m['threads'])}, minimum of interleaved repetitions):",
            "",
            "| batch | baseline ms | compressed ms | measured speedup | repetitions |",
            "|---|---|---|---|---|",
        ]
        for key, v in m.items():
            if key.startswith("batch_"):
                lines.append(
                    f"| {key.removeprefix('batch_')} | {v['baseline_ms']:.3f} | {v['compressed_ms']:.3f} | **{v['speedup']:.2f}×** | {v['repeats']} |"
                )
        lines.append("")
    lines += _table_iv_markdown(r)
    ft = r.get("finetuning")
    if ft:
        cfg_ft = ft["config"]
        lines += [
            "## Fine-tuning",
            "",
            f"{cfg_ft['epochs']} epochs on {ft['train_images']} images from `{ft['train_data']}`: SGD (lr {cfg_ft['lr']}, "
            f"momentum {cfg_ft['momentum']}, weight decay {cfg_ft['weight_decay']}, cosine schedule), crop and flip"
            + (f", distillation from the original model (T = {cfg_ft['temperature']})" if cfg_ft["distill"] else "")
            + ". The emitted architecture itself is trained (its ONNX graph interpreted by PyTorch).",
            "",
            "| epoch | train loss | train top-1 |",
            "|---|---|---|",
        ]
        for i, (loss, acc) in enumerate(zip(ft["compressed"]["train_loss"], ft["compressed"]["train_top1"]), 1):
            lines.append(f"| {i} | {loss:.4f} | {acc:.2f} % |")
        lines.append("")
    v = r["validation"]
    lines += [
        "## Validation",
        "",
        f"Emitted ONNX vs {v['reference']} on {v['images']} real images: "
        f"max |diff| {v['max_abs_diff']:.3g} ({v['relative_diff']:.2e} of the output scale; tolerance {v['tolerance']:.0e}), "
        f"top-1 agreement {v['top1_agreement']:.1%}.",
        "",
        "## Search",
        "",
        f"Sampler `{s['sampler']}`, cost `{s['cost']['name']}`"
        + (f" ({s['cost']['latency_source']})" if s["cost"].get("latency_source") else "")
        + f", b = {s['samples']}, T = {s['iterations']}, "
        f"priority `{s['priority']}`; threshold {s['accuracy_threshold']:.2f} % on VAL; "
        f"{s['evaluations']} evaluations ({s['cache_hits']} repeated plans served from cache), "
        f"{s['evaluations_per_s']:.2f} evaluations/s; {s['feasible_samples']} of {s['history_samples']} samples feasible.",
        "",
        f"Score: {s['score']['formula']}, accuracy floor {s['score']['accuracy_floor']:.2f} points.",
        "",
        "e_avg is the paper's mean |f − f̃|/|f| of the reconstruction; it explodes when infeasible candidates score "
        "near 0, so e_range (mean |f − f̃| over the range of f seen so far) is given beside it.",
        "",
        "| iteration | α_t | good | mean f(S_g) | best f | e_avg | e_range |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in s["iterations_log"]:
        e = "—" if it["e_avg"] is None else f"{it['e_avg']:.3g}"
        e_range = "—" if it.get("e_range") is None else f"{it['e_range']:.3f}"
        lines.append(f"| {it['iteration']} | {it['alpha']:.2f} | {it['n_good']} | {it['mean_good_f']:.4f} | {it['best_f']:.4f} | {e} | {e_range} |")
    lines.append("")
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    lines += [
        "## Layers",
        "",
        "| layer | op | edit | in ch | out ch | MACs before | MACs after | params before | params after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["layers"]:
        lines.append(
            f"| {row['layer']} | {row['op']} | {row['edit']} | {row['in_channels'][0]} → {row['in_channels'][1]} | "
            f"{row['out_channels'][0]} → {row['out_channels'][1]} | {row['macs'][0]:,} | {row['macs'][1]:,} | "
            f"{row['params'][0]:,} | {row['params'][1]:,} |"
        )
    lines += ["", "## Channel groups", "", "| group | channels | kept | status |", "|---|---|---|---|"]
    for g in r["groups"]:
        status = "searched" if g["prunable"] else f"frozen: {g['reason']}"
        lines.append(f"| {g['id']} | {g['channels']} | {g['kept']} | {status} |")
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    t = r["timings_s"]
    lines += ["", "## Time", "", ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()), ""]
    return "\n".join(lines)
