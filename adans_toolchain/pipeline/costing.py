"""The compile's cost models: the one the search minimises, and the latency model behind the report's Table IV.

The search minimises `--cost` (macs, memory or latency). Whatever it
minimises, the report also predicts the latency of the baseline and of the
emitted model on the target, so theoretical (MACs), predicted (cost model)
and measured (ONNX Runtime) speedups sit side by side, as in the paper's
Table IV. Errors of the cost-model layer (a missing or mismatched lookup
table, a target with no numbers to estimate from) become one-line user
errors here, because `cost_models/` must not import the toolchain's errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cost_models import (
    CostModel,
    LatencyCostModel,
    LookupTableError,
    RooflineUnavailableError,
    UnsupportedOperatorError,
    make_cost_model,
)
from targets import Target

from adans_toolchain.analysis.factors import origin_layer
from adans_toolchain.plan.workload import plan_workload
from adans_toolchain.errors import ConfigError


def search_cost_model(cost: str, target: Target, lut: str | None) -> CostModel:
    if lut is not None and not _is_file(lut):
        raise ConfigError(f"--lut {lut} does not exist; build it with adans-profile --target {target.id} ... -o {lut}")
    try:
        if cost == "latency":
            return make_cost_model("latency", target, lut_path=lut)
        return make_cost_model(cost, target)
    except (LookupTableError, RooflineUnavailableError) as e:
        raise ConfigError(f"--cost {cost}: {e}") from e


def report_latency_model(search_model: CostModel, target: Target, lut: str | None) -> tuple[LatencyCostModel | None, str | None]:
    """The latency model for the report (the search's own when it searched latency), or None and why not."""
    if isinstance(search_model, LatencyCostModel):
        return search_model, None
    try:
        return LatencyCostModel(target, lut_path=lut), None
    except (LookupTableError, RooflineUnavailableError) as e:
        return None, f"no predicted latency in this report: {e}"


def predicted_latency(model: LatencyCostModel, analysis, plans: Sequence, batch: int) -> tuple[list[float], list[dict[str, float]] | None, str | None]:
    """Total predicted ms per plan, and per weighted layer (kernels attributed to the layer they came from).

    Per-layer figures come from the analysed (unfused) graph with the plan
    applied; the latency model fuses kernels the way the runtime does, so the
    totals equal those of the simplified emitted graph.
    """
    totals, layers = [], []
    try:
        for plan in plans:
            prediction = model.predict(plan_workload(analysis, plan, batch=batch))
            per_layer: dict[str, float] = {}
            for k in prediction.kernels:
                layer = origin_layer(k.name)
                per_layer[layer] = per_layer.get(layer, 0.0) + k.ms
            totals.append(prediction.total_ms)
            layers.append(per_layer)
    except (UnsupportedOperatorError, LookupTableError) as e:
        return [], None, f"no predicted latency in this report: {e}"
    return totals, layers, None


def _is_file(path: str) -> bool:
    return Path(path).expanduser().is_file()
