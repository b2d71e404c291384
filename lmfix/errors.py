"""One exception type for every user-facing failure.

The CLI turns an :class:`LmfixError` into a one-line message and exit code 2;
library callers can catch it. Messages say what went wrong *and* what to do.
"""


class LmfixError(Exception):
    """A failure caused by the user's input or environment, with a fix in its message."""


class CorpusError(LmfixError):
    """The corpus could not be found, verified, read or prepared."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), to quote in a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
