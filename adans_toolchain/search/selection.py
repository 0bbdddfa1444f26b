"""Algorithm 1, steps 1–3: the threshold α_t and the good set S_g.

Paper rule (digest §5): f̃* = max f over the history; α_t is the largest
α ∈ [0, α_max] with at least b samples scoring f > α·f̃*; S_g holds the
samples with f > α_t·f̃*.

Two precisions this implementation makes:

* The supremum is not attained with a strict '>': #{f > α·f̃*} ≥ b holds for
  every α < f_(b)/f̃* (f_(b) the b-th best score) but not at the supremum
  itself. We take α_t = min(α_max, f_(b)/f̃*) and the closed set
  S_g = {f ≥ α_t·f̃*}, which at the supremum is exactly the b best samples
  (more under ties). S_g therefore always has at least b members once the
  history has b samples, and always contains the best sample.
* The rule only makes sense for positive scores. When some score is ≤ 0 we
  apply it to the shifted utility u = f − min(f) over the history (so the
  worst sample has u = 0). The compiler's scores are always > 0, so there the
  paper rule applies unchanged.

With fewer than b samples in the history, α_t = 0 and S_g is the whole
history.
"""

from __future__ import annotations

import numpy as np


def utility(fs: np.ndarray) -> np.ndarray:
    """Scores as the selection rule sees them: f itself, or f − min(f) if any f ≤ 0."""
    fs = np.asarray(fs, dtype=np.float64)
    if fs.size == 0 or fs.min() > 0:
        return fs
    return fs - fs.min()


def good_set(fs: np.ndarray, batch_size: int, alpha_max: float) -> tuple[float, np.ndarray]:
    """Return (α_t, indices of S_g), indices ordered by decreasing score.

    Ties in score keep history order (earlier first), so the order is fully
    deterministic; samplers that walk S_g "in order of decreasing score" rely
    on it.
    """
    fs = np.asarray(fs, dtype=np.float64)
    n = fs.size
    if n == 0:
        return 0.0, np.zeros(0, dtype=np.int64)
    # Stable sort on -f: decreasing score, ties in history order.
    order = np.argsort(-fs, kind="stable")
    u = utility(fs)
    u_star = float(u.max())
    if n < batch_size or u_star <= 0.0:
        # Too few samples to be selective, or all scores equal: S_g = all.
        return 0.0, order
    u_b = float(u[order[batch_size - 1]])
    if u_b / u_star <= alpha_max:
        alpha = u_b / u_star
        # Compare against u_b itself, not alpha·u_star: the round trip through
        # a division and a multiplication may land one ulp above u_b and drop
        # the b-th sample.
        threshold = u_b
    else:
        alpha = float(alpha_max)
        threshold = alpha * u_star
    keep = u[order] >= threshold
    return float(alpha), order[keep]
