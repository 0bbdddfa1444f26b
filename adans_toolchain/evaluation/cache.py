"""Candidate accuracies through a resumable on-disk cache.

`EvaluationCache` is the file (OUT/state/evaluations.jsonl): one JSON record
per evaluated plan, appended as it is measured. `CachedAccuracy` is the
search's accuracy function on top of it: points of the compression space in,
top-1 out, evaluating only what the cache does not hold yet.

A record is {"key", "accuracy"}, plus "images" (validation images the plan
was run on) when the executor reports it, and "rejected": true when early
rejection stopped it (its accuracy is then the estimate on those images).
Records without these keys (older caches) are full evaluations.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from adans_toolchain.errors import SearchStateError
from adans_toolchain.evaluation.executors import evaluation_chunk
from adans_toolchain.fileio import atomic_write_text


class EvaluationCache:
    """Accuracy of every plan evaluated so far, appended as it is measured.

    Keyed by the number of units removed per site (the plan is determined by
    it). It makes a resumed run skip evaluations already paid for, and a
    search that proposes the same discrete plan twice evaluate it once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, dict] = {}
        if not path.is_file():
            return
        lines = path.read_text().split("\n")
        complete, tail = lines[:-1], lines[-1]  # text after the last newline was cut off mid-write
        for i, line in enumerate(complete):
            try:
                record = json.loads(line)
                self.values[record["key"]] = record
            except (json.JSONDecodeError, KeyError):
                raise SearchStateError(f"{path} is damaged at line {i + 1}; delete it to re-evaluate") from None
        if tail:
            warnings.warn(f"{path}: dropped a damaged last line (the run was killed while writing it)")
            atomic_write_text(path, "".join(line + "\n" for line in complete))

    @staticmethod
    def key(removed: tuple[int, ...]) -> str:
        return ",".join(str(r) for r in removed)

    def get(self, key: str) -> dict | None:
        return self.values.get(key)

    def put_many(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path, "a") as f:
            for r in records:
                self.values[r["key"]] = r
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())


class ProgressBar(Protocol):
    """What CachedAccuracy draws on (pipeline.progress.Progress is one)."""

    def bar(self, done: int, total: int, message: str) -> None: ...

    def done(self) -> None: ...


class CachedAccuracy:
    """Top-1 of points x of `space`, evaluated by `executor` only when `cache` lacks them.

    Counters, over every call: `evaluated` (plans actually evaluated),
    `cached` (points answered from the cache, repeats within a call
    included), `eval_seconds` (time spent in the executor), `images`
    (validation images those plans were run on; early rejection makes it
    less than evaluated x len(VAL)) and `rejected` (plans stopped early).
    An executor without `screen` reports neither images nor rejections.
    """

    def __init__(self, cache: EvaluationCache, space, executor, progress: ProgressBar | None = None) -> None:
        self.cache = cache
        self.space = space
        self.executor = executor
        self.progress = progress
        self.evaluated = 0
        self.cached = 0
        self.eval_seconds = 0.0
        self.images = 0
        self.rejected = 0

    @property
    def rate(self) -> float:
        """Evaluations per second so far."""
        return self.evaluated / max(self.eval_seconds, 1e-9)

    @property
    def images_per_s(self) -> float:
        """Validation images evaluated per second so far (comparable with or without early rejection)."""
        return self.images / max(self.eval_seconds, 1e-9)

    def counters(self) -> dict:
        """Every counter, for the report."""
        return {"evaluated": self.evaluated, "cached": self.cached, "eval_seconds": self.eval_seconds,
                "images": self.images, "rejected": self.rejected, "images_per_s": self.images_per_s}

    def __call__(self, xs: np.ndarray, label: str | None = None) -> np.ndarray:
        """Accuracy of each row of `xs`; with a `label`, a long evaluation shows a progress bar."""
        xs = np.atleast_2d(xs)
        keys = [self.cache.key(self.space.states(x)) for x in xs]
        missing: dict[str, np.ndarray] = {}
        for k, x in zip(keys, xs):
            if self.cache.get(k) is None and k not in missing:
                missing[k] = x
        self._evaluate(list(missing.items()), label)
        self.evaluated += len(missing)
        self.cached += len(xs) - len(missing)
        return np.array([self.cache.get(k)["accuracy"] for k in keys])

    def _evaluate(self, pending: list[tuple[str, np.ndarray]], label: str | None) -> None:
        """Evaluate and write in chunks: a bisection round can be a hundred or more
        evaluations, and a run killed mid-round keeps every finished chunk."""
        chunk = evaluation_chunk(self.executor.workers)
        show = label is not None and self.progress is not None and len(pending) > chunk
        for i in range(0, len(pending), chunk):
            part = pending[i:i + chunk]
            start = time.perf_counter()
            records = self._measure(self.space.decode_batch(np.array([x for _, x in part])))
            self.eval_seconds += time.perf_counter() - start
            self.cache.put_many([{"key": k, **r} for (k, _), r in zip(part, records)])
            if show:
                rate = (self.evaluated + i + len(part)) / max(self.eval_seconds, 1e-9)
                self.progress.bar(i + len(part), len(pending), f"{label}  ({rate:.2f} eval/s)")
        if show:
            self.progress.done()

    def _measure(self, plans: list) -> list[dict]:
        """Cache records (less the key) of `plans`, from the executor's `screen` where it has one."""
        screen = getattr(self.executor, "screen", None)
        if screen is None:
            return [{"accuracy": float(a)} for a in self.executor.accuracy(plans)]
        records = []
        for accuracy, images, rejected in np.asarray(screen(plans)).reshape(len(plans), 3):
            record = {"accuracy": float(accuracy), "images": int(images)}
            if rejected:
                record["rejected"] = True
                self.rejected += 1
            self.images += int(images)
            records.append(record)
        return records


class BudgetedAccuracy:
    """The cached accuracy under a cap on paid evaluations (--max-evaluations).

    The cap counts paid evaluations, the lines of OUT's cache, earlier
    sessions included: a resume with the same cap pays for nothing, one with
    a larger cap goes on from where the last stopped. A point the cap cannot
    pay for is answered NaN (not evaluated), which ends a bisection; the
    search asks `affordable` first and cuts its batch to fit.
    """

    def __init__(self, accuracies: CachedAccuracy, cap: int | None) -> None:
        self.accuracies, self.cap = accuracies, cap

    def remaining(self) -> int:
        if self.cap is None:
            return sys.maxsize
        return max(self.cap - len(self.accuracies.cache.values), 0)

    def _answered(self, xs: np.ndarray) -> np.ndarray:
        """Which rows get an accuracy: cached, or new within the cap (first come, a repeated point paid once)."""
        cache, space = self.accuracies.cache, self.accuracies.space
        left, new, answered = self.remaining(), set(), []
        for x in xs:
            key = cache.key(space.states(x))
            if cache.get(key) is None and key not in new and len(new) < left:
                new.add(key)
            answered.append(key in new or cache.get(key) is not None)
        return np.array(answered, dtype=bool)

    def affordable(self, xs: np.ndarray) -> int:
        """How many leading rows of xs can be evaluated within the cap."""
        answered = self._answered(np.atleast_2d(xs))
        return len(answered) if answered.all() else int(np.argmin(answered))

    def __call__(self, xs: np.ndarray, label: str | None = None) -> np.ndarray:
        xs = np.atleast_2d(xs)
        if self.cap is None:
            return self.accuracies(xs, label)
        answered = self._answered(xs)
        acc = np.full(len(xs), np.nan)
        if answered.any():
            acc[answered] = self.accuracies(xs[answered], label)
        return acc
