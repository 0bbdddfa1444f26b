"""How every adans command reports failure.

A user error (AdansError) is one line on stderr, `PROG: error: ...`, and a
non-zero exit code; its traceback only with --debug. Ctrl-C says how to
continue. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from adans_toolchain.errors import AdansError


def run_reporting_errors(prog: str, body: Callable[[], int], *, debug: bool, on_interrupt: str) -> int:
    try:
        return body()
    except AdansError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {on_interrupt}", file=sys.stderr)
        return 130
