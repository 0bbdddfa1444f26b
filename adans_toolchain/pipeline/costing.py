"""The compile's cost models: the one the search minimises, and the latency model behind the report's Table IV.

The search minimises `--cost` (macs, memory or latency). Whatever it
minimises, the report also predicts the latency of the baseline and of the
emitted model on the target, so theoretical (MACs), predicted (cost model)
and measured (ONNX Runtime) speedups sit side by side, as in the paper's
Table IV. Errors of the cost-model layer (a missing or mismatched lookup
table, a target with no numbers to estimate from) become one-line user
errors here, because `cost_models/` must not import the toolchain's errors.

A latency search whose methods include int8 prices int8 layers from the
table's int8 entries; `check_latency_precisions` refuses a table without
them when the configuration is checked (CompileConfig), not hours into the
search.
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
from cost_models.lut import LookupTable, missing_precision_message
from cost_models.workload import precision_name
from targets import Target, UnknownTargetError, load_target

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


# Search methods that choose a precision per layer, and the precision each prices layers at.
PRECISION_METHODS = {"int8": precision_name(8)}


def check_latency_precisions(cost: str, methods: Sequence[str], target_id: str, lut: str | None) -> None:
    """ConfigError when a latency search's methods choose a precision (int8) its lookup table has no entries for.

    Without a table at all (the roofline estimate) every precision is priced,
    so nothing is refused; a missing or unknown table or target is reported
    where the cost model is made (search_cost_model).
    """
    precisions = {PRECISION_METHODS[m] for m in methods if m in PRECISION_METHODS}
    if cost != "latency" or not precisions:
        return
    try:
        target = load_target(target_id)
    except UnknownTargetError:
        return
    path = Path(lut).expanduser() if lut is not None else target.lut_location()
    if not path.is_file():
        return
    try:
        measured = LookupTable.load(path).precisions()
    except LookupTableError:
        return  # an unreadable table is reported where the cost model is made, with the same message as always
    missing = sorted(precisions - measured)
    if missing:
        raise ConfigError(f"--cost latency --methods {','.join(methods)}: "
                          f"{missing_precision_message(str(path), missing[0], target.id)}")


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
