"""Lookup tables: interpolation (exact at grid points, staircase kept), file format, header checks."""

from __future__ import annotations

import json

import pytest

from cost_models.lut import (
    Family,
    LookupTable,
    LookupTableError,
    LookupTableMismatchError,
    Measurement,
    Point,
    RuntimeFacts,
    check_batch,
    check_header,
)


def family_2d(fn, c_in_values, c_out_values, layout=lambda ci, co: "plain") -> Family:
    fam = Family("k", {"pattern": "Conv"}, ("c_in", "c_out"))
    for ci in c_in_values:
        for co in c_out_values:
            ms = fn(ci, co)
            fam.add(Point((ci, co), Measurement(ms, 2 * ms, 1, layout(ci, co), layout(ci, co))))
    return fam


def bilinear(ci, co):
    return 0.01 + 0.002 * ci + 0.003 * co + 0.0001 * ci * co


GRID = [1, 7, 8, 15, 16, 24, 31, 32]


def test_exact_at_every_grid_point():
    fam = family_2d(bilinear, GRID, GRID)
    for ci in GRID:
        for co in GRID:
            est = fam.lookup((ci, co), align=8)
            assert est.exact
            assert est.ms == bilinear(ci, co)
            assert fam.lookup((ci, co), align=8, statistic="median").ms == 2 * bilinear(ci, co)


def test_interpolation_between_grid_points_is_multilinear():
    fam = family_2d(bilinear, GRID, GRID)
    # A bilinear function is reproduced exactly between points of one class.
    for ci, co in [(20, 12), (27, 3), (12, 29), (5, 5)]:
        est = fam.lookup((ci, co), align=8)
        assert not est.exact
        assert est.ms == pytest.approx(bilinear(ci, co), rel=1e-12)


def staircase(ci, co):
    # Multiples of 8 run a faster kernel: 30 % cheaper than the line through their neighbours.
    base = bilinear(ci, co)
    return base * (0.7 if ci % 8 == 0 and co % 8 == 0 else 1.0)


def test_interpolation_keeps_the_staircase():
    fam = family_2d(staircase, GRID, GRID, layout=lambda ci, co: "blocked" if ci % 8 == 0 and co % 8 == 0 else "plain")
    # 16 is measured and cheaper than its measured neighbour 15.
    assert fam.lookup((16, 16), align=8).ms < fam.lookup((15, 16), align=8).ms
    # An unmeasured unaligned count interpolates between unaligned points only:
    # 20 lies between 15 and 31 (not 16/24), so it gets the slow line, not the fast one.
    est = fam.lookup((20, 20), align=8)
    assert est.ms == pytest.approx(bilinear(20, 20), rel=1e-12)
    assert est.out_layout == "plain"
    # Without classes (align 1) the same query would take the fast points 16 and 24.
    assert fam.lookup((20, 20), align=1).ms == pytest.approx(0.7 * bilinear(20, 20), rel=1e-12)


def test_outside_the_grid_is_flagged_extrapolated():
    fam = family_2d(bilinear, [8, 16], [8, 16])
    est = fam.lookup((40, 16), align=8)
    assert est.extrapolated and est.ms == pytest.approx(bilinear(40, 16))


def test_incomplete_grid_uses_the_corners_it_has_else_the_nearest_point():
    # A Pad cannot shrink channels, so its grid is a triangle, not a product.
    fam = Family("k", {"pattern": "Pad"}, ("c_in", "c_out"))
    fam.add(Point((4, 8), Measurement(1.0, 1.0)))
    fam.add(Point((8, 16), Measurement(2.0, 2.0)))
    # Corners (4, 8) and (8, 16) exist with weights 1/4 * 7/8 and 3/4 * 1/8: renormalised.
    assert fam.lookup((7, 9), align=1).ms == pytest.approx((7 / 32 * 1.0 + 3 / 32 * 2.0) / (10 / 32))
    # No corner of (4, 16) exists: the nearest measured point stands in.
    est = fam.lookup((4, 16), align=1)
    assert est.ms == 2.0 and not est.exact


