"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class GenmodelsError(Exception):
    """Base class for errors caused by the user's input (config, files, arguments)."""


class ConfigError(GenmodelsError, ValueError):
    """A config field is unknown, missing or has a value outside the allowed set."""


class DataError(GenmodelsError, ValueError):
    """A dataset or image file cannot be found, read or used as configured."""


class CheckpointError(GenmodelsError):
    """A run directory is missing, incomplete or does not match the code."""


class TrainingDiverged(GenmodelsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class KernelBuildError(GenmodelsError, RuntimeError):
    """The C++ CPU kernels cannot be compiled here (no compiler, a compile error)."""
