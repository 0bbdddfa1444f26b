"""One exception hierarchy for everything a user can cause.

The CLI prints `AdansError` subclasses as one line (what is wrong and what to
do) and exits non-zero; anything else is a bug, which the CLI says in one line
(exit 3) and shows with its traceback under --debug.
"""

from contextlib import contextmanager
from typing import Iterator


class AdansError(Exception):
    """Base of all user-facing errors."""

    exit_code = 2


class InputError(AdansError):
    """A model, data set or option the user gave is unusable."""


class ModelLoadError(InputError):
    """The model file cannot be loaded as given."""


class DataError(InputError):
    """The validation or test data cannot be used with this model."""


class ConfigError(InputError):
    """An option or a combination of options is invalid."""


class UnhandledModelError(AdansError):
    """Loading, exporting or analysing the model failed unexpectedly: adans or a library it uses does not handle it.

    Possibly a bug, so exit 3 as for one; the message keeps the original
    exception's type and text (see `failures_named`).
    """

    exit_code = 3


class OutputError(AdansError):
    """The output directory cannot be used (for example: a previous run is there)."""


class SearchStateError(AdansError):
    """A journal or resume state does not match the run asked for."""


class LoweringError(AdansError):
    """Graph surgery could not produce a model for the plan."""

    exit_code = 3


class ValidationError(AdansError):
    """The lowered model does not reproduce the substituted model numerically."""

    exit_code = 3


@contextmanager
def failures_named(doing: str, advice: str) -> Iterator[None]:
    """Turn an unexpected exception inside into an UnhandledModelError: "<doing> failed (Type: text); <advice>".

    User errors, file-system errors (OSError) and MemoryError pass through:
    the CLI's reporter already says what to do about them.
    """
    try:
        yield
    except (AdansError, OSError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - the point: whatever a library raises
        lines = str(e).strip().splitlines()
        text = lines[0] if lines else "no message"
        raise UnhandledModelError(f"{doing} failed ({type(e).__name__}: {text}); {advice}") from e
