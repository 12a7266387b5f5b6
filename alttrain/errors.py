"""User-facing errors: each carries one readable line that names the problem and its fix.

The command-line entry points catch :class:`AltTrainError`, print its message on one line and
exit non-zero without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""


class AltTrainError(Exception):
    """Base class of every error caused by the user's input rather than a bug."""


class ConfigError(AltTrainError):
    """A config key, value or combination that cannot work."""


class ParamGroupError(ConfigError):
    """Param-group patterns that match nothing, overlap, or leave trainable parameters uncovered."""


class DataError(AltTrainError):
    """A data set that is missing or unreadable."""


class CheckpointError(AltTrainError):
    """A checkpoint that is missing, corrupted, unsafe or incompatible."""


class NonFiniteError(AltTrainError):
    """A NaN/Inf loss or gradient under ``trainer.on_nan=raise``."""


class FreezeViolation(AssertionError):
    """The audit found that something idle changed during a phase."""
