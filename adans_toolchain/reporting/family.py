"""The --budgets family (issue 17): OUT/budgets/family.md and pareto.png, rendered from family.json's content.

Formatting only: the pipeline (pipeline/family.py) computes every number.
"""

from __future__ import annotations

import os
from pathlib import Path

from adans_toolchain.reporting.plots import _pyplot
from adans_toolchain.search.budgets import pareto_front


def _pct(x) -> str:
    return "—" if x is None else f"{x:.2f} %"


def _first_batch(measured: dict | None) -> tuple[str, dict] | None:
    """The first measured batch size of a member (ONNX Runtime on this host), or None: not measured."""
    if not measured:
        return None
    for key, value in measured.items():
        if key.startswith("batch_"):
            return key.removeprefix("batch_"), value
    return None


def _source(source: dict) -> str:
    kind = source["kind"]
    if kind == "baseline":
        return "the uncompressed model"
    if kind == "clamped":
        f = source["from"]
        where = "a clamp" if f["phase"] is None else f"phase {f['phase']:.2f}"
        return (f"clamped to the {source['clamped_to_member_of']:.2f} member from {where} "
                f"({f['accuracy']:.2f} %, {f['cost_ratio']:.1%})")
    return f"phase {source['phase']:.2f}, iteration {source['iteration']}"


def _finetune_section(family: dict) -> list[str]:
    """How the family was fine-tuned and each member's top-1 before and after; nothing when it was not."""
    tune = family.get("finetune")
    if not tune:
        return []
    if tune["mode"] == "joint":
        how = (f"Jointly, as one set of weights (`{tune['shared_weights']}`, the largest member's): {tune['rule']}; "
               f"{tune['epochs']} epochs"
               + (f" (resumed after epoch {tune['resumed_from_epoch']})" if tune["resumed_from_epoch"] else "")
               + (f", distilled {tune['distillation']}" if tune["distillation"] else "")
               + f"; {tune['batchnorm']}. Every member's `model_unfolded.onnx` is a slice of the shared weights but "
               "for its BatchNorm statistics.")
    else:
        how = f"Each member on its own ({tune['epochs']} epochs): the members' weights are no longer slices of one file."
    lines = ["## Fine-tuning", "", how, "",
             "| budget | VAL before | VAL after | TEST before | TEST after |", "|---|---|---|---|---|"]
    for m in family["members"]:
        t = m["top1"]
        lines.append(f"| {m['budget']:.2f} | {_pct(t['val_before_finetune'])} | {_pct(t['val'])} | "
                     f"{_pct(t['test_before_finetune'])} | {_pct(t['test'])} |")
    return lines + [""]