def test_variants_interpolate_with_the_main_measurement():
    fam = Family("k", {"pattern": "Conv+Add"}, ("c",))
    for c, ms in ((8, 1.0), (16, 2.0)):
        fam.add(Point((c,), Measurement(ms, ms, 3, "blocked", "plain"), (("blocked_residual", Measurement(ms / 2, ms / 2, 1, "blocked", "blocked")),)))
    est = fam.lookup((12,), align=1)
    assert est.ms == pytest.approx(1.5)
    assert est.variant("blocked_residual").ms == pytest.approx(0.75)
    assert est.variant("blocked_residual").out_layout == "blocked"


def test_save_load_round_trip(tmp_path):
    table = LookupTable({"target": "t", "grid": {"align": 8}}, {}, {"per_node_ms": -0.004}, [{"model": "m", "ratio": 1.0}])
    table.add_family(family_2d(bilinear, [1, 8], [8, 16]))
    path = tmp_path / "sub" / "t.json"
    table.save(path)
    back = LookupTable.load(path)
    assert back.header == table.header and back.runtime == table.runtime and back.calibration == table.calibration
    assert back.family("k").lookup((8, 16), align=8).ms == bilinear(8, 16)
    assert back.align == 8


def test_unreadable_tables_are_refused(tmp_path):
    with pytest.raises(LookupTableError, match="does not exist"):
        LookupTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LookupTableError, match="not an adans latency table"):
        LookupTable.load(bad)


HEADER = {"target": "host", "device": "CPU X, 2 cores", "onnxruntime": "1.32.0", "provider": "CPUExecutionProvider",
          "threads": 2, "batch_sizes": [1, 4], "date": "2026-01-01"}


def facts(**kw):
    base = dict(target_id="host", provider="CPUExecutionProvider", threads=2, expected_onnxruntime="1.32.0",
                device_name="CPU X, 2 cores")
    base.update(kw)
    return RuntimeFacts(**base)


def test_matching_header_is_accepted():
    assert check_header(HEADER, facts(), source="t.json") == []


@pytest.mark.parametrize(
    "change,expected",
    [
        (dict(threads=4), "threads 2 != 4"),
        (dict(expected_onnxruntime="1.31.0"), "onnxruntime 1.32.0 != 1.31.0"),
        (dict(device_name="CPU Y, 8 cores"), "device 'CPU X, 2 cores' != 'CPU Y, 8 cores'"),
        (dict(target_id="cortex-a57", device_name=None, device_match=("Cortex-A57",)), "target 'host' != 'cortex-a57'"),
        (dict(provider="CUDAExecutionProvider"), "execution provider"),
    ],
)
def test_mismatched_header_is_refused_with_one_clear_message(change, expected):
    with pytest.raises(LookupTableMismatchError) as e:
        check_header(HEADER, facts(**change), source="t.json")
    msg = str(e.value)
    assert expected in msg and "Re-profile" in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_descriptor_targets_check_the_device_name_and_report_the_runtime():
    header = dict(HEADER, target="cortex-a57", device="Cortex-A57, 4 cores", threads=4, onnxruntime="1.16.3")
    notes = check_header(header, facts(target_id="cortex-a57", threads=4, expected_onnxruntime=None, device_name=None,
                                       device_match=("Cortex-A57",)), source="a57.json")
    assert "1.16.3" in notes[0]
    with pytest.raises(LookupTableMismatchError, match="is not a Cortex-A57"):
        check_header(dict(header, device="AMD EPYC, 2 cores"),
                     facts(target_id="cortex-a57", threads=4, expected_onnxruntime=None, device_name=None,
                           device_match=("Cortex-A57",)), source="a57.json")


def test_batch_must_have_been_profiled():
    check_batch(HEADER, 4, source="t.json", target_id="host")
    with pytest.raises(LookupTableMismatchError, match="batch sizes \\[1, 4\\], not 8"):
        check_batch(HEADER, 8, source="t.json", target_id="host")
