"""Errors a user causes and can fix: the CLI prints their message and exits with status 2.

Every such error derives from `UserError`; the CLI catches only that class, so a new command needs no
new `except` clause. The subclasses exist to say which kind of input was wrong (a config key, a data
record, a model reference, an output directory, ...) and carry no behaviour. Anything else that
escapes a command is a bug in tunelab and keeps its traceback. Importable without torch.

A message names the file, line or key at fault and what was expected there.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused action; the message says what and how to fix it (exit status 2)."""


class ConfigError(UserError, ValueError):
    """A config file, an override or a spec (experiment, sweep, task) that cannot be used; names the key."""


class DataError(UserError, ValueError):
    """Bad input data: the message names the file and line (or record) and what was expected."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model reference that is not a built-in, a model directory or a reachable hub id."""


class OutputExistsError(UserError, FileExistsError):
    """An output that tunelab will not replace or delete (a user's file, a non-empty directory, ...)."""


class MethodError(UserError, ValueError):
    """A method/device/precision combination that cannot run, or a target module that does not exist."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ServeError(UserError, ValueError):
    """A port in use, a bad host or limit, a directory that is not a run directory, ..."""
