"""Atomic writes: the file appears whole, and with the permissions the process umask gives."""

from __future__ import annotations

import os
import stat

import pytest

from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "model.onnx", b"x")
        atomic_write_text(tmp_path / "sub" / "plan.json", "{}")
    finally:
        os.umask(previous)
    for path in (tmp_path / "model.onnx", tmp_path / "sub" / "plan.json"):
        assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.umask(previous) == previous  # the umask is left as it was


def test_replacing_leaves_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "1")
    atomic_write_text(tmp_path / "a.json", "2")
    assert (tmp_path / "a.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_unwritable_reason_tells_a_folder_that_takes_files_from_one_that_does_not(tmp_path):
    from adans_toolchain.fileio import unwritable_reason

    assert unwritable_reason(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    (tmp_path / "file").write_text("x")
    assert unwritable_reason(tmp_path / "file") == "not a directory"
    assert unwritable_reason(tmp_path / "missing") == "not a directory"
