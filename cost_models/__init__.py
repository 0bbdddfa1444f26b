"""Pluggable hardware cost models behind one protocol (see `base.CostModel`)."""

from .base import CostModel, UnsupportedOperatorError, cost_model_names, make_cost_model, register
from .macs import MacsCostModel, op_macs, workload_macs, workload_params
from .workload import OpWorkload, Workload

__all__ = [
    "CostModel", "MacsCostModel", "OpWorkload", "UnsupportedOperatorError", "Workload",
    "cost_model_names", "make_cost_model", "op_macs", "register", "workload_macs", "workload_params",
]
