"""Run one small search in a fresh process; print its history as JSON.

Used by the tests that need a separate process: reproducibility across
processes, and kill-and-resume. Settings come as one JSON argument:
{"sampler", "seed", "dim", "samples", "iterations", "journal", "sleep",
"lower", "upper"}; `sleep` seconds are spent per batch so a test can kill
the process mid-search.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from adans_toolchain.search import maximize


def main() -> None:
    settings = json.loads(sys.argv[1])
    sleep = settings.pop("sleep", 0.0)
    dim = settings.pop("dim", 3)

    def fn(xs: np.ndarray):
        time.sleep(sleep)
        scores = np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / 0.1) + 0.01
        return scores, [{"norm": float(np.linalg.norm(x))} for x in xs]

    result = maximize(fn, dim, **settings)
    print(
        json.dumps(
            {
                "history": [[e.x.tolist(), e.f, e.iteration, e.info] for e in result.history],
                "iterations": [
                    [s.iteration, s.alpha, s.n_good, s.mean_good_f, s.best_f, s.e_avg, s.n_evaluations]
                    for s in result.iterations
                ],
                "best_x": result.best_x.tolist(),
                "best_f": result.best_f,
                "resumed_from": result.resumed_from,
            }
        )
    )


if __name__ == "__main__":
    main()
