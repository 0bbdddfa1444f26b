"""Never lose a user's data (issue 19): --overwrite replaces only an adans run, and only once the new run
succeeded; --resume checks what it resumes; every failure is one line; bad input is called bad input.

Each refusal checks the exit code, that stderr holds one error line (progress lines aside) and no
traceback, and that every file under the test's folder (OUT and the user's own files) has the same
sha256 afterwards, with nothing added.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from adans_toolchain.cli import profile as profile_cli
from adans_toolchain.cli.compile import main
from adans_toolchain.pipeline import compile as pipeline
from adans_toolchain.pipeline.config import CompileConfig
from adans_toolchain.pipeline.workspace import Workspace, fingerprint

# Small, and short: the success runs take a minute on a busy 2-core CPU; refusals stop before the search.
TINY = ["--val-limit", "40", "--samples", "2", "--iterations", "1", "--boundary-rounds", "1", "--bn-recalibrate", "0",
        "--no-measure", "--max-accuracy-drop", "10"]
REPO = Path(__file__).resolve().parents[2]


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included), by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run(argv, prog=main) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = prog([str(a) for a in argv])
    return code, err.getvalue().splitlines()


def refused(argv, *fragments: str, prog=main, name="adans-compile", code=2, warnings: int | None = 0, warned_with: str = "") -> str:
    """Run, and check: exit `code`, one error line (the last), `warnings` one-line warnings (None: any number),
    one of them holding `warned_with`, and only progress lines besides."""
    got, lines = run(argv, prog)
    assert got == code, (got, lines)
    assert not any("Traceback" in line for line in lines), lines
    errors = [line for line in lines if line.startswith(f"{name}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    warned = [line for line in lines if line.startswith(f"{name}: warning:")]
    assert warnings is None or len(warned) == warnings, lines
    assert not warned_with or any(warned_with in line for line in warned), lines
    # Anything else is a progress line: no source lines of warnings, no traceback fragments.
    assert all(line.startswith("[") for line in lines if line not in errors and line not in warned), lines
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


@pytest.fixture
def inputs(example_paths, tmp_path) -> dict[str, Path]:
    """The user's files: copies of the bundled model and VAL, in the test's folder."""
    user = tmp_path / "user"
    user.mkdir()
    for key, name in (("model", "resnet20.th"), ("val", "val.npz")):
        shutil.copy(example_paths[key], user / name)
    return {"model": user / "resnet20.th", "val": user / "val.npz"}


def argv_for(inputs, out, *extra) -> list:
    return [inputs["model"], "--arch", "cifar_resnet20", "--data", inputs["val"], *TINY, "-o", out, *extra]


def fake_run(out: Path, inputs) -> Path:
    """A directory with an earlier run's record (config.json as a Workspace writes it) and artifacts."""
    out.mkdir(parents=True)
    record = CompileConfig(model=str(inputs["model"]), data=str(inputs["val"]), out=str(out)).resume_key()
    (out / "config.json").write_text(json.dumps(record))
    (out / "state").mkdir()
    (out / "state" / "evaluations.jsonl").write_text('{"key": "earlier"}\n')
    (out / "model.onnx").write_bytes(b"the earlier model")
    (out / "report.md").write_text("the earlier report")
    return out


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# -- 1. --overwrite replaces only an adans run, and only when the new run succeeds ----------


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_directory_that_is_not_a_run_is_never_deleted(tmp_path, inputs, overwrite):
    out = tmp_path / "notarun"
    (out / "photos").mkdir(parents=True)
    (out / "thesis.txt").write_text("four years of work")
    (out / "photos" / "a.jpg").write_bytes(b"\xff\xd8 a photo")
    before = tree(tmp_path)
    line = refused(argv_for(inputs, out, *(["--overwrite"] if overwrite else [])), "holds no adans run", "config.json")
    assert "already holds a run" not in line
    assert tree(tmp_path) == before


def test_a_run_is_not_replaced_without_overwrite(tmp_path, inputs):
    out = fake_run(tmp_path / "out", inputs)
    before = tree(tmp_path)
    refused(argv_for(inputs, out), "already holds a run", "--resume", "--overwrite")
    assert tree(tmp_path) == before


