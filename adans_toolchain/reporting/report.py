"""report.json (for tools) and report.md (for people), plus the convergence plot.

Formatting only: every number comes from the typed facts in
reporting/facts.py, which the pipeline computes; nothing here runs or
analyses a model.
"""

from __future__ import annotations

import json
import platform
from dataclasses import fields
from pathlib import Path

from typing import Mapping, Sequence

from adans_toolchain import __version__
from adans_toolchain.fileio import atomic_write_text
from adans_toolchain.reporting.int8 import int8_markdown
from adans_toolchain.reporting.facts import CompileOutcome, CompileSubject, ModelFacts, PredictedLatency, RoundFacts, SearchFacts
from adans_toolchain.search.types import IterationSummary


def environment_versions() -> dict:
    """Versions of adans and the libraries a compile used (the pipeline records them in CompileSubject)."""
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


def build_report(cfg, subject: CompileSubject, search: SearchFacts, outcome: CompileOutcome, *,
                 notes: list[str], timings: dict[str, float], rounds: Sequence[RoundFacts] | None = None) -> dict:
    """report.json's content from facts the pipeline computed; formats only (runs and analyses nothing).

    `cfg` is the compile's settings (pipeline.config.CompileConfig), echoed as given. `rounds`: with
    --rounds, every round so far (the report's search is the last one's); None leaves the key out.
    """
    unit = search.cost["unit"]

    def side(name: str, facts: ModelFacts) -> dict:
        return {"macs": facts.macs, "params": facts.params, "cost": {unit: facts.cost}, "storage": facts.storage.as_dict(),
                **outcome.accuracies.side(name)}

    base, comp, latency = outcome.baseline, outcome.compressed, outcome.latency
    speedup = {"theoretical": base.macs / comp.macs}
    if latency is not None:
        speedup["predicted"] = latency.baseline_ms / latency.compressed_ms
        speedup["predicted_source"] = latency.source
    if outcome.measured is not None:
        speedup["measured_host"] = dict(outcome.measured)
    layers = [dict(row) for row in outcome.layers]
    groups = [dict(g) for g in outcome.groups]
    bn = search.bn_recalibration
    report = {
        "format": "adans-report/1",
        "command": cfg.command,
        "seed": cfg.seed,
        "versions": dict(subject.versions),
        "model": {"path": cfg.model, "description": subject.description, "input_shape": list(subject.input_shape)},
        "target": dict(subject.target),
        "data": {
            "val": {"path": cfg.data, "images": subject.val_images, **_val_split(search)},
            **({"test": {"path": cfg.test_data, "images": subject.test_images}} if subject.test_images is not None else {}),
            "preprocessing": dict(subject.preprocessing),
        },
        "baseline": side("baseline", base),
        "compressed": side("compressed", comp),
        **({"rounds": [r.as_dict() for r in rounds]} if rounds else {}),
        "speedup": speedup,
        "table_iv": table_iv(speedup, layers, latency, subject.target),
        "validation": dict(outcome.validation),
        "search": {
            "methods": list(search.methods),
            "sampler": cfg.sampler,
            "cost": dict(search.cost),
            "samples": cfg.samples,
            "iterations": cfg.iterations,
            "priority": cfg.priority,
            "round_to": cfg.round_to,
            "bn_recalibration": {
                "images": bn.images,
                "source": bn.source,
                "note": "every compressed candidate is scored, and the model emitted, with BatchNorm statistics "
                "re-estimated on these images (one forward pass, no weight updates)",
                "from_val": bn.from_val,
                "applied_to_emitted": bn.applied_to_emitted,
            },
            "score": dict(search.score),
            "accuracy_threshold": search.accuracy_threshold,
            "baseline_top1_val_substituted": search.baseline_accuracy,
            "boundary": dict(search.boundary),
            "max_evaluations": cfg.max_evaluations,
            "one_rate_rule": _one_rate(search, outcome),
            "sites": list(search.sites),
            "evaluations": search.evaluations,
            "cache_hits": search.cache_hits,
            "evaluations_per_s": search.evaluations / max(search.eval_seconds, 1e-9),
            "images_evaluated": search.images,
            "images_per_s": None if search.images is None else search.images / max(search.eval_seconds, 1e-9),
            "early_rejected": search.early_rejected,
            "early_rejection": search.early_rejection,
            "executor": search.executor,
            "precision": search.precision,
            "resumed_from_iteration": search.resumed_from,
            "best": None if search.best is None else dict(search.best),
            "feasible_samples": search.feasible_samples,
            "history_samples": search.history_samples,
            "selection": None if search.selection is None else search.selection.as_dict(),
            "iterations_log": [
                {k: getattr(s, k) for k in ("iteration", "alpha", "n_good", "mean_good_f", "best_f", "e_avg", "e_range", "n_evaluations", "elapsed_s")}
                for s in search.iterations
            ],
        },
        "groups": groups,
        "frozen_groups": [{"id": g["id"], "channels": g["channels"], "reason": g["reason"]} for g in groups if not g["prunable"]],
        "layers": layers,
        **({"finetuning": outcome.finetuning.as_dict()} if outcome.finetuning else {}),
        **({"int8": outcome.int8.as_dict()} if outcome.int8 is not None else {}),
        "lowering": outcome.pass_log,
        "timings_s": timings,
        "notes": notes,
    }
    if latency is not None:
        for name, ms in (("baseline", latency.baseline_ms), ("compressed", latency.compressed_ms)):
            report[name]["latency_ms"] = ms
            report[name]["latency_source"] = latency.source
    return report


