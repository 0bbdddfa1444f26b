"""Everything a Plan does to parameter values, in the order the paper applies it.

1. decomposition: the layer's weight becomes its low-rank reconstruction;
2. unstructured pruning: its smallest-magnitude weights become zero;
3. structured pruning: the weights that read a pruned channel become zero
   (after 1, so "decompose first, then prune" is what is evaluated).

The architecture never changes; only values are substituted.
"""

from __future__ import annotations

import numpy as np

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.layers import WeightedLayer, weighted_layers
from adans_toolchain.plan import Plan
from adans_toolchain.transforms.channel_pruning import ChannelPruningTransform, ZeroSlice
from adans_toolchain.transforms.decomposition import Factorizations
from adans_toolchain.transforms.sparsity import MagnitudeOrder


class PlanTransform:
    def __init__(self, analysis: ChannelAnalysis, weights: dict[str, np.ndarray]) -> None:
        """`weights`: the original values of the weighted layers' weights, by name."""
        self.analysis = analysis
        self.layers: dict[str, WeightedLayer] = {layer.weight: layer for layer in weighted_layers(analysis.graph)}
        self.weights = {name: np.asarray(weights[name]) for name in self.layers}
        self.channels = ChannelPruningTransform(analysis)
        self.factorizations = Factorizations(self.layers, self.weights)
        self._magnitude: MagnitudeOrder | None = None

    def _magnitude_order(self) -> MagnitudeOrder:
        if self._magnitude is None:
            self._magnitude = MagnitudeOrder(self.weights)
        return self._magnitude

    def new_values(self, plan: Plan) -> dict[str, np.ndarray]:
        """Whole-tensor replacements (steps 1 and 2), by parameter name."""
        values: dict[str, np.ndarray] = {}
        for d in plan.active_decompositions:
            values[d.layer] = self.factorizations.reconstruct(d.layer, d.ranks)
        for s in plan.active_sparsity:
            base = values.get(s.layer, self.weights[s.layer])
            values[s.layer] = self._magnitude_order().apply(s.layer, base, s.removed)
        return values

    def sparse_weights(self, plan: Plan) -> dict[str, np.ndarray]:
        """The weights the emitted model stores with zeros (step 2 only; factorised layers excluded)."""
        decomposed = {d.layer for d in plan.active_decompositions}
        return {s.layer: self._magnitude_order().apply(s.layer, self.weights[s.layer], s.removed)
                for s in plan.active_sparsity if s.layer not in decomposed}

    def zero_slices(self, plan: Plan) -> list[ZeroSlice]:
        """Step 3."""
        return self.channels.zero_slices(plan)
