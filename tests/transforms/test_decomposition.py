"""SVD and Tucker-2: error monotone in rank, exact at full rank, box never adds MACs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adans_toolchain.analysis.layers import WeightedLayer
from adans_toolchain.plan.workload import plan_workload
from adans_toolchain.plan import Plan
from adans_toolchain.plan.sites import layer_sites, parse_methods
from adans_toolchain.plan.space import CompressionSpace, DecompositionSite
from adans_toolchain.analysis.factors import max_ranks, svd_macs, tucker_macs
from adans_toolchain.transforms.decomposition import Factorizations
from cost_models import op_macs
from tests.helpers import build, export_and_analyse


def _layer(op="Conv", c_in=16, c_out=24, kernel=(3, 3), spatial=64, trans_b=True):
    shape = (c_out, c_in, *kernel) if op == "Conv" else ((c_out, c_in) if trans_b else (c_in, c_out))
    return WeightedLayer("n", op, "w", None, "x", "y", c_in, c_out, kernel, 1, spatial, spatial, shape, trans_b)


def _factorizations(layer, seed=0):
    w = np.random.default_rng(seed).standard_normal(layer.weight_shape).astype(np.float32)
    return Factorizations({"w": layer}, {"w": w}), w


def _error(f, w, ranks):
    return float(np.linalg.norm(f.reconstruct("w", ranks) - w))


def test_tucker_error_monotone_in_both_ranks_and_zero_at_full_rank():
    layer = _layer()
    f, w = _factorizations(layer)
    errors = {(r1, r2): _error(f, w, (r1, r2)) for r1 in range(1, 17) for r2 in range(1, 25)}
    for (r1, r2), e in errors.items():
        if r1 < 16:
            assert errors[(r1 + 1, r2)] <= e + 1e-4
        if r2 < 24:
            assert errors[(r1, r2 + 1)] <= e + 1e-4
    assert errors[(16, 24)] < 1e-4 * np.linalg.norm(w)
    assert errors[(1, 1)] > 0.5 * np.linalg.norm(w)


@pytest.mark.parametrize("op,kernel,trans_b", [("Conv", (1, 1), True), ("Gemm", (), True), ("Gemm", (), False), ("MatMul", (), False)])
def test_svd_error_monotone_and_zero_at_full_rank(op, kernel, trans_b):
    layer = _layer(op, 20, 12, kernel, 1, trans_b)
    f, w = _factorizations(layer)
    errors = [_error(f, w, (r,)) for r in range(1, 13)]
    assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-4 * np.linalg.norm(w)


def test_tucker_factors_reproduce_the_reconstruction():
    layer = _layer()
    f, w = _factorizations(layer)
    for ranks in [(5, 7), (16, 7), (5, 24)]:
        first, core, last = f.factor_weights("w", ranks, None, None)
        weight = core  # (out or r2) x (in or r1) x k x k
        if last is not None:  # f x r2
            weight = np.einsum("fr,rikl->fikl", last, weight)
        if first is not None:  # r1 x c
            weight = np.einsum("frkl,rc->fckl", weight, first)
        assert np.allclose(weight, f.reconstruct("w", ranks), atol=1e-4)


def test_factors_restricted_to_kept_channels_equal_the_sliced_reconstruction():
    layer = _layer()
    f, _ = _factorizations(layer)
    kept_in, kept_out = np.array([0, 3, 4, 9, 15]), np.array([1, 2, 8, 20])
    first, core, last = f.factor_weights("w", (6, 9), kept_in, kept_out)
    weight = np.einsum("frkl,rc->fckl", np.einsum("fr,rikl->fikl", last, core), first)
    assert np.allclose(weight, f.reconstruct("w", (6, 9))[kept_out][:, kept_in], atol=1e-4)


@pytest.mark.parametrize("c_in,c_out,kernel,spatial_in,spatial_out", [(16, 16, (3, 3), 64, 64), (16, 32, (3, 3), 256, 64), (3, 64, (7, 7), 1024, 256), (64, 64, (1, 1), 16, 16)])
def test_box_never_adds_macs(c_in, c_out, kernel, spatial_in, spatial_out):
    layer = WeightedLayer("n", "Conv", "w", None, "x", "y", c_in, c_out, kernel, 1, spatial_in, spatial_out, (c_out, c_in, *kernel))
    limits = max_ranks(layer)
    original = layer.macs_per_image
    if kernel == (1, 1):
        assert all(svd_macs(layer, r) < original for r in range(1, limits[0] + 1))
        assert limits[0] + 1 >= min(c_in, c_out) or svd_macs(layer, limits[0] + 1) >= original
        return
    m1, m2 = limits
    ranks1 = [c_in, *range(1, m1 + 1)]
    ranks2 = [c_out, *range(1, m2 + 1)]
    for r1, r2 in itertools.product(ranks1, ranks2):
        if (r1, r2) != (c_in, c_out):
            assert tucker_macs(layer, r1, r2) < original, (r1, r2)


def test_decoded_ranks_never_increase_macs_on_a_real_model():
    module = build("cifar_resnet20")
    exported = export_and_analyse(module, (3, 32, 32))
    sites = layer_sites(exported.analysis, parse_methods("d"))
    assert {s.method for s in sites} == {"svd", "tucker"}
    space = CompressionSpace(sites)
    base = {op.name: op_macs(op) for op in plan_workload(exported.analysis, None)}
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = space.decode(rng.random(space.dim))
        after: dict[str, int] = {}
        for op in plan_workload(exported.analysis, plan):
            original = op.name.split("/tucker_")[0].split("/svd_")[0]
            after[original] = after.get(original, 0) + op_macs(op)
        for name, macs in after.items():
            assert macs <= base[name]
        decomposed = {d.layer for d in plan.active_decompositions}
        nodes = {n.input[1]: n.name for n in exported.analysis.graph.nodes if len(n.input) > 1}
        for layer in decomposed:
            assert after[nodes[layer]] < base[nodes[layer]]


def test_decomposition_site_round_trip_and_identity_at_zero():
    layer = _layer()
    site = DecompositionSite(layer, "tucker", max_ranks(layer))
    space = CompressionSpace([site])
    assert space.decode(np.zeros(space.dim)).is_identity
    rng = np.random.default_rng(1)
    for _ in range(30):
        plan = space.decode(rng.random(space.dim))
        assert space.decode(space.encode(plan)) == plan
        assert Plan.from_json(plan.to_json()) == plan
