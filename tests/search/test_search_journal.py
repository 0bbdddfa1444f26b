"""The journal: exact round trip, resume, crash damage, mismatched settings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from adans_toolchain.errors import SearchStateError
from adans_toolchain.search import maximize, read_journal

SETTINGS = dict(sampler="gaussian", samples=5, seed=3, lower=-1.0, upper=2.0)


def scored(xs: np.ndarray):
    """Scores with full-precision floats and infos, to test the round trip."""
    scores = np.exp(-np.sum((xs - 0.3) ** 2, axis=1)) / 3.0 + 1e-3
    return scores, [{"accuracy": float(s) / 7, "tag": f"x{i}"} for i, s in enumerate(scores)]


def run(journal=None, iterations=6, **overrides):
    return maximize(scored, 3, iterations=iterations, journal=journal, **(SETTINGS | overrides))


def lines(path):
    return path.read_text().splitlines()


def test_journal_layout_and_exact_round_trip(tmp_path):
    path = tmp_path / "j.jsonl"
    result = run(path, iterations=3)
    records = [json.loads(line) for line in lines(path)]
    assert records[0]["type"] == "header" and records[0]["version"] == 1
    assert records[0]["lower"] == [-1.0] * 3 and records[0]["init_digest"] is None
    kinds = [r["type"] for r in records[1:]]
    assert kinds == (["eval"] * 5 + ["iteration"]) * 3
    header, evaluations, summaries = read_journal(path)
    assert header["sampler"] == "gaussian" and header["samples"] == 5
    assert evaluations == result.history  # bit-exact floats, same infos
    assert summaries == result.iterations


def test_resume_after_an_uninterrupted_prefix_gives_the_same_history(tmp_path):
    full = run(iterations=6)
    path = tmp_path / "j.jsonl"
    run(path, iterations=2)
    resumed = run(path, iterations=6)
    assert resumed.resumed_from == 2
    assert resumed.history == full.history
    assert resumed.iterations == full.iterations
    assert np.array_equal(resumed.best_x, full.best_x) and resumed.best_f == full.best_f
    assert read_journal(path)[1] == full.history


def test_resuming_a_finished_run_evaluates_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    first = run(path, iterations=4)

    def fail(xs):
        raise AssertionError("nothing should be evaluated")

    again = maximize(fail, 3, iterations=4, journal=path, **SETTINGS)
    assert again.history == first.history and again.resumed_from == 4
    shorter = maximize(fail, 3, iterations=2, journal=path, **SETTINGS)
    assert shorter.history == first.history[:10] and len(shorter.iterations) == 2
    assert len(read_journal(path)[2]) == 4  # the journal itself is left whole


def test_a_corrupt_last_line_is_dropped_with_a_warning(tmp_path):
    full = run(iterations=5)
    path = tmp_path / "j.jsonl"
    run(path, iterations=3)
    text = path.read_text()
    cut = text.rstrip("\n").rfind("\n") + 20  # 20 characters into the last line
    path.write_text(text[:cut])
    with pytest.warns(UserWarning, match="last line"):
        resumed = run(path, iterations=5)
    assert resumed.resumed_from == 2  # iteration 2 lost its commit line: recomputed
    assert resumed.history == full.history
    # The journal was rewritten cleanly: it reads back without any warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_journal(path)[1] == full.history


def test_uncommitted_evaluations_are_dropped_and_recomputed(tmp_path):
    full = run(iterations=4)
    path = tmp_path / "j.jsonl"
    run(path, iterations=3)
    kept = lines(path)[:-3]  # the commit line and two evals of iteration 2 gone
    path.write_text("\n".join(kept) + "\n")
    with pytest.warns(UserWarning, match="never committed.*iteration 2 will be recomputed"):
        resumed = run(path, iterations=4)
    assert resumed.history == full.history and resumed.resumed_from == 2


def test_a_last_line_without_its_newline_is_kept_and_the_file_repaired(tmp_path):
    path = tmp_path / "j.jsonl"
    run(path, iterations=2)
    path.write_text(path.read_text().rstrip("\n"))
    resumed = run(path, iterations=3)
    assert resumed.resumed_from == 2
    assert len(read_journal(path)[2]) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda ls: ls[:3] + ["{not json"] + ls[4:],
        lambda ls: ls[:3] + [ls[3].replace('"f"', '"g"')] + ls[4:],
        lambda ls: ls[:6] + ls[7:],  # a commit line in the middle missing
        lambda ls: [ls[0]] + ls[0:],  # a second header
    ],
    ids=["invalid-json", "missing-field", "missing-commit", "two-headers"],
)
def test_damage_before_the_last_line_is_an_error(tmp_path, damage):
    path = tmp_path / "j.jsonl"
    run(path, iterations=3)
    path.write_text("\n".join(damage(lines(path))) + "\n")
    with pytest.raises(SearchStateError, match="corrupt at line"):
        run(path, iterations=4)
    with pytest.raises(SearchStateError):
        read_journal(path)


@pytest.mark.parametrize(
    "change, setting",
    [
        (dict(seed=4), "seed"),
        (dict(samples=6), "samples"),
        (dict(sampler="zoom"), "sampler"),
        (dict(lower=-0.5), "lower"),
        (dict(alpha_max=0.9), "alpha_max"),
        (dict(init=np.zeros((2, 3))), "init_digest"),
    ],
)
def test_a_header_mismatch_names_the_setting(tmp_path, change, setting):
    path = tmp_path / "j.jsonl"
    run(path, iterations=2)
    with pytest.raises(SearchStateError, match=f"with {setting}=.*start a fresh journal or pass the same settings"):
        run(path, iterations=3, **change)


def test_sampler_options_are_part_of_the_header(tmp_path):
    from adans_toolchain.search import make_sampler

    path = tmp_path / "j.jsonl"
    run(path, iterations=2, sampler=make_sampler("gaussian", pair_strategy=1))
    with pytest.raises(SearchStateError, match="sampler_options"):
        run(path, iterations=3)


def test_extending_the_number_of_iterations(tmp_path):
    path = tmp_path / "j.jsonl"
    run(path, iterations=3)
    longer = run(path, iterations=7)
    assert longer.resumed_from == 3 and len(longer.iterations) == 7
    assert longer.history == run(iterations=7).history


def test_an_empty_or_half_written_header_starts_afresh(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"type": "header", "vers')
    with pytest.warns(UserWarning):
        result = run(path, iterations=2)
    assert result.resumed_from == 0 and result.history == run(iterations=2).history
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert run(empty, iterations=2).resumed_from == 0


def test_init_is_checked_by_digest(tmp_path):
    path = tmp_path / "j.jsonl"
    init = np.array([[0.1, 0.2, 0.3]])
    run(path, iterations=2, init=init)
    assert run(path, iterations=3, init=init.copy()).resumed_from == 2
