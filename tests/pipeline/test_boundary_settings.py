"""The boundary's settings: --boundary-rounds and --boundary-groups bound its cost, and a run directory written
before they bounded it (its boundary was computed another way) is refused on resume with one line."""

import numpy as np
import pytest

from adans_toolchain.errors import ConfigError, SearchStateError
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.workspace import Workspace
from adans_toolchain.search.boundary import DIAGONAL_ROUNDS, max_boundary_evaluations


def make(**settings) -> CompileConfig:
    return CompileConfig(model="m", data="d", out="o", **settings)


def test_the_default_boundary_costs_one_evaluation_per_site_up_to_the_cap():
    cfg = make()
    for sites in (20, 120):  # ResNet-20-size, DenseNet-121-size
        levels = np.full(sites, 64)
        assert (max_boundary_evaluations(levels, rounds=cfg.boundary_rounds, max_groups=cfg.boundary_groups)
                == min(sites, cfg.boundary_groups) + DIAGONAL_ROUNDS)


@pytest.mark.parametrize("bad", [{"boundary_rounds": -1}, {"boundary_groups": 0}])
def test_a_boundary_setting_out_of_range_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="--boundary-rounds must be >= 0 and --boundary-groups >= 1"):
        make(**bad)


# That a changed --boundary-rounds or --boundary-groups stops a resume is in test_config's
# test_any_other_change_stops_a_resume, beside every other setting that changes the search.


def test_a_run_from_before_the_grouped_boundary_is_not_resumed(tmp_path):
    # Such a run recorded --boundary-rounds (6 by default, counted from 0) and no --boundary-groups.
    old = make().resume_key()
    old.pop("boundary_groups")
    old["boundary_rounds"] = 6
    Workspace.open(tmp_path, old, resume=False, overwrite=False)
    with pytest.raises(SearchStateError, match="'boundary_groups' was None and is now 48.*--overwrite"):
        Workspace.open(tmp_path, make().resume_key(), resume=True, overwrite=False)
