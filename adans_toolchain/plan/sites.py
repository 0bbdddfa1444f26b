"""Which searchable sites a set of methods yields for an analysed model."""

from __future__ import annotations

from typing import Sequence

from adans_toolchain.analysis.channels import ChannelAnalysis
from adans_toolchain.analysis.layers import weighted_layers
from adans_toolchain.errors import ConfigError
from adans_toolchain.plan.space import DecompositionSite, PrecisionSite, Site, SparsitySite
from adans_toolchain.analysis.factors import decomposable, max_ranks

# int8: each weighted layer's precision (float or int8 weights and activations, quantization.INT8_SCHEME).
METHODS = ("ps", "pn", "svd", "tucker", "int8")
ALIASES = {"d": ("svd", "tucker")}


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """'d,ps' -> ('svd', 'tucker', 'ps'), in a canonical order; unknown names are a ConfigError."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    expanded: list[str] = []
    for m in items:
        for name in ALIASES.get(m, (m,)):
            if name not in METHODS:
                raise ConfigError(f"unknown method '{m}'; choose from {', '.join(METHODS)} (d = svd,tucker), comma separated")
            if name not in expanded:
                expanded.append(name)
    if not expanded:
        raise ConfigError(f"no method given; choose from {', '.join(METHODS)}")
    if "pn" in expanded and ({"svd", "tucker"} & set(expanded)):
        raise ConfigError("unstructured pruning (pn) cannot be combined with svd/tucker on the same model yet; pick one")
    return tuple(m for m in METHODS if m in expanded)


def layer_sites(analysis: ChannelAnalysis, methods: Sequence[str]) -> list[Site]:
    """Decomposition, unstructured-pruning and precision sites (channel groups are built from priorities).

    With int8, every weighted layer (Conv, Gemm, MatMul with a stored weight)
    gets a precision coordinate; a decomposed layer's factors share it.
    """
    sites: list[Site] = []
    for layer in weighted_layers(analysis.graph):
        kind = decomposable(layer)
        if kind is not None and kind in methods:
            limits = max_ranks(layer)
            if any(m >= 1 for m in limits):
                sites.append(DecompositionSite(layer, kind, limits))
        if "pn" in methods and layer.size > 1:
            sites.append(SparsitySite(layer))
        if "int8" in methods:
            sites.append(PrecisionSite(layer))
    return sites
