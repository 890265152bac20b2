"""Errors that are the user's to fix: the CLI prints their message, not a traceback."""
from .checkpoint import CheckpointError
from .config import ConfigError
from .engine import UnknownEngine
from .jobfiles import JobFileError


class UsageError(ValueError):
    """A bad command-line value (a phase range like 7-2, ranks 0, ...)."""


UserError = (CheckpointError, ConfigError, UnknownEngine, JobFileError, UsageError, FileNotFoundError)
