"""AdaNS search: Algorithm 1 with the Uniform, Zoom, Genetic and Gaussian
samplers (and Optuna's TPE and CMA-ES, an optional extra), a resumable
journal, the reconstruction analysis, the score (search.scoring) and the
boundary characterisation (search.boundary).

Pure numpy/scipy: this package never imports torch, onnx or matplotlib, so
it stays cheap to import and to test (its plots are in reporting.plots);
Optuna and cmaes are imported only when the tpe or cmaes sampler proposes.

    result = maximize(fn, dim, sampler="gaussian", samples=50, iterations=20)
"""

from adans_toolchain.search.journal import read_journal
from adans_toolchain.search.loop import maximize
from adans_toolchain.search.samplers import SAMPLER_NAMES, Sampler, SearchContext, make_sampler
from adans_toolchain.search.types import Evaluation, IterationSummary, SearchResult

__all__ = [
    "SAMPLER_NAMES",
    "Evaluation",
    "IterationSummary",
    "Sampler",
    "SearchContext",
    "SearchResult",
    "make_sampler",
    "maximize",
    "read_journal",
]
