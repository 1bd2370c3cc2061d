"""Errors a user can cause and fix in chat/serve/export (exit status 2 with one message); no torch."""


class ServeError(ValueError):
    """A port in use, a bad host, a bad limit, a directory that is not a run directory, ..."""


USER_ERRORS = (ServeError,)
