"""How every adans command reports failure: the one reporter of `adans-compile` and `adans-profile`.

Every failure is one line on stderr, `PROG: error: ...`, saying what is wrong
and what to do, and a non-zero exit code; the traceback only with --debug
(which re-raises). A user error (AdansError) exits with its own code (2,
or 3 for lowering/validation and for a model that failed unexpectedly while
being loaded, exported or analysed: the pipeline wraps those stages with
errors.failures_named, so the line names the stage, the model and the
original exception); a file the system refuses (OSError: a
permission, a full disk, a missing folder) and an operator a cost model
cannot price exit 2; anything else is a bug, said so in one line, exit 3.
Ctrl-C says how to continue (130). Python warnings are one line each,
`PROG: warning: ...`, without the source line (with --debug: as Python
prints them).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from adans_toolchain.errors import AdansError

BUG_EXIT_CODE = 3


def one_line(text: object) -> str:
    """A message as one line: its lines joined."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def run_reporting_errors(prog: str, body: Callable[[], int], *, debug: bool, on_interrupt: str) -> int:
    if debug:
        return _run(prog, body, debug=True, on_interrupt=on_interrupt)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(prog)
        return _run(prog, body, debug=False, on_interrupt=on_interrupt)


def _run(prog: str, body: Callable[[], int], *, debug: bool, on_interrupt: str) -> int:
    from cost_models import UnsupportedOperatorError

    def fail(message: str, code: int) -> int:
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        return code

    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {on_interrupt}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, AdansError):
            return fail(str(e), e.exit_code)
        if isinstance(e, OSError):
            return fail(_describe_os_error(e), 2)
        if isinstance(e, UnsupportedOperatorError):
            return fail(f"the model has an operator adans cannot cost ({e}); replace it in the model, or report it", 2)
        if isinstance(e, MemoryError):
            return fail("out of memory; use fewer images (--val-limit) or a smaller --batch-size", 2)
        return fail(
            f"internal error ({type(e).__name__}: {one_line(e) or 'no message'}); this is a bug: rerun with --debug "
            "and report the traceback", BUG_EXIT_CODE,
        )


def _describe_os_error(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e) or type(e).__name__
    advice = "check the path and its permissions" if isinstance(e, PermissionError) else "check the path and the disk"
    return f"{where}: {what}; {advice}" if where else f"{what}; {advice}"


def _one_line_warning(prog: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001 - warnings' signature
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"{prog}: warning: {one_line(message)}\n")
        except OSError:
            pass  # stderr is gone; a warning must not fail the run

    return show