def _val_split(search: SearchFacts) -> dict:
    """How VAL was split for honest selection (--holdout); {} when the search ranked and chose on all of it."""
    sel = search.selection
    return {} if sel is None else {"search_images": sel.search_images, "holdout_images": sel.holdout_images}


def _one_rate(search: SearchFacts, outcome: CompileOutcome) -> dict | None:
    """The one-rate rule beside the searched result; VAL for both is the substituted plan on the images the search scores."""
    rule = search.one_rate
    if rule is None:
        return None
    test, best = outcome.accuracies.test, search.best
    searched_test = None if test is None else test.compressed if test.compressed_before_finetune is None else test.compressed_before_finetune
    return {
        **{f.name: getattr(rule, f.name) for f in fields(rule) if f.name != "at_searched_cost"},
        "at_searched_cost": None if rule.at_searched_cost is None else {
            f.name: getattr(rule.at_searched_cost, f.name) for f in fields(rule.at_searched_cost) if f.name != "at_searched_cost"},
        "lowered": False,
        "searched": {
            "macs_ratio": outcome.compressed.macs / outcome.baseline.macs,
            "cost_ratio": 1.0 if best is None else best["cost_ratio"],
            "top1_val": search.baseline_accuracy if best is None else best["accuracy"],
            "top1_test": searched_test,  # the emitted model (before any fine-tuning)
        },
    }


def table_iv(speedup: dict, layers: list[dict], latency: PredictedLatency | None, target: Mapping) -> dict:
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
        "predicted_for": {"target": target["id"], "batch_size": target["batch_size"], "threads": target["threads"]},
        "measured_host": measured,
        "measured_over_theoretical": {b: m / speedup["theoretical"] for b, m in measured.items()},
        "measured_over_predicted": {b: m / speedup["predicted"] for b, m in measured.items()} if speedup.get("predicted") else {},
        "predicted_reduces_to_theoretical": None if latency is None else latency.reduces_to_theoretical,
    }
    rows = []
    per_layer = latency.layers_ms if latency is not None else None
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
    kinds = {"ps": "ps", "pn": "pn", "int8": "int8"}
    methods = []
    for site in space.sites:
        name = kinds.get(site.kind) or site.method
        if name not in methods:
            methods.append(name)
    return methods


