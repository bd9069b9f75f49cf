"""Errors meant for people: each one names the problem and where it is."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception, for a one-line message (its class name if it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else exc.__class__.__name__


class FerflowError(Exception):
    """Base class for errors the CLI reports as a one-paragraph message and a non-zero exit."""

    exit_code = 1


class ParamsError(FerflowError):
    """A value in params.yaml is missing, unknown, of the wrong type or out of range."""

    exit_code = 2


class DataError(FerflowError):
    """An input file, URL, row or image cannot be used."""


class ValidationFailed(FerflowError):
    """The data quality gate failed: too many bad rows or a dataset-level expectation failed."""


class StorageError(FerflowError):
    """An output cannot be written (read-only folder, full disk, quota); the previous output is kept."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler or ``kill``): unwinds like Ctrl-C so that runs and files are closed
    properly. A BaseException, so that ``except Exception`` blocks do not swallow it."""
