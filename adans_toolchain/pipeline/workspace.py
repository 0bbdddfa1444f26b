"""The output directory: what a run writes, and how it resumes.

Layout of OUT:
    config.json        the settings of the run (checked on --resume)
    history.jsonl      the search journal: every evaluated sample, as it goes
    state/             caches that make a resume cheap and exact:
        priorities.npz     channel priorities (ties broken identically)
        evaluations.jsonl  accuracy of every plan evaluated so far (evaluation.cache)
        boundary.json      the boundary characterisation
    model.onnx, baseline.onnx, plan.json, report.json, report.md, *.png

Final artifacts are written to a temporary name and renamed, so a failed or
killed run never leaves a half-written model or report behind, and never
overwrites the artifacts of an earlier successful run until it succeeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from adans_toolchain.errors import OutputError, SearchStateError
from adans_toolchain.fileio import atomic_write_bytes, atomic_write_text
from adans_toolchain.pipeline.config import RESUMABLE_SETTINGS

CONFIG = "config.json"
HISTORY = "history.jsonl"
STATE = "state"


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE

    @classmethod
    def open(cls, root: str | Path, config: dict, *, resume: bool, overwrite: bool) -> "Workspace":
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise OutputError(f"output {root} exists and is not a directory; choose another -o")
        existing = root.is_dir() and any(root.iterdir())
        ws = cls(root)
        if resume:
            if not (root / CONFIG).is_file():
                raise OutputError(f"nothing to resume in {root} (no {CONFIG}); run without --resume")
            ws._check_resumable(config)
        elif existing:
            if not overwrite:
                raise OutputError(
                    f"output {root} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                    "or choose another -o"
                )
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        ws.state.mkdir(exist_ok=True)
        atomic_write_text(root / CONFIG, json.dumps(config, indent=1, sort_keys=True))
        return ws

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