def write_report(out: Path, report: dict, iterations: Sequence[IterationSummary]) -> None:
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    plots = []
    if iterations:
        try:
            from adans_toolchain.reporting.plots import plot_convergence

            plot_convergence(iterations, out / "convergence.png")
            plots.append("convergence.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a compile
            report["notes"].append(f"convergence plot not written: {e}")
    atomic_write_text(out / "report.md", render_markdown(report, plots))


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _training_speed_markdown(ft: dict) -> list[str]:
    """Training throughput of each fine-tuned model, wall clock with data loading, over the epochs timed."""
    speeds = [(name, ft[name]) for name in ("compressed", "baseline") if (ft.get(name) or {}).get("images_per_s")]
    if not speeds:
        return []
    said = "; ".join(f"the {name} model {run['images_per_s']:.0f} images/s over {len(run['epoch_seconds'])} epochs "
                     f"({sum(run['epoch_seconds']) / 60:.1f} min)" for name, run in speeds)
    return [f"Training throughput (wall clock, data loading included): {said}.", ""]


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
        *([f"predicted = theoretical: {t['predicted_reduces_to_theoretical']}.", ""] if t.get("predicted_reduces_to_theoretical") else []),
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


def _members(group: dict, shown: int = 4) -> str:
    members = group.get("members")
    if members is None:
        return str(group["producers"])
    if not members:
        return "— (no producing layer)"
    if len(members) <= shown:
        return ", ".join(members)
    return f"{len(members)} layers: " + ", ".join(members[:shown - 1]) + ", …"


def _bn_recalibration_markdown(r: dict) -> list[str]:
    """Where the compressed model's BatchNorm statistics come from, and its accuracy without them."""
    bn, c = r["search"]["bn_recalibration"], r["compressed"]
    if not bn.get("applied_to_emitted"):
        return []
    images = "VAL images" if bn.get("from_val") else f"images from `{bn['source']}` (--calibration-data)"
    without = [f"{_pct(c[f'top1_{split}_without_bn_recalibration'])} on {split.upper()}"
               for split in ("val", "test") if f"top1_{split}_without_bn_recalibration" in c]
    subject = "The searched model (before fine-tuning) carried" if "finetuning" in r else "The compressed accuracy is with"
    return [
        f"{subject} BatchNorm statistics re-estimated on {bn['images']} {images} (one forward pass, no weight updates)"
        + (f"; with the trained statistics the same plan scores {' and '.join(without)}." if without else "."),
        "",
    ]


def _rescored_which(sel: dict) -> str:
    n, top = len(sel["candidates"]), sel["rescore_top"]
    if n <= top:
        return f"the {n} best feasible plans of the search"
    return (f"{n} feasible plans of the search (the {top} best, then, as none held there, the best of those "
            "with more margin over the SEARCH-VAL threshold)")


def _selection_markdown(r: dict) -> list[str]:
    """The search's best plans re-scored on held-back VAL images, and which one was emitted (issue 13)."""
    sel = r["search"].get("selection")
    if not sel:
        return []
    e = sel["emitted"]
    lines = [
        "## Selection on held-back VAL",
        "",
        f"VAL was split (seeded, stratified by label) into {sel['search_images']} images the search ranked candidates "
        f"on (SEARCH-VAL) and {sel['holdout_images']} held back ({sel['fraction']:.0%}); the "
        f"{_rescored_which(sel)} were scored again on the held-back images "
        f"(baseline {_pct(sel['baseline_holdout_accuracy'])} there, threshold {_pct(sel['holdout_threshold'])}) "
        "and the plan was chosen there"
        + (", with BatchNorm statistics re-estimated on SEARCH-VAL images only" if sel["calibration_from_search_part"] else "")
        + ".",
        "",
    ]
    if sel["candidates"]:
        lines += ["| search rank | iteration | top-1 SEARCH-VAL | top-1 held-back | cost ratio | score SEARCH-VAL | "
                  "score held-back | feasible held-back | emitted |", "|---|---|---|---|---|---|---|---|---|"]
        for c in sel["candidates"]:
            lines.append(
                f"| {c['search_rank']} | {c['iteration']} | {_pct(c['search_accuracy'])} | {_pct(c['holdout_accuracy'])} | "
                f"{c['cost_ratio']:.1%} | {c['search_score']:.4f} | {c['holdout_score']:.4f} | "
                f"{'yes' if c['feasible_on_holdout'] else 'no'} | {'**yes**' if c['chosen'] else ''} |"
            )
        lines.append("")
    won = "the uncompressed baseline" if e["plan"] == "baseline" else f"the search's {e['plan'].replace('search ', '')} plan"
    same = "it differs from" if sel["differs_from_search_best"] else "it is"
    lines += [
        f"Emitted: {won} ({_pct(e['search_accuracy'])} on SEARCH-VAL, {_pct(e['holdout_accuracy'])} held back); "
        f"{same} what the search alone would have emitted"
        + (" (the fallback: none met the threshold on the held-back images)" if sel["outcome"] == "fallback" else "")
        + f". The VAL accuracy under Result is the emitted ONNX model on all {r['data']['val']['images']} VAL images.",
        "",
    ]
    return lines


def _one_rate_markdown(r: dict) -> list[str]:
    """The one-rate rule beside the searched result (issue 13: the search must beat it)."""
    rule = r["search"].get("one_rate_rule")
    if not rule:
        return []
    val = "SEARCH-VAL" if r["search"].get("selection") else "VAL"
    found = f"r = {rule['rate']:.4g}, the largest" if rule["rate"] else "no rate is feasible: the rule is the baseline, as the largest"
    test_label = " (substituted, BatchNorm re-estimated)" if rule["bn_recalibrated"] else " (substituted)"
    searched = rule["searched"]
    lines = [
        "## One-rate rule vs search",
        "",
        f"The one-rate rule removes the same fraction r of every searched coordinate ({rule.get('variant', 'all coordinates')}; "
        "the cheaper of: every coordinate, and every coordinate but channel groups shared by several layers), "
        "lowest channel priority first "
        f"(the search's own order): {found} rate that meets the threshold, found by bisection "
        f"({rule['evaluations']} evaluations"
        + ("; --max-evaluations ran out during it" if not rule["complete"] else "")
        + "). The search started from it; its plan is scored by substitution and not lowered"
        + (" (a plan with int8 layers: lowered, quantized and simulated, as the search scores it)."
           if "int8" in r["search"].get("methods", ()) else "."),
        "",
        f"| | MACs | cost ratio ({r['search']['cost']['name']}) | top-1 {val} (as the search scores it) | top-1 TEST |",
        "|---|---|---|---|---|",
        f"| one-rate rule | {rule['macs_ratio']:.1%} | {rule['cost_ratio']:.1%} | {_pct(rule['top1_val'])} | "
        f"{_pct(rule['top1_test'])}{test_label if rule['top1_test'] is not None else ''} |",
        *_rule_at_cost_row(rule.get("at_searched_cost"), test_label),
        f"| searched (emitted) | {searched['macs_ratio']:.1%} | {searched['cost_ratio']:.1%} | {_pct(searched['top1_val'])} | "
        f"{_pct(searched['top1_test'])}{' (emitted model)' if searched['top1_test'] is not None else ''} |",
        "",
    ]
    if rule.get("at_searched_cost"):
        lines += ["The rule at the searched plan's cost: the rate whose plan's cost is nearest the searched one's (one "
                  "rate moves every group a unit at a time, so costs come in steps), found on cost alone and scored "
                  "after the search; it need not meet the threshold: it is the comparison at (about) equal cost.", ""]
    return lines + _cap_markdown(r["search"])


def _rule_at_cost_row(at_cost: dict | None, test_label: str) -> list[str]:
    if not at_cost:
        return []
    return [f"| one-rate rule at the searched cost (r = {at_cost['rate']:.4g}) | {at_cost['macs_ratio']:.1%} | "
            f"{at_cost['cost_ratio']:.1%} | {_pct(at_cost['top1_val'])} | {_pct(at_cost['top1_test'])}"
            f"{test_label if at_cost['top1_test'] is not None else ''} |"]


def _cap_markdown(s: dict) -> list[str]:
    """What --max-evaluations cut short, if anything."""
    if s.get("max_evaluations") is None:
        return []
    cut = [name for name, done in (("the one-rate rule's bisection", (s.get("one_rate_rule") or {}).get("complete", True)),
                                   ("the boundary characterisation", s["boundary"].get("complete", True)),
                                   ("the search", s["history_samples"] >= s["samples"] * s["iterations"])) if not done]
    return [f"Evaluations were capped at {s['max_evaluations']} (--max-evaluations)"
            + (f"; it stopped {', '.join(cut)} early." if cut else "; the cap was not reached."), ""]


def _rounds_markdown(r: dict) -> list[str]:
    """Iterative compression (--rounds): what each round emitted, before and after its fine-tuning."""
    rounds = r.get("rounds")
    if not rounds:
        return []
    test = any(x.get("top1_test_finetuned") is not None for x in rounds)
    lines = [
        "## Rounds",
        "",
        f"{len(rounds)} rounds of search then fine-tuning, each starting from the previous round's fine-tuned model "
        f"and held to the same threshold from the original model, {r['search']['accuracy_threshold']:.2f} % top-1 on "
        "the images the search scores. MACs are of the original model's; top-1 is the emitted ONNX model after the "
        "round's search and after its fine-tuning. This report's search, selection and one-rate rule are the last round's.",
        "",
        "| round | start top-1 (search images) | MACs | top-1 VAL after search | top-1 VAL fine-tuned | "
        + ("top-1 TEST after search | top-1 TEST fine-tuned | " if test else "")
        + "fine-tune epochs | evaluations | minutes |",
        "|---|---|---|---|---|" + ("---|---|" if test else "") + "---|---|---|",
    ]
    for x in rounds:
        start = _pct(x["start_top1_search_val"]) + ("" if x["searched"] else " (below the threshold: not searched)")
        lines.append(
            f"| {x['round']} | {start} | {x['macs_ratio']:.1%} | {_pct(x['top1_val_searched'])} | {_pct(x['top1_val_finetuned'])} | "
            + (f"{_pct(x['top1_test_searched'])} | {_pct(x['top1_test_finetuned'])} | " if test else "")
            + f"{x['finetune_epochs']} | {x['evaluations']} | {x['minutes']:.1f} |"
        )
    return lines + [""]


def _lowering_markdown(r: dict) -> list[str]:
    """Each lowering pass and the conditions checked around it (one that fails stops the compile, so all held)."""
    log = r.get("lowering") or []
    if not log:
        return []
    lines = ["## Lowering", "", "| pass | modified | conditions checked (all held) |", "|---|---|---|"]
    for entry in log:
        checked = "; ".join(f"{c['when']}: {c['condition']}" for c in entry.get("checked", [])) or "—"
        lines.append(f"| {entry['pass']} | {'yes' if entry['modified'] else 'no'} | {checked} |")
    return lines + [""]


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
        *_bn_recalibration_markdown(r),
        f"Theoretical speedup (MACs): **{r['speedup']['theoretical']:.2f}×**",
        "",
        *_rounds_markdown(r),
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
        lines += ["", *_training_speed_markdown(ft)]
    lines += int8_markdown(r)
    v = r["validation"]
    lines += [
        "## Validation",
        "",
        f"Emitted ONNX vs {v['reference']} on {v['images']} real images: "
        f"max |diff| {v['max_abs_diff']:.3g} ({v['relative_diff']:.2e} of the output scale; tolerance {v['tolerance']:.0e}), "
        f"top-1 agreement {v['top1_agreement']:.1%}.",
        "",
        *_lowering_markdown(r),
        *_one_rate_markdown(r),
        *_selection_markdown(r),
        "## Search",
        "",
        f"Sampler `{s['sampler']}`, cost `{s['cost']['name']}`"
        + (f" ({s['cost']['latency_source']})" if s["cost"].get("latency_source") else "")
        + f", b = {s['samples']}, T = {s['iterations']}, "
        f"priority `{s['priority']}`; threshold {s['accuracy_threshold']:.2f} % on {'SEARCH-VAL' if s.get('selection') else 'VAL'}; "
        f"{s['evaluations']} evaluations ({s['cache_hits']} repeated plans served from cache), "
        f"{s['evaluations_per_s']:.2f} evaluations/s; {s['feasible_samples']} of {s['history_samples']} samples feasible."
        + (f" Early rejection ({s['early_rejection']}): {s['early_rejected']} evaluations stopped before the end of VAL, "
           f"{s['images_evaluated']:,} images run in all." if s.get("early_rejection") else ""),
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
        "| layer | op | edit | precision | in ch | out ch | MACs before | MACs after | params before | params after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["layers"]:
        lines.append(
            f"| {row['layer']} | {row['op']} | {row['edit']} | {row.get('precision', 'float')} | "
            f"{row['in_channels'][0]} → {row['in_channels'][1]} | "
            f"{row['out_channels'][0]} → {row['out_channels'][1]} | {row['macs'][0]:,} | {row['macs'][1]:,} | "
            f"{row['params'][0]:,} | {row['params'][1]:,} |"
        )
    lines += [
        "", "## Channel groups", "",
        "A group is the set of channels that must be pruned together; it is named after its first member layer, "
        "but couples the output channels of all its member layers (residual additions, shortcuts), so its size "
        "need not equal that layer's output channels.",
        "",
        "| group | size (channels) | kept | member layers | status |", "|---|---|---|---|---|",
    ]
    for g in r["groups"]:
        status = "searched" if g["prunable"] else f"frozen: {g['reason']}"
        lines.append(f"| {g['id']} | {g['channels']} | {g['kept']} | {_members(g)} | {status} |")
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    t = r["timings_s"]
    lines += ["", "## Time", "", ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()), ""]
    return "\n".join(lines)
