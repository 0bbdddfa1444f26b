"""The output directory: what a run writes, and how it resumes.

Layout of OUT:
    config.json        the settings of the run (checked on --resume); it marks the directory as a run
    inputs.json        sha256 fingerprints of the model and data files (compared first on --resume)
    history.jsonl      the search journal: every evaluated sample, as it goes
    state/             caches that make a resume cheap and exact:
        priorities.npz     channel priorities (ties broken identically)
        evaluations.jsonl  accuracy of every plan evaluated so far (evaluation.cache)
        boundary.json      the boundary characterisation
    model.onnx, baseline.onnx, plan.json, report.json, report.md, *.png
    rounds/<k>/        with --rounds R > 1, round k's own run directory (history.jsonl, state/,
                       model.onnx, plan.json, round_plan.json, report.*; model_unfolded.onnx, the
                       fine-tuned model the next round starts from; round.json once it finished);
                       the files above in OUT itself are then the last round's (pipeline/rounds.py)
    budgets/           with --budgets, a folder per member, budgets/<B>/ (its search phase's history.jsonl,
                       model.onnx, plan.json, report.*), phases.json, family.json, family.md, pareto.png;
                       the files above in OUT itself are then the largest budget's (pipeline/family.py)

Final artifacts are written to a temporary name and renamed, so a failed or
killed run never leaves a half-written model or report behind. --overwrite
replaces only a directory that holds an adans run (its config.json), and only
once the new run succeeded: the new run is built in the sibling
`.OUT.adans-new-PID` and swapped in at the end. A run that fails before it
stored its first evaluation removes what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from adans_toolchain.errors import OutputError, SearchStateError
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text, fsync_folder, unwritable_reason
from adans_toolchain.pipeline.config import RESUMABLE_SETTINGS

CONFIG = "config.json"
HISTORY = "history.jsonl"
STATE = "state"
ROUNDS = "rounds"
ROUND_RECORD = "round.json"


# Every config.json a Workspace writes is CompileConfig.resume_key(): these keys mark it as adans'.
RUN_KEYS = ("model", "data", "out", "methods", "seed")
INPUTS = "inputs.json"
# A run's inputs, by setting name, as the messages call them.
INPUT_SETTINGS = {"model": "the model", "data": "VAL (--data)", "test_data": "TEST (--test-data)",
                  "calibration_data": "the calibration images (--calibration-data)", "train_data": "TRAIN (--train-data)"}
_NEW, _OLD = "adans-new", "adans-old"  # siblings .OUT.adans-new-PID (an --overwrite being built), .OUT.adans-old-PID


def is_run(root: Path) -> bool:
    """Whether `root` holds an adans run: a config.json as a Workspace writes it."""
    config = Path(root) / CONFIG
    if not config.is_file():
        return False
    try:
        record = json.loads(config.read_text())
    except (OSError, ValueError):
        # A damaged record in a directory with the run's own layout is still a run.
        return (Path(root) / STATE).is_dir()
    return isinstance(record, dict) and all(k in record for k in RUN_KEYS)


def _is_unstarted(root: Path) -> bool:
    """A run that stopped before its first evaluation was stored: it holds nothing a rerun would not recompute."""
    names = {p.name for p in root.iterdir()}
    if not names <= {CONFIG, INPUTS, STATE, ROUNDS}:
        return False
    # Evaluations are stored as JSON lines (evaluation.cache); the rest of state/ is derived before the first one.
    state = root / STATE
    if state.is_dir() and any(p.stat().st_size for p in state.glob("*.jsonl")):
        return False
    # --rounds: each round is a run directory of its own (without config.json), unstarted alike.
    rounds = root / ROUNDS
    return not rounds.is_dir() or all(r.is_dir() and _is_unstarted(r) for r in rounds.iterdir())


def fingerprint(path: str | Path) -> str | None:
    """What a resume compares to know an input is the one the run started with; None if the path is not there.

    A file: the sha256 of its content. A directory (an ImageFolder): the sha256 of
    its sorted file list with each file's size and modification time, not of every
    image's bytes, which would cost as much as loading them; an edited, added or
    removed image changes it (a copy that does not keep modification times does too).
    """
    path = Path(path).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            digest.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "listing-sha256:" + digest.hexdigest()
    return None


def fingerprint_inputs(paths: dict[str, str | None]) -> dict[str, dict]:
    """{setting: {"path", "fingerprint"}} for every input given (INPUT_SETTINGS)."""
    return {name: {"path": str(p), "fingerprint": fingerprint(p)} for name, p in paths.items() if p}


class Workspace:
    """OUT, checked before anything runs (`prepare`), written from `create` on, and swapped in by `commit`.

    `root` is where this run writes; it is OUT itself, except for an --overwrite of
    an earlier run: then the new run is built in the sibling `.OUT.adans-new-PID`
    and `commit` swaps it in once it succeeded, so a failed or killed --overwrite
    leaves the earlier run as it was.
    """

    def __init__(self, root: Path, final: Path | None = None) -> None:
        self.root = Path(root)
        self.state = self.root / STATE
        self.final = self.root if final is None else Path(final)
        self._config: dict | None = None
        self._inputs: dict | None = None
        self._resume = False
        self._replace_unstarted = False
        self._existed = False

    @classmethod
    def open(cls, root: str | Path, config: dict, *, resume: bool, overwrite: bool, inputs: dict | None = None) -> "Workspace":
        """`prepare` and `create` at once."""
        ws = cls.prepare(root, config, resume=resume, overwrite=overwrite, inputs=inputs)
        ws.create()
        return ws

    @classmethod
    def prepare(cls, root: str | Path, config: dict, *, resume: bool, overwrite: bool, inputs: dict | None = None) -> "Workspace":
        """Check that OUT can take this run, before any work; writes nothing.

        inputs: `fingerprint_inputs` of the run's model and data, recorded in OUT and, on
        --resume, compared with the record first: a resume of changed inputs is refused.
        """
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise OutputError(f"output {root} exists and is not a directory; choose another -o")
        _recover_interrupted_swap(root)
        if resume:
            if not (root / CONFIG).is_file():
                raise OutputError(f"nothing to resume in {root} (no {CONFIG}); run without --resume")
            ws = cls(root)
            ws._check_inputs(inputs or {})
            ws._check_resumable(config)
            _check_writable(root)
            ws._resume = True
        elif root.is_dir() and any(root.iterdir()):
            if not is_run(root):
                raise OutputError(
                    f"output {root} is not empty and holds no adans run (no {CONFIG} written by adans-compile); "
                    "adans never deletes it, not even with --overwrite: choose a new or empty -o"
                )
            if _is_unstarted(root):
                # Stopped before its first evaluation was stored: nothing in it is worth keeping.
                ws = cls(root)
                ws._replace_unstarted = True
                _check_writable(root)
            elif not overwrite:
                raise OutputError(
                    f"output {root} already holds a run; pass --resume to continue it, --overwrite to replace it "
                    "(once the new run succeeds), or choose another -o"
                )
            else:
                ws = cls(root.parent / f".{root.name}.{_NEW}-{os.getpid()}", final=root)
                _check_writable(root.parent)
        else:
            ws = cls(root)
            ws._existed = root.is_dir()
            _check_writable(_nearest_existing(root))
        ws._config, ws._inputs = config, inputs
        return ws

    def create(self) -> None:
        """Write the run's record (config.json, inputs.json) and its state folder."""
        if self._replace_unstarted:
            shutil.rmtree(self.root)
        if self.root != self.final and self.root.exists():
            shutil.rmtree(self.root)  # left by an earlier process with this PID
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(exist_ok=True)
        if self._inputs is not None:
            atomic_write_text(self.root / INPUTS, json.dumps(self._inputs, indent=1, sort_keys=True))
        if self._config is not None:
            atomic_write_text(self.root / CONFIG, json.dumps(self._config, indent=1, sort_keys=True))

    def abandon(self) -> None:
        """After a failure: drop what this run wrote unless it is worth resuming.

        A resumed run and a run that stored evaluations stay (continue with --resume);
        an --overwrite build is removed (the earlier run is untouched); a fresh run that
        stored no evaluation is removed, so a plain rerun starts over.
        """
        if self._resume or not self.root.is_dir():
            return
        if self.root != self.final:
            shutil.rmtree(self.root, ignore_errors=True)
        elif _is_unstarted(self.root):
            if self._existed:
                for p in self.root.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    def commit(self) -> None:
        """The run succeeded: an --overwrite build replaces the earlier run (rename it away, rename in, delete it)."""
        if self.root == self.final:
            return
        old = self.final.parent / f".{self.final.name}.{_OLD}-{os.getpid()}"
        if not self.final.exists():  # the earlier run was moved away meanwhile: nothing to keep
            os.rename(self.root, self.final)
            self.root, self.state = self.final, self.final / STATE
            return
        os.rename(self.final, old)
        # Killed here, OUT is missing and the earlier run is `old`: the next prepare() renames it back.
        os.rename(self.root, self.final)
        fsync_folder(self.final.parent)
        shutil.rmtree(old, ignore_errors=True)
        self.root, self.state = self.final, self.final / STATE

    def _check_inputs(self, inputs: dict) -> None:
        """Refuse a resume whose model or data changed since the run started (compared before anything is written)."""
        path = self.root / INPUTS
        if not path.is_file():
            return  # a run from before inputs were recorded: they cannot be checked
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SearchStateError(f"cannot read {path} ({e}); start a fresh run with --overwrite") from e
        for name, now in inputs.items():
            before = previous.get(name)
            if not before or before.get("path") != now["path"] or None in (before.get("fingerprint"), now["fingerprint"]):
                continue  # another path is a change of settings, compared with the settings
            if before["fingerprint"] != now["fingerprint"]:
                what = "file list, sizes or modification times" if now["fingerprint"].startswith("listing") else "content (sha256)"
                raise SearchStateError(
                    f"cannot resume: {INPUT_SETTINGS.get(name, name)} {now['path']} changed since the run started "
                    f"(its {what} differs), and the run's cached results were computed on the old one; restore it, "
                    "or start a fresh run with --overwrite"
                )

    def _check_resumable(self, config: dict) -> None:
        try:
            previous = json.loads((self.root / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SearchStateError(f"cannot read {self.root / CONFIG} ({e}); start a fresh run with --overwrite") from e
        for key in sorted(set(previous) | set(config)):
            if key in RESUMABLE_SETTINGS:  # marked `resumable` in pipeline/config.py
                continue
            if previous.get(key) != config.get(key):
                raise SearchStateError(
                    f"cannot resume: '{key}' was {previous.get(key)!r} and is now {config.get(key)!r}; "
                    "give the same settings, or start a fresh run with --overwrite"
                )

    # -- rounds (--rounds) -------------------------------------------------
    def round(self, k: int) -> "Workspace":
        """Round k's own run directory, OUT/rounds/<k>/: its history, state and results; `create` makes it."""
        return Workspace(self.root / ROUNDS / str(k))

    def round_record(self) -> dict | None:
        """What a finished round recorded (`finish_round`), or None: the round has not finished."""
        path = self.root / ROUND_RECORD
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SearchStateError(f"cannot read {path} ({e}); delete it to run the round again") from e

    def finish_round(self, record: dict) -> None:
        """Mark this round finished (written last, atomically): a resume skips it and starts from its model."""
        atomic_write_text(self.root / ROUND_RECORD, json.dumps(record, indent=1))

    # -- paths -------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.root / HISTORY

    def path(self, name: str) -> Path:
        return self.root / name

    # -- cached state ------------------------------------------------------
    def load_array_dict(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.state / name
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_array_dict(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.state / name, buffer.getvalue())

    def save_json(self, name: str, value: Any) -> None:
        atomic_write_text(self.state / name, json.dumps(value, indent=1))



def _nearest_existing(path: Path) -> Path:
    for folder in (path, *path.parents):
        if folder.exists():
            return folder
    return Path(".")


def _check_writable(folder: Path) -> None:
    reason = unwritable_reason(folder)
    if reason == "not a directory":
        raise OutputError(f"cannot create the output under {folder}: it is not a directory; choose another -o")
    if reason is not None:
        raise OutputError(f"cannot write to {folder} ({reason}); choose an -o you can write to")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _recover_interrupted_swap(root: Path) -> None:
    """Clean up after an --overwrite that was killed (its process is gone).

    `.OUT.adans-new-PID` is a build that never finished: removed. `.OUT.adans-old-PID`
    is the earlier run: renamed back if it was killed mid-swap (OUT missing), else
    (the swap finished) removed.
    """
    parent = root.parent
    if not parent.is_dir():
        return
    prefix = f".{root.name}."
    for sibling in parent.iterdir():
        kind, _, pid = sibling.name.removeprefix(prefix).rpartition("-")
        if not sibling.name.startswith(prefix) or kind not in (_NEW, _OLD) or not pid.isdigit() or not sibling.is_dir():
            continue
        if _pid_alive(int(pid)):
            continue
        if kind == _OLD and not root.exists():
            os.rename(sibling, root)
        elif kind == _OLD or not any(sibling.iterdir()) or is_run(sibling):
            shutil.rmtree(sibling, ignore_errors=True)
