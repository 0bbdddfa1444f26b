"""The search journal: JSON lines, append-only, resumable after a crash.

Layout:

    {"type": "header", "version": 1, "dim": …, "sampler": …, …}
    {"type": "eval", "iteration": 0, "x": […], "f": …, "info": {…}}   × batch
    {"type": "iteration", "iteration": 0, "alpha": …, …}             commit

A whole iteration (its eval lines and its commit line) is written with one
write, then flushed and fsync'ed, before the next batch is proposed. A crash
can therefore leave at most one partial line, at the end, and eval lines
without their commit line — both are dropped on resume (with a warning) and
the iteration is recomputed, deterministically, from the committed history.
Anything malformed before the last line cannot come from a crash, so it is an
error. Floats are written with repr (json's default), which round-trips
exactly; never round them, or a resumed run would diverge.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from adans_toolchain.errors import SearchStateError
from adans_toolchain.fileio import atomic_write_chunks
from adans_toolchain.search.types import Evaluation, IterationSummary

VERSION = 1
HEADER_KEYS = (
    "version",
    "dim",
    "sampler",
    "sampler_options",
    "samples",
    "seed",
    "lower",
    "upper",
    "alpha_max",
    "init_digest",
)


class _Malformed(Exception):
    """A line that is not a well-formed record (internal to parsing)."""


@dataclass(frozen=True)
class JournalContents:
    """The committed part of a journal, and whether anything had to be dropped."""

    header: dict[str, Any] | None
    evaluations: list[Evaluation]
    summaries: list[IterationSummary]
    rewrite: bool  # something was dropped, or the file lacks its final newline


def make_header(**settings: Any) -> dict[str, Any]:
    """The header record; values are normalised through JSON so they compare
    equal to the same header read back from disk."""
    missing = set(HEADER_KEYS) - set(settings) - {"version"}
    if missing:
        raise ValueError(f"header is missing {sorted(missing)}")
    header = {"type": "header", "version": VERSION, **settings}
    return json.loads(json.dumps(header))


def check_header(found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Raise SearchStateError naming the first setting that differs."""
    for key in HEADER_KEYS:
        if found.get(key) != expected.get(key):
            what = "the initial samples (init)" if key == "init_digest" else key
            raise SearchStateError(
                f"journal {path} was written with {key}={found.get(key)!r} but this run has "
                f"{key}={expected.get(key)!r}: start a fresh journal or pass the same settings "
                f"(differs: {what})"
            )


def eval_record(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "type": "eval",
        "iteration": evaluation.iteration,
        "x": evaluation.x.tolist(),
        "f": evaluation.f,
        "info": evaluation.info,
    }


def summary_record(summary: IterationSummary) -> dict[str, Any]:
    return {"type": "iteration", **asdict(summary)}


def iteration_text(evaluations: Iterable[Evaluation], summary: IterationSummary) -> str:
    """One iteration's lines, ready for a single write."""
    records = [eval_record(e) for e in evaluations] + [summary_record(summary)]
    return "".join(json.dumps(r) + "\n" for r in records)


def write_new(path: Path, header: dict[str, Any], chunks: Iterable[str] = ()) -> None:
    """Atomically (re)write the journal: the header line, then the given lines."""
    lines = (text.encode("utf-8") for text in (json.dumps(header) + "\n", *chunks))
    atomic_write_chunks(path, lines)


def open_for_append(path: Path) -> BinaryIO:
    """Unbuffered binary handle: `append` then reaches the file in one write call."""
    return open(path, "ab", buffering=0)


def append(handle: BinaryIO, text: str) -> None:
    """Durably append one iteration: one write (continued only if the OS
    writes part of it), then fsync, before the caller proposes the next batch."""
    data = memoryview(text.encode("utf-8"))
    while data:
        written = handle.write(data)
        data = data[written:]
    os.fsync(handle.fileno())


# ---------------------------------------------------------------- reading


def _number(value: Any) -> float:
    # bool is an int subclass; a JSON true where a number belongs is corruption.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"expected an integer, got {value!r}")
    return value


