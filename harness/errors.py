"""Errors that are the user's to fix: the CLI prints their message, not a traceback."""
from harness.checkpoints.base import CheckpointError
from harness.config import ConfigError
from harness.engines.base import UnknownEngine
from harness.jobs.files import JobFileError


class UsageError(ValueError):
    """A bad command-line value (a phase range like 7-2, ranks 0, ...)."""


UserError = (CheckpointError, ConfigError, UnknownEngine, JobFileError, UsageError, FileNotFoundError)