def render_family_markdown(family: dict, plots: list[str]) -> str:
    members, base, cost = family["members"], family["baseline"], family["cost"]
    ev = family["evaluations"]
    holdout = family.get("holdout")
    lines = [
        "# adans model family (--budgets)",
        "",
        f"Model: {family['model']['description']} — input {family['model']['input_shape']}  ",
        f"Command: `{family['command']}`",
        "",
        f"One search for {len(members)} budgets of the baseline's `{cost['name']}` ({', '.join(f'{b:.2f}' for b in family['budgets'])}): "
        f"{ev['paid']} evaluations paid in all sessions ({ev['one_rate_rule']} one-rate rule, {ev['boundary']} boundary, "
        f"{ev['nesting_clamps']} clamped plans re-evaluated for nesting; a single compile with these settings spends "
        f"at most {ev['single_compile_at_most']}), {ev['cache_hits']} answers served from the cache in this session. "
        "Each member is the most accurate evaluated plan within its budget that keeps a subset of the next larger "
        "member's channels"
        + (f", chosen among the most accurate on {holdout['images']} held-back VAL images" if holdout else "")
        + f"; the accuracy threshold {family['accuracy_threshold']:.2f} % bounds the search's box, not the members.",
        "",
        "## Members",
        "",
        "| budget | folder | cost | MACs | parameters | top-1 SEARCH-VAL | held-back | VAL | TEST | measured | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| 1.00 (baseline) | | 100.0% | 100.0% | 100.0% | {_pct(base['top1_search_val'])} | | {_pct(base['top1_val'])} | "
        f"{_pct(base.get('top1_test'))} | | |",
    ]
    for m in members:
        t = m["top1"]
        batch = _first_batch(m.get("measured"))
        measured = "—" if batch is None else (f"{batch[1]['compressed_ms']:.3f} ms @ batch {batch[0]} "
                                               f"({batch[1]['speedup']:.2f}×)")
        tune = " (fine-tuned; before: " + _pct(t["val_before_finetune"]) + ")" if m["finetuned"] else ""
        tune_test = " (before: " + _pct(t["test_before_finetune"]) + ")" if m["finetuned"] and t["test"] is not None else ""
        lines.append(
            f"| {m['budget']:.2f} | [{m['folder']}]({m['folder']}/report.md) | {m['cost_ratio']:.1%} | {m['macs_ratio']:.1%} | "
            f"{m['params_ratio']:.1%} | {_pct(t['search_val'])} | {_pct(t['holdout'])} | {_pct(t['val'])}{tune} | "
            f"{_pct(t['test'])}{tune_test} | {measured} | {_source(m['source'])} |"
        )
    lines.append("")
    lines += _finetune_section(family)
    notes = [f"{m['budget']:.2f}: {m['replaced']}" for m in members if m.get("replaced")]
    notes += [f"{m['budget']:.2f}: below the accuracy threshold on SEARCH-VAL" for m in members
              if not m["meets_accuracy_threshold"]]
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    lines += [
        "## Channels kept per group",
        "",
        "Each column keeps a subset of the channels of the column to its left (indices in `family.json`).",
        "",
        "| group | size | " + " | ".join(f"{m['budget']:.2f}" for m in members) + " |",
        "|---|---|" + "---|" * len(members),
    ]
    for i, g in enumerate(members[0]["groups"]):
        lines.append(f"| {g['group']} | {g['size']} | " + " | ".join(str(m["groups"][i]["kept"]) for m in members) + " |")
    lines += [
        "",
        "## Search phases",
        "",
        "--iterations split among the budgets, largest first; each phase scores accuracy with its budget as a cap on "
        "cost, and its first batch carries every plan evaluated before it.",
        "",
        "| phase budget | iterations | evaluations paid | samples in its history |",
        "|---|---|---|---|",
    ]
    for p in family["phases"]:
        lines.append(f"| {p['budget']:.2f} | {p['iterations']} | {p['evaluations']} | {p['samples']} |")
    lines += ["", f"Weights: {family['weights']}.", ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    for n in family.get("notes", []):
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def plot_pareto(family: dict, path: str | os.PathLike[str]) -> Path:
    """Top-1 against cost for every evaluated plan, the Pareto front and the members (and budgets); with a cost
    other than MACs, against MACs too; and the members' measured latency, when they were measured."""
    plt = _pyplot()
    cost = family["cost"]["name"]
    evaluated, members, base = family["evaluated"], family["members"], family["baseline"]
    named = {"macs": "MACs", "latency": "latency (the search's cost model)", "memory": "memory (weights + peak activations)"}
    axes_spec = [("cost_ratio", f"{named.get(cost, cost)} (fraction of the baseline's)")]
    if cost != "macs":
        axes_spec.append(("macs_ratio", "MACs (fraction of the baseline's)"))
    fig, axes = plt.subplots(1, len(axes_spec) + 1, figsize=(6.5 * (len(axes_spec) + 1), 5))
    try:
        for ax, (key, label) in zip(axes, axes_spec):
            xs = [e[key] for e in evaluated]
            ys = [e["accuracy"] for e in evaluated]
            ax.scatter(xs, ys, s=10, color="0.6", label="evaluated plans", zorder=1)
            front = [(xs[i], ys[i]) for i in pareto_front(xs, ys)]  # on this panel's own cost
            if front:
                ax.step(*zip(*front), where="post", color="tab:blue", label="Pareto front", zorder=2)
            member_xs = [m["plan_cost_ratio"] if key == "cost_ratio" else m["macs_ratio"] for m in members]
            member_ys = [m["top1"]["search_val"] for m in members]
            ax.scatter(member_xs, member_ys, s=140, marker="*", color="tab:red", edgecolors="black", zorder=4,
                       label="members" + (" (chosen on held-back VAL)" if family.get("holdout") else ""))
            for m, x, y in zip(members, member_xs, member_ys):
                ax.annotate(f"{m['budget']:.2f}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
            if key == "cost_ratio":
                for b in family["budgets"]:
                    ax.axvline(b, color="tab:red", linestyle=":", linewidth=1, zorder=0)
            ax.axhline(family["accuracy_threshold"], color="tab:orange", linestyle="--", linewidth=1,
                       label="accuracy threshold", zorder=0)
            ax.set_xlabel(label)
            ax.set_ylabel("top-1, images the search scores (%)")
            ax.legend(loc="lower right", fontsize=8)
        ax = axes[-1]
        points = [(m, _first_batch(m.get("measured"))) for m in members]
        points = [(m, b) for m, b in points if b is not None]
        if points:
            batch = points[0][1][0]
            ax.scatter([points[0][1][1]["baseline_ms"]], [base["top1_val"]], s=80, marker="o", color="black",
                       label="baseline", zorder=3)
            ax.plot([b[1]["compressed_ms"] for _, b in points], [m["top1"]["val"] for m, _ in points], color="tab:red",
                    marker="*", markersize=14, markeredgecolor="black", label="members", zorder=4)
            for m, b in points:
                ax.annotate(f"{m['budget']:.2f}", (b[1]["compressed_ms"], m["top1"]["val"]), textcoords="offset points",
                            xytext=(6, 6), fontsize=9)
            ax.set_xlabel(f"measured latency, ONNX Runtime on this host, batch {batch} (ms)")
            ax.set_ylabel("top-1 VAL of the emitted model (%)")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "members not measured (--no-measure)", transform=ax.transAxes, ha="center", va="center",
                    color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("accuracy against cost: every evaluated plan, the Pareto front and the family's members")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
