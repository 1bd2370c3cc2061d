"""Errors a user can cause and fix (exit status 2 with one message); importable without torch."""


class MethodError(ValueError):
    """A method/device/precision combination that cannot run, or a bad target module name."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


USER_ERRORS = (MethodError, TrainingDiverged)
