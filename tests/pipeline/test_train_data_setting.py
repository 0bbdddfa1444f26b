"""--train-data: several sources as one comma separated setting, and a resume notices when any of them changed."""

from __future__ import annotations

import pytest

from adans_toolchain.cli.compile import _config_from_args, build_parser
from adans_toolchain.errors import SearchStateError
from adans_toolchain.pipeline.compile import _input_fingerprints
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.workspace import Workspace, fingerprint_inputs


def config(train_data) -> CompileConfig:
    return CompileConfig(model="m.pt", data="val.npz", out="o", train_data=train_data)


def test_sources_are_given_comma_separated():
    argv = ["m.pt", "--data", "val.npz", "-o", "out", "--train-data", "exact.npz, train_jpeg.tar", "--finetune-epochs", "1"]
    cfg = _config_from_args(build_parser().parse_args(argv), argv)
    assert cfg.train_data == ("exact.npz", "train_jpeg.tar")
    assert cfg.resume_key()["train_data"] == ["exact.npz", "train_jpeg.tar"]


def test_one_source_is_fingerprinted_as_a_single_path_always_was(tmp_path):
    train = tmp_path / "train.npz"
    train.write_bytes(b"images")
    assert _input_fingerprints(config((str(train),)))["train_data"] == fingerprint_inputs({"t": str(train)})["t"]


def test_a_resume_is_refused_when_any_training_source_changed(tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.tar"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    cfg = config((str(first), str(second)))
    run = tmp_path / "run"
    Workspace.open(run, cfg.resume_key(), resume=False, overwrite=False, inputs=_input_fingerprints(cfg))
    Workspace.prepare(run, cfg.resume_key(), resume=True, overwrite=False, inputs=_input_fingerprints(cfg))
    second.write_bytes(b"changed")
    with pytest.raises(SearchStateError, match=r"TRAIN \(--train-data\) .*a.npz,.*b.tar changed"):
        Workspace.prepare(run, cfg.resume_key(), resume=True, overwrite=False, inputs=_input_fingerprints(cfg))
