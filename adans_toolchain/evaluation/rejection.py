"""Early rejection: stop evaluating a candidate once it cannot (or almost surely will not) reach the threshold.

A candidate is evaluated on growing slices of VAL, in a fixed seeded random
order (so an early slice is a uniform sample of VAL even if VAL is sorted by
class). At each checkpoint (a fraction of VAL) `should_reject` decides
whether to stop. A rejected candidate's recorded accuracy is its partial
estimate, 100 * correct / seen, which is below the threshold, so the score
still ranks it (and calls it infeasible).

Two bounds:

- exact (`confidence=None`): reject only when even all remaining images
  correct could not reach the threshold. The final accuracy is at most that
  bound, so a candidate that would reach the threshold on all of VAL is never
  rejected, and a feasible candidate is always evaluated in full: feasible
  decisions are the same as without early rejection.
- confidence c: also reject when a one-sided Hoeffding-Serfling bound (sampling
  without replacement from the N images of VAL; Serfling 1974, Bardenet &
  Maillard 2015) says the accuracy on all of VAL is below the threshold. If
  the candidate's accuracy on all of VAL meets the threshold, the chance
  (over the random order) that it is rejected at any checkpoint is at most
  1 - c: the error budget is split evenly over the checkpoints (union bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EARLY_REJECTION_SETTINGS = ("exact", "off")  # or a confidence in (0, 1), e.g. 0.999
DEFAULT_CHECKPOINTS = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class EarlyRejection:
    """The rule: `threshold` (top-1 in percent on all of VAL), checked after each fraction in `checkpoints`.

    confidence: None for the exact bound, else the one-sided confidence of the
        Hoeffding-Serfling bound (e.g. 0.999).
    seed: of the fixed random order in which VAL is evaluated.
    """

    threshold: float
    checkpoints: tuple[float, ...] = DEFAULT_CHECKPOINTS
    confidence: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        points = tuple(float(c) for c in self.checkpoints)
        object.__setattr__(self, "checkpoints", points)
        if not points or any(not 0 < c < 1 for c in points) or any(a >= b for a, b in zip(points, points[1:])):
            raise ValueError(f"checkpoints must be increasing fractions of VAL in (0, 1), not {points}")
        if self.confidence is not None and not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1) (or None for the exact bound), not {self.confidence}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite percentage, not {self.threshold}")

    @classmethod
    def from_setting(cls, setting: str, threshold: float) -> "EarlyRejection | None":
        """`--early-rejection`: 'exact', 'off' (None) or a confidence such as '0.999'."""
        text = str(setting).strip().lower()
        if text == "off":
            return None
        if text == "exact":
            return cls(threshold)
        try:
            confidence = float(text)
        except ValueError:
            raise ValueError(f"early rejection is exact, off or a confidence in (0, 1), not {setting!r}") from None
        if not 0 < confidence < 1:
            raise ValueError(f"an early-rejection confidence is in (0, 1) (e.g. 0.999), not {setting!r}")
        return cls(threshold, confidence=confidence)

    def describe(self) -> str:
        points = "/".join(f"{100 * c:g}" for c in self.checkpoints)
        bound = ("exact bound: only candidates that could not reach it even with every remaining image correct"
                 if self.confidence is None else
                 f"Hoeffding-Serfling bound at confidence {self.confidence:g}: a candidate that meets it on all of "
                 f"VAL is rejected with probability at most {1 - self.confidence:.2g}")
        return (f"early rejection: candidates were checked after {points} % of VAL (seeded random order) against the "
                f"{self.threshold:.2f} % threshold ({bound}); a rejected candidate's accuracy is its estimate on the "
                "images seen")

    def stops(self, total: int) -> tuple[int, ...]:
        """Images seen at each check, increasing, then `total` (the end of VAL; no check there)."""
        counts = sorted({int(round(c * total)) for c in self.checkpoints} - {0})
        return tuple(n for n in counts if n < total) + (total,)

    def should_reject(self, correct: int, seen: int, total: int) -> bool:
        """Stop a candidate with `correct` of the first `seen` of `total` images right?"""
        if not 0 < seen < total:
            return False  # nothing seen yet, or VAL done: the accuracy is exact
        if 100.0 * (correct + (total - seen)) / total < self.threshold:
            return True  # even every remaining image right stays below
        if self.confidence is None:
            return False
        return 100.0 * (correct / seen + self.margin(seen, total)) < self.threshold

    def margin(self, seen: int, total: int) -> float:
        """epsilon with P(estimate on `seen` images < accuracy on `total` - epsilon) <= (1 - confidence) / checks.

        Hoeffding-Serfling for sampling without replacement, values in [0, 1]:
        P(mean_n - mu <= -eps) <= exp(-2 n eps^2 / rho_n), with rho_n the smaller
        of Serfling's 1 - (n - 1)/N and Bardenet-Maillard's (1 - n/N)(1 + 1/n).
        """
        if self.confidence is None:
            return math.inf
        delta = (1.0 - self.confidence) / len(self.checkpoints)
        rho = min(1.0 - (seen - 1) / total, (1.0 - seen / total) * (1.0 + 1.0 / seen))
        return math.sqrt(max(rho, 0.0) * math.log(1.0 / delta) / (2.0 * seen))

    def order(self, total: int) -> np.ndarray:
        """The fixed order in which VAL's images are evaluated."""
        return np.random.default_rng(self.seed).permutation(total)