def test_a_failed_overwrite_keeps_the_earlier_run(tmp_path, inputs, monkeypatch):
    """It fails mid-search (here: the disk is full), after the new run was started beside the old one."""
    out = fake_run(tmp_path / "out", inputs)
    before = tree(tmp_path)

    def disk_full(run):
        assert run.ws.root != out and run.ws.root.parent == out.parent  # built beside OUT, not in it
        raise OSError(28, "No space left on device", str(run.ws.root / "history.jsonl"))

    monkeypatch.setattr(pipeline, "_search", disk_full)
    refused(argv_for(inputs, out, "--overwrite"), "No space left on device", "history.jsonl")
    assert tree(tmp_path) == before and siblings(out) == []


def test_a_killed_overwrite_keeps_the_earlier_run(tmp_path, inputs):
    out = fake_run(tmp_path / "out", inputs)
    before = tree(out)
    argv = [sys.executable, "-m", "adans_toolchain.cli.compile",
            *[str(a) for a in argv_for(inputs, out, "--overwrite", "--boundary-rounds", "4", "--iterations", "20")]]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    build = out.parent / f".out.adans-new-{process.pid}"
    deadline = time.monotonic() + 300
    try:
        evaluations = build / "state" / "evaluations.jsonl"
        while not (evaluations.is_file() and evaluations.stat().st_size > 0):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the run never stored an evaluation"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert tree(out) == before  # the earlier run, as it was
    assert build.is_dir()  # the killed run's build, beside it
    # The next run cleans it up, whatever becomes of that run.
    refused(argv_for(inputs, out, "--overwrite", "--target", "pdp11"), "unknown target")
    assert tree(out) == before and siblings(out) == []


def test_a_swap_killed_halfway_is_undone(tmp_path, inputs):
    """Killed between renaming the earlier run away and renaming the new one in: the next run puts it back."""
    earlier = fake_run(tmp_path / "out", inputs)
    before = tree(earlier)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    earlier.rename(tmp_path / f".out.adans-old-{dead.pid}")
    refused(argv_for(inputs, tmp_path / "out", "--overwrite", "--target", "pdp11"), "unknown target")
    assert tree(tmp_path / "out") == before and siblings(tmp_path / "out") == []


@pytest.fixture(scope="module")
def overwritten(tmp_path_factory, example_paths):
    """A successful --overwrite of an earlier run, under umask 022; the one full compile of this module."""
    root = tmp_path_factory.mktemp("overwritten")
    user = root / "user"
    user.mkdir()
    files = {"model": user / "resnet20.th", "val": user / "val.npz"}
    shutil.copy(example_paths["model"], files["model"])
    shutil.copy(example_paths["val"], files["val"])
    out = fake_run(root / "out", files)
    (out / "only-in-the-earlier-run.txt").write_text("replaced")
    mask = os.umask(0o022)
    try:
        code, lines = run(argv_for(files, out, "--overwrite"))
    finally:
        os.umask(mask)
    assert code == 0, lines
    return out, files, lines


def test_a_successful_overwrite_replaces_the_earlier_run(overwritten):
    out, _, _ = overwritten
    assert not (out / "only-in-the-earlier-run.txt").exists()
    assert (out / "model.onnx").read_bytes() != b"the earlier model"
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))
    assert siblings(out) == []


# -- 2. emitted files are readable by others ------------------------------------------------


def test_emitted_files_honour_the_umask(overwritten):
    out, _, _ = overwritten
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"model.onnx", "report.md", "config.json", "inputs.json"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# -- 3. --resume checks the model and data by content, before it writes anything -------------


@pytest.mark.parametrize("changed, named", [("val", "VAL (--data)"), ("model", "the model")])
def test_a_resume_of_changed_inputs_is_refused_before_anything_is_written(overwritten, tmp_path, changed, named):
    out, files, _ = overwritten
    recorded = json.loads((out / "inputs.json").read_text())
    assert recorded["data"]["fingerprint"] == fingerprint(files["val"])
    original = files[changed].read_bytes()
    try:
        if changed == "val":  # other images, same path, same shape
            with np.load(files["val"]) as d:
                np.savez(files["val"], x=255 - d["x"], y=d["y"])
        else:
            state = torch.load(files["model"], map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, files["model"])
        before = tree(out)
        refused(argv_for(files, out, "--resume"), "cannot resume", named, str(files[changed]), "changed", "--overwrite")
        assert tree(out) == before
    finally:
        files[changed].write_bytes(original)


