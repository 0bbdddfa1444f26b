"""Low-rank decomposition by parameter substitution, with factors computed once.

- SVD (Gemm, MatMul, 1x1 Conv): W (out x in) = U S V^T; rank r keeps the
  r largest singular values.
- Tucker-2 (kxk Conv, group 1): the HOSVD factors U_out (mode 0) and U_in
  (mode 1) come from one SVD of each unfolding. Ranks (r1, r2) project W
  onto the leading r1 input and r2 output directions:
      W_r = P_out x0 W x1 P_in,  P = U[:, :r] U[:, :r]^T.
  Truncating one HOSVD (instead of re-running HOOI per candidate) is what
  makes a candidate cheap, and it makes the error monotone: projections onto
  nested subspaces, so a larger rank never fits worse, and full rank is exact.
  A rank equal to the mode's size leaves that mode unfactorised (Tucker-1).

The box (`analysis.factors.max_ranks`) gives, per mode, the largest rank whose factorised
layer still costs fewer MACs than the original, jointly over both modes, so
the search never proposes a rank that adds work.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import tensorly as tl

from adans_toolchain.analysis.factors import decomposable
from adans_toolchain.analysis.layers import WeightedLayer

tl.set_backend("numpy")


def as_matrix(layer: WeightedLayer, w: np.ndarray) -> np.ndarray:
    """The weight as (out x in)."""
    if layer.op == "Conv":
        return w.reshape(w.shape[0], w.shape[1])
    if layer.op == "Gemm" and layer.trans_b:
        return w
    return w.T


def from_matrix(layer: WeightedLayer, m: np.ndarray) -> np.ndarray:
    if layer.op == "Conv":
        return m.reshape(layer.weight_shape)
    if layer.op == "Gemm" and layer.trans_b:
        return m
    return m.T


def _left_singular(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of a wide matrix, from the eigenvectors of m m^T.

    The Gram matrix is rows x rows (at most a few thousand), so this is far
    cheaper than an SVD of the whole unfolding, and only the leading
    directions are ever used.
    """
    values, vectors = np.linalg.eigh(m @ m.T)
    order = np.argsort(values)[::-1]
    return vectors[:, order], np.sqrt(np.clip(values[order], 0.0, None))


def _svd(m: np.ndarray) -> "_SvdFactors":
    """Thin SVD through the smaller Gram matrix."""
    if m.shape[0] > m.shape[1]:
        t = _svd(m.T)
        return _SvdFactors(t.vt.T, t.s, t.u.T)
    u, s = _left_singular(m)
    # V^T = S^-1 U^T M; directions with (numerically) zero singular values get zero rows.
    inverse = np.where(s > s[0] * 1e-12, 1.0 / np.where(s > 0, s, 1.0), 0.0) if s.size and s[0] > 0 else np.zeros_like(s)
    vt = (u.T @ m) * inverse[:, None]
    return _SvdFactors(u, s, vt)


@dataclass
class _SvdFactors:
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray


@dataclass
class _TuckerFactors:
    u_out: np.ndarray  # f x f'
    u_in: np.ndarray  # c x c'


class Factorizations:
    """One factorisation per layer, computed on first use; reconstructions cached (LRU)."""

    def __init__(self, layers: dict[str, WeightedLayer], weights: dict[str, np.ndarray], *, cache_size: int = 256) -> None:
        self.layers = layers
        self.weights = weights
        self._factors: dict[str, _SvdFactors | _TuckerFactors] = {}
        self._reconstructions: OrderedDict[tuple[str, tuple[int, ...]], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def factors(self, name: str):
        if name not in self._factors:
            layer, w = self.layers[name], self.weights[name].astype(np.float64)
            if decomposable(layer) == "svd":
                self._factors[name] = _svd(as_matrix(layer, w))
            else:
                u_out, _ = _left_singular(tl.base.unfold(w, 0))
                u_in, _ = _left_singular(tl.base.unfold(w, 1))
                self._factors[name] = _TuckerFactors(u_out, u_in)
        return self._factors[name]

    def reconstruct(self, name: str, ranks: tuple[int, ...]) -> np.ndarray:
        """The layer's weight at `ranks`, in its original layout and dtype."""
        key = (name, tuple(ranks))
        if key in self._reconstructions:
            self._reconstructions.move_to_end(key)
            return self._reconstructions[key]
        layer, w = self.layers[name], self.weights[name]
        f = self.factors(name)
        if isinstance(f, _SvdFactors):
            r = ranks[0]
            m = (f.u[:, :r] * f.s[:r]) @ f.vt[:r]
            result = from_matrix(layer, m)
        else:
            # Project with the thin factors, U (U^T W): O(r f c k^2) instead of
            # O(f^2 c k^2) for the dense projector; this runs once per candidate.
            r1, r2 = ranks
            result = w.astype(np.float32)
            if r2 < layer.c_out:
                u = f.u_out[:, :r2].astype(np.float32)
                result = tl.tenalg.mode_dot(tl.tenalg.mode_dot(result, u.T, 0), u, 0)
            if r1 < layer.c_in:
                u = f.u_in[:, :r1].astype(np.float32)
                result = tl.tenalg.mode_dot(tl.tenalg.mode_dot(result, u.T, 1), u, 1)
        result = np.ascontiguousarray(result, dtype=w.dtype)
        self._reconstructions[key] = result
        if len(self._reconstructions) > self._cache_size:
            self._reconstructions.popitem(last=False)
        return result

    def factor_weights(
        self, name: str, ranks: tuple[int, ...], kept_in: np.ndarray | None, kept_out: np.ndarray | None
    ) -> list[np.ndarray]:
        """(out x in) matrices / kernels of the factorised layer, restricted to the kept channels.

        svd:    [V (r x c'), U S (f' x r)]
        tucker: [A (r1 x c') or None, core (r2' x r1' x k x k), C (f' x r2) or None]
        """
        layer = self.layers[name]
        all_in = np.arange(layer.c_in) if kept_in is None else kept_in
        all_out = np.arange(layer.c_out) if kept_out is None else kept_out
        f = self.factors(name)
        if isinstance(f, _SvdFactors):
            r = ranks[0]
            return [f.vt[:r][:, all_in], (f.u[all_out, :r] * f.s[:r])]
        r1, r2 = ranks
        w = self.weights[name].astype(np.float64)
        in_factor = r1 < layer.c_in
        out_factor = r2 < layer.c_out
        core = w
        if out_factor:
            core = np.einsum("fr,fckl->rckl", f.u_out[:, :r2], core)
        if in_factor:
            core = np.einsum("fckl,cs->fskl", core, f.u_in[:, :r1])
        if not in_factor:
            core = core[:, all_in]
        if not out_factor:
            core = core[all_out]
        first = f.u_in[all_in, :r1].T if in_factor else None
        last = f.u_out[all_out, :r2] if out_factor else None
        return [first, core, last]
