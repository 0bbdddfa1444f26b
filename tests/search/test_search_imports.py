"""The search package is pure numpy: importing it pulls in no deep-learning
framework, no plotting library and not Optuna (the optional samplers import it
when they propose)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_search_leaves_torch_onnx_and_matplotlib_out(python_env):
    code = (
        "import sys\n"
        "import adans_toolchain.search\n"
        "import adans_toolchain.reporting.plots\n"  # plots import matplotlib lazily
        # Building an Optuna sampler does not import Optuna either: only proposing does.
        "import importlib.util\n"
        "if importlib.util.find_spec('optuna'): adans_toolchain.search.make_sampler('tpe')\n"
        "if importlib.util.find_spec('cmaes'): adans_toolchain.search.make_sampler('cmaes')\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib', 'optuna', 'cmaes')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_public_api():
    import adans_toolchain.search as search

    for name in (
        "maximize",
        "SearchResult",
        "Evaluation",
        "IterationSummary",
        "Sampler",
        "make_sampler",
        "SAMPLER_NAMES",
        "read_journal",
    ):
        assert hasattr(search, name), name
    assert search.SAMPLER_NAMES == ("gaussian", "uniform", "zoom", "genetic", "tpe", "cmaes", "adans")
