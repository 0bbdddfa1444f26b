"""The evaluation cache: its file format, resume, and the search's cached accuracy function."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adans_toolchain.errors import SearchStateError
from adans_toolchain.evaluation.cache import CachedAccuracy, EvaluationCache
from adans_toolchain.evaluation.executors import evaluation_chunk


class _Space:
    """Points in [0, 1]^2 on a grid of tenths; a 'plan' is the grid cell."""

    def states(self, x):
        return tuple(int(round(v * 10)) for v in x)

    def decode_batch(self, xs):
        return [self.states(x) for x in xs]


class _Executor:
    workers = 1

    def __init__(self, fail_after: int | None = None) -> None:
        self.batches: list[list] = []
        self.fail_after = fail_after

    def accuracy(self, plans):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed
        self.batches.append(list(plans))
        return np.array([float(sum(p)) for p in plans])


class _Progress:
    def __init__(self) -> None:
        self.bars: list[tuple[int, int, str]] = []
        self.finished = 0

    def bar(self, done, total, message):
        self.bars.append((done, total, message))

    def done(self):
        self.finished += 1


def _grid(n: int) -> np.ndarray:
    """n distinct grid points."""
    return np.array([[i // 10 / 10, i % 10 / 10] for i in range(n)])


def test_repeats_and_known_points_are_not_evaluated_again(tmp_path):
    executor = _Executor()
    accuracies = CachedAccuracy(EvaluationCache(tmp_path / "e.jsonl"), _Space(), executor)
    xs = np.array([[0.1, 0.2], [0.1, 0.2], [0.3, 0.0]])
    assert accuracies(xs).tolist() == [3.0, 3.0, 3.0]
    assert executor.batches == [[(1, 2), (3, 0)]]
    assert (accuracies.evaluated, accuracies.cached) == (2, 1)
    assert accuracies(xs[:1]).tolist() == [3.0]
    assert (accuracies.evaluated, accuracies.cached) == (2, 2) and len(executor.batches) == 1
    assert accuracies.eval_seconds > 0 and accuracies.rate > 0


def test_the_file_format_is_one_record_per_line(tmp_path):
    path = tmp_path / "e.jsonl"
    CachedAccuracy(EvaluationCache(path), _Space(), _Executor())(np.array([[0.1, 0.2]]))
    assert path.read_text() == json.dumps({"key": "1,2", "accuracy": 3.0}) + "\n"
    assert EvaluationCache(path).get("1,2") == {"key": "1,2", "accuracy": 3.0}


def test_a_killed_run_keeps_every_finished_chunk(tmp_path):
    path, chunk = tmp_path / "e.jsonl", evaluation_chunk(1)
    xs = _grid(2 * chunk + 1)
    with pytest.raises(KeyboardInterrupt):
        CachedAccuracy(EvaluationCache(path), _Space(), _Executor(fail_after=1))(xs)
    assert len(path.read_text().splitlines()) == chunk
    executor = _Executor()
    resumed = CachedAccuracy(EvaluationCache(path), _Space(), executor)
    assert resumed(xs).tolist() == [float(sum(_Space().states(x))) for x in xs]
    assert sum(len(b) for b in executor.batches) == chunk + 1
    assert (resumed.evaluated, resumed.cached) == (chunk + 1, chunk)


def test_a_long_labelled_call_shows_a_bar(tmp_path):
    chunk = evaluation_chunk(1)
    progress = _Progress()
    accuracies = CachedAccuracy(EvaluationCache(tmp_path / "e.jsonl"), _Space(), _Executor(), progress)
    accuracies(_grid(chunk), "round 1")  # one chunk: no bar, even with a label
    assert not progress.bars and not progress.finished
    accuracies(_grid(3 * chunk), "round 2")  # two chunks to evaluate
    assert [(done, total) for done, total, _ in progress.bars] == [(chunk, 2 * chunk), (2 * chunk, 2 * chunk)]
    assert all(m.startswith("round 2  (") and m.endswith(" eval/s)") for _, _, m in progress.bars)
    assert progress.finished == 1
    accuracies(_grid(6 * chunk))  # no label: no bar
    assert len(progress.bars) == 2 and progress.finished == 1


def test_a_cut_off_last_line_is_dropped_and_a_damaged_one_refused(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"key": "1", "accuracy": 50.0}\n{"key": "2", "accu')
    with pytest.warns(UserWarning, match="damaged last line"):
        cache = EvaluationCache(path)
    assert cache.get("1") == {"key": "1", "accuracy": 50.0} and cache.get("2") is None
    assert path.read_text() == '{"key": "1", "accuracy": 50.0}\n'
    path.write_text('{"key": "1"\n{"key": "2", "accuracy": 1.0}\n')
    with pytest.raises(SearchStateError, match="damaged at line 1"):
        EvaluationCache(path)


class _ScreeningExecutor(_Executor):
    """Screens as an evaluator with early rejection does: plans scoring below 5 stop after 10 of 50 images."""

    def screen(self, plans):
        rows = []
        for acc in self.accuracy(plans):
            rows.append((acc, 10, 1.0) if acc < 5 else (acc, 50, 0.0))
        return np.array(rows)


def test_records_say_how_many_images_and_whether_rejected_early(tmp_path):
    path = tmp_path / "e.jsonl"
    accuracies = CachedAccuracy(EvaluationCache(path), _Space(), _ScreeningExecutor())
    assert accuracies(np.array([[0.1, 0.2], [0.5, 0.4], [0.1, 0.2]])).tolist() == [3.0, 9.0, 3.0]
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"key": "1,2", "accuracy": 3.0, "images": 10, "rejected": True},
        {"key": "5,4", "accuracy": 9.0, "images": 50},
    ]
    assert (accuracies.evaluated, accuracies.cached, accuracies.images, accuracies.rejected) == (2, 1, 60, 1)
    assert accuracies.images_per_s > 0
    assert set(accuracies.counters()) == {"evaluated", "cached", "eval_seconds", "images", "rejected", "images_per_s"}
    # A cache written before early rejection (no "images", no "rejected") still loads: full evaluations.
    path.write_text(path.read_text() + json.dumps({"key": "0,1", "accuracy": 1.0}) + "\n")
    cache = EvaluationCache(path)
    assert cache.get("0,1") == {"key": "0,1", "accuracy": 1.0} and cache.get("1,2")["rejected"] is True
    again = CachedAccuracy(cache, _Space(), _ScreeningExecutor())
    assert again(np.array([[0.0, 0.1], [0.1, 0.2]])).tolist() == [1.0, 3.0] and again.evaluated == 0
