"""Kill a search with SIGKILL mid-run, resume it in a new process, and get
exactly the history and result of a run that was never interrupted."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import pytest

SETTINGS = dict(sampler="gaussian", seed=7, dim=3, samples=5, iterations=10, lower=-1.0, upper=2.0)
# The Optuna samplers rebuild their state from the history too: same guarantee.
SAMPLERS = [
    "gaussian",
    "adans",  # fits a surrogate on the history each iteration: rebuilt from the journal like the rest
    *(
        pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(module) is None,
                                                    reason=f"{module} is not installed (extra: optuna)"))
        for name, module in (("tpe", "optuna"), ("cmaes", "cmaes"))
    ),
]


def committed(path) -> int:
    if not path.exists():
        return 0
    return path.read_text().count('"type": "iteration"')


def kill_after(start_worker, settings, journal, iterations_done: int):
    """Start a slow search and SIGKILL it once `iterations_done` are committed."""
    process = start_worker(**settings, journal=str(journal), sleep=0.2)
    deadline = time.monotonic() + 60
    try:
        while committed(journal) < iterations_done:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the search never committed enough iterations"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    done = committed(journal)
    assert iterations_done <= done < settings["iterations"], "killed too late to test anything"
    return done


def same_run(resumed: dict, uninterrupted: dict) -> None:
    for key in ("history", "iterations", "best_x", "best_f"):
        assert resumed[key] == uninterrupted[key], key


@pytest.fixture(scope="module", params=SAMPLERS)
def settings(request):
    return {**SETTINGS, "sampler": request.param}


@pytest.fixture(scope="module")
def uninterrupted(run_worker, settings):
    """The reference run, computed once per sampler for both tests."""
    return run_worker(**settings)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, start_worker, run_worker, settings, uninterrupted):
    journal = tmp_path / "search.jsonl"
    done = kill_after(start_worker, settings, journal, 2)
    resumed = run_worker(**settings, journal=str(journal))
    assert resumed["resumed_from"] == done
    same_run(resumed, uninterrupted)


def test_kill_mid_write_then_resume_matches_an_uninterrupted_run(
    tmp_path, start_worker, run_worker, settings, uninterrupted
):
    journal = tmp_path / "search.jsonl"
    done = kill_after(start_worker, settings, journal, 2)
    # Simulate dying in the middle of writing the last line.
    text = journal.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    journal.write_text(text[: last_start + (len(text) - last_start) // 2])
    resumed = run_worker(**settings, journal=str(journal))
    assert resumed["resumed_from"] == done - 1  # the damaged commit line took its iteration with it
    same_run(resumed, uninterrupted)
