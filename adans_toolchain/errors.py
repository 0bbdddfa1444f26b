"""One exception hierarchy for everything a user can cause.

The CLI prints `AdansError` subclasses as one line (what is wrong and what to
do) and exits non-zero; anything else is a bug, which the CLI says in one line
(exit 3) and shows with its traceback under --debug.
"""


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