def _parse(line: str, dim: int | None) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise _Malformed(f"invalid JSON ({e.msg})") from e
    if not isinstance(record, dict):
        raise _Malformed("not a JSON object")
    kind = record.get("type")
    try:
        if kind == "header":
            missing = [k for k in HEADER_KEYS if k not in record]
            if missing:
                raise _Malformed(f"header lacks {missing}")
        elif kind == "eval":
            _integer(record["iteration"])
            _number(record["f"])
            x = record["x"]
            if not isinstance(x, list) or (dim is not None and len(x) != dim):
                raise _Malformed(f"x is not a list of {dim} numbers")
            for value in x:
                _number(value)
            if not isinstance(record["info"], dict):
                raise _Malformed("info is not an object")
        elif kind == "iteration":
            for name in IterationSummary.field_names():
                if name == "e_range" and name not in record:
                    continue  # journals written before e_range existed
                value = record[name]
                if name in ("iteration", "n_good", "n_evaluations"):
                    _integer(value)
                elif not (name in ("e_avg", "e_range") and value is None):
                    _number(value)
        else:
            raise _Malformed(f"unknown record type {kind!r}")
    except KeyError as e:
        raise _Malformed(f"{kind} record lacks {e.args[0]!r}") from e
    return record


def _summary(record: dict[str, Any]) -> IterationSummary:
    return IterationSummary(
        iteration=record["iteration"],
        alpha=float(record["alpha"]),
        n_good=record["n_good"],
        mean_good_f=float(record["mean_good_f"]),
        best_f=float(record["best_f"]),
        e_avg=None if record["e_avg"] is None else float(record["e_avg"]),
        n_evaluations=record["n_evaluations"],
        elapsed_s=float(record["elapsed_s"]),
        e_range=None if record.get("e_range") is None else float(record["e_range"]),
    )


def load(path: Path) -> JournalContents:
    """Parse a journal, keeping committed iterations only (see module docstring)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline after the last record
    # A last line without its newline cannot be appended to safely.
    rewrite = text != "" and not text.endswith("\n")
    header: dict[str, Any] | None = None
    evaluations: list[Evaluation] = []
    summaries: list[IterationSummary] = []
    pending: list[Evaluation] = []
    dropped: list[str] = []  # what a crash cost, for one warning

    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        try:
            record = _parse(line, None if header is None else header["dim"])
            _check_order(record, header, pending, summaries, evaluations)
        except _Malformed as e:
            if last:
                dropped.append(f"its last line, which was cut short ({e})")
                break
            raise SearchStateError(
                f"journal {path} is corrupt at line {number} of {len(lines)} ({e}); "
                "only the last line can be damaged by a crash: start a fresh journal"
            ) from e
        if record["type"] == "header":
            header = record
        elif record["type"] == "eval":
            pending.append(
                Evaluation(x=record["x"], f=record["f"], iteration=record["iteration"], info=record["info"])
            )
        else:
            evaluations.extend(pending)
            pending = []
            summaries.append(_summary(record))

    if pending:
        dropped.append(f"{len(pending)} evaluations of iteration {pending[0].iteration}, which was never committed")
    if dropped:
        warnings.warn(
            f"journal {path}: dropping {' and '.join(dropped)}; "
            f"iteration {len(summaries)} will be recomputed",
            stacklevel=3,
        )
        rewrite = True
    return JournalContents(header, evaluations, summaries, rewrite)


def _check_order(
    record: dict[str, Any],
    header: dict[str, Any] | None,
    pending: list[Evaluation],
    summaries: list[IterationSummary],
    evaluations: list[Evaluation],
) -> None:
    """Records must come as header, then (evals, commit) per iteration, in order."""
    kind = record["type"]
    if (header is None) != (kind == "header"):
        raise _Malformed("the header must be the first line, and only the first")
    expected_iteration = len(summaries)
    if kind == "eval" and record["iteration"] != expected_iteration:
        raise _Malformed(f"eval of iteration {record['iteration']} where {expected_iteration} was expected")
    if kind == "iteration":
        if record["iteration"] != expected_iteration:
            raise _Malformed(f"commit of iteration {record['iteration']} where {expected_iteration} was expected")
        if not pending or record["n_evaluations"] != len(evaluations) + len(pending):
            raise _Malformed("commit line does not match the evaluations before it")


def read_journal(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Evaluation], list[IterationSummary]]:
    """(header, evaluations, iteration summaries) of a journal's committed iterations.

    A damaged last line is dropped with a warning, as on resume; the file is
    not modified.
    """
    contents = load(Path(path))
    if contents.header is None:
        raise SearchStateError(f"journal {path} has no header: it is empty or was cut short while being created")
    return contents.header, contents.evaluations, contents.summaries
