"""Shared helpers for the search tests: objectives and a subprocess runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("search_worker.py")


def _bump(xs: np.ndarray) -> np.ndarray:
    """A smooth positive bump with its maximum 1.01 at x = 0.3 (in [0, 1]^d)."""
    return np.exp(-np.sum((xs - 0.3) ** 2, axis=1) / 0.1) + 0.01


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # One BLAS thread: results do not depend on it, but a CPU shared with
    # other processes makes multithreaded LAPACK crawl.
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _worker_command(**settings: Any) -> list[str]:
    return [sys.executable, str(WORKER), json.dumps(settings)]


def _run_worker(**settings: Any) -> dict[str, Any]:
    """Run search_worker.py with these settings; return its JSON output."""
    done = subprocess.run(
        _worker_command(**settings), env=_subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def bump():
    """fn for `maximize`: a smooth bump, maximum 1.01 at x = 0.3."""
    return _bump


@pytest.fixture(scope="session")
def run_worker():
    """run_worker(**settings) -> the worker's JSON output (a finished search)."""
    return _run_worker


@pytest.fixture(scope="session")
def start_worker():
    """start_worker(**settings) -> a running subprocess.Popen of the worker."""

    def start(**settings: Any) -> subprocess.Popen:
        return subprocess.Popen(
            _worker_command(**settings),
            env=_subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


@pytest.fixture(scope="session")
def python_env():
    """Environment for a child Python that must import adans_toolchain."""
    return _subprocess_env()