# -- 4. every failure is one line; a run that fails before its first evaluation leaves no OUT --------


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder this process cannot create anything in (root ignores permissions: /sys refuses even root)."""
    if os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("no folder refuses root here")
        yield Path("/sys")
        return
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


def test_an_unwritable_out_is_one_line_before_the_model_is_loaded(tmp_path, inputs, unwritable):
    before = tree(tmp_path)
    argv = argv_for(inputs, unwritable / "out")
    argv[0] = tmp_path / "missing.th"  # OUT is checked first
    refused(argv, "cannot write to", str(unwritable), "-o")
    assert tree(tmp_path) == before and not (unwritable / "out").exists()


def test_profile_output_that_is_a_directory_or_unwritable(tmp_path, unwritable):
    before = tree(tmp_path)
    base = ["--builtin", "cifar_resnet20", "--rounds", "1"]
    refused([*base, "-o", tmp_path], "is a directory", prog=profile_cli.main, name="adans-profile")
    refused([*base, "-o", unwritable / "t.json"], "cannot write the table", prog=profile_cli.main, name="adans-profile")
    refused([*base, "--threads", "0", "-o", tmp_path / "t.json"], "--threads", prog=profile_cli.main, name="adans-profile")
    assert tree(tmp_path) == before


def _classifier(path: Path, extra: onnx.NodeProto, *, after_fc: bool, opsets=()) -> Path:
    """conv-relu-conv-relu-pool-fc on 3x32x32 with `extra` inserted after the fc (reading `z`) or after relu2 (`d`)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("c1.weight", (8, 3, 3, 3)), ("c2.weight", (8, 8, 3, 3)), ("fc.weight", (10, 8)))]
    pool_in, fc_out = ("d", "z") if after_fc else ("e", "y")
    nodes = [
        helper.make_node("Conv", ["x", "c1.weight"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"], name="r1"),
        helper.make_node("Conv", ["b", "c2.weight"], ["c"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Relu", ["c"], ["d"], name="r2"),
        *([] if after_fc else [extra]),
        helper.make_node("GlobalAveragePool", [pool_in], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.weight"], [fc_out], transB=1, name="fc"),
        *([extra] if after_fc else []),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), *opsets])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_operator_no_cost_model_knows_is_one_line_naming_it_and_leaves_no_out(tmp_path, inputs):
    model = _classifier(tmp_path / "lpnorm.onnx", helper.make_node("LpNormalization", ["z"], ["y"], axis=1, p=2, name="lpn"),
                        after_fc=True)
    out = tmp_path / "out"
    argv = [model, "--data", inputs["val"], *TINY, "-o", out]
    before = tree(tmp_path)
    refused(argv, "LpNormalization", "cannot cost")
    assert tree(tmp_path) == before and not out.exists()  # so a plain rerun is not blocked


def test_a_run_that_fails_before_its_first_evaluation_leaves_no_out(tmp_path, inputs, monkeypatch):
    def no_memory(run):
        assert (run.ws.root / "config.json").is_file()
        raise MemoryError

    monkeypatch.setattr(pipeline, "_search", no_memory)
    before = tree(tmp_path)
    refused(argv_for(inputs, tmp_path / "out"), "out of memory", "--val-limit")
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_bug_is_one_line_too(tmp_path, inputs, monkeypatch):
    def bug(run):
        raise KeyError("oops")

    monkeypatch.setattr(pipeline, "_search", bug)
    before = tree(tmp_path)
    refused(argv_for(inputs, tmp_path / "out"), "internal error", "KeyError", "--debug", code=3)
    assert tree(tmp_path) == before


def test_a_run_stopped_before_its_first_evaluation_does_not_block_a_plain_rerun(tmp_path):
    record = CompileConfig(model="m", data="d", out=str(tmp_path / "out")).resume_key()
    Workspace.open(tmp_path / "out", record, resume=False, overwrite=False)  # config.json and state/, nothing else
    Workspace.prepare(tmp_path / "out", record, resume=False, overwrite=False).create()


# -- 5. bad input is called bad input -----------------------------------------------------------


def test_non_finite_pixels_are_refused_naming_the_file_and_count(tmp_path, inputs):
    with np.load(inputs["val"]) as d:
        x = d["x"][:40].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        y = d["y"][:40]
    x[0, 0, 0, :3] = np.nan
    x[1, 1, 1, 1] = np.inf
    np.savez(tmp_path / "user" / "nan.npz", x=x, y=y)
    argv = argv_for(inputs, tmp_path / "out")
    argv[argv.index("--data") + 1] = tmp_path / "user" / "nan.npz"
    before = tree(tmp_path)
    refused(argv, "nan.npz", "4 image values are not finite")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("head", [b"", b"\x80", b"PK"], ids=["random", "pickle-magic", "zip-magic"])
def test_random_bytes_are_not_called_a_pickle(tmp_path, inputs, head):
    junk = tmp_path / "user" / "junk.th"
    junk.write_bytes((head or b"\x01") + np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    argv = argv_for(inputs, tmp_path / "out")
    argv[0] = junk
    before = tree(tmp_path)
    line = refused(argv, "junk.th", warnings=None)  # torch may warn about the pickle protocol it read
    assert "--trust-pickle" not in line and "pickled Python object" not in line
    if not head:
        assert "not a PyTorch checkpoint" in line and "TorchScript" in line and "ONNX" in line
    assert tree(tmp_path) == before


def test_an_onnx_custom_operator_is_named(tmp_path, inputs):
    model = _classifier(tmp_path / "custom.onnx", helper.make_node("FancyOp", ["d"], ["e"], domain="com.example", name="fancy"),
                        after_fc=False, opsets=[helper.make_opsetid("com.example", 1)])
    before = tree(tmp_path)
    line = refused([model, "--data", inputs["val"], *TINY, "-o", tmp_path / "out"], "com.example:FancyOp")
    assert "batch size" not in line and "channels" not in line
    assert tree(tmp_path) == before


# -- 6. the rest ----------------------------------------------------------------------------------


def test_images_smaller_than_the_architecture_is_built_for_are_one_warning(tmp_path, inputs):
    with np.load(inputs["val"]) as d:
        np.savez(tmp_path / "user" / "small.npz", x=d["x"][:40, :16, :16], y=d["y"][:40])
    argv = argv_for(inputs, tmp_path / "out", "--accuracy-threshold", "100")  # stops after the baseline
    argv[argv.index("--data") + 1] = tmp_path / "user" / "small.npz"
    argv.remove("--max-accuracy-drop"), argv.remove("10")
    before = tree(tmp_path)
    refused(argv, "above the baseline", warnings=1, warned_with="built for 32x32 images but the VAL images are 16x16")
    assert tree(tmp_path) == before


def test_threads_zero_is_refused_as_profile_refuses_it(tmp_path, inputs):
    before = tree(tmp_path)
    refused(argv_for(inputs, tmp_path / "out", "--threads", "0"), "--threads must be >= 1")
    assert tree(tmp_path) == before


def test_arch_with_torchscript_is_refused(tmp_path, inputs):
    from adans_toolchain.frontend.architectures.cifar_resnet import cifar_resnet

    scripted = tmp_path / "user" / "scripted.pt"
    torch.jit.script(cifar_resnet(20).eval()).save(str(scripted))
    argv = argv_for(inputs, tmp_path / "out")
    argv[0] = scripted
    before = tree(tmp_path)
    refused(argv, "TorchScript", "drop --arch")
    assert tree(tmp_path) == before


def test_out_is_checked_before_the_model_is_loaded(tmp_path, inputs):
    out = fake_run(tmp_path / "out", inputs)
    before = tree(tmp_path)
    argv = argv_for(inputs, out)
    argv[0] = tmp_path / "missing.th"
    refused(argv, "already holds a run")
    assert tree(tmp_path) == before
