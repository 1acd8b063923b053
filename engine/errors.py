"""Errors meant for a person: one line saying what, where and what to do."""


class LoradeckError(Exception):
    """An error the CLI prints as one line, without a traceback, and exits non-zero."""

    exit_code = 2


class ConfigError(LoradeckError):
    """The config file or a `--set` override is wrong."""


class DataError(LoradeckError):
    """A dataset file cannot be read or has the wrong shape."""


class ModelError(LoradeckError):
    """A model or adapter cannot be found or loaded."""


class RunError(LoradeckError):
    """A run directory is missing, not a run, or in the wrong state."""
