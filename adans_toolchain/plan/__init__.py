"""What a compression is: the Plan (edits to named parameters), the search space that encodes it, the sites it acts on, and the workload it leaves."""

from adans_toolchain.plan.plan import FORMAT, GroupPruning, LayerDecomposition, LayerPrecision, LayerSparsity, Plan

__all__ = ["FORMAT", "GroupPruning", "LayerDecomposition", "LayerPrecision", "LayerSparsity", "Plan"]
