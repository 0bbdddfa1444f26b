"""The search package is pure numpy: importing it pulls in no deep-learning
framework and no plotting library."""

from __future__ import annotations

import subprocess
import sys


def test_importing_search_leaves_torch_onnx_and_matplotlib_out(python_env):
    code = (
        "import sys\n"
        "import adans_toolchain.search\n"
        "import adans_toolchain.reporting.plots\n"  # plots import matplotlib lazily
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules)\n"
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
    assert search.SAMPLER_NAMES == ("gaussian", "uniform", "zoom", "genetic")
