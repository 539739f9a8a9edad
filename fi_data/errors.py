"""The two kinds of error whose message says all a user needs, defined once for the toolkit.

``run_search.py`` prints these (and the library errors listed in
``run_search.expected_errors``) as one line, ``error: <message>``, with exit status 2, and
keeps the traceback for everything else: a ``ValueError`` or ``RuntimeError`` raised anywhere
else is a bug of the toolkit, not the user's fault. ``--debug`` shows the traceback of these
too.
"""


class UserError(ValueError):
    """Bad input or settings that the user can fix: a flag's value, a file, a run folder.

    The message names the flag or the file and what was wrong. A ``ValueError``, so that
    library callers that catch ``ValueError`` keep working.
    """


class StoppedError(RuntimeError):
    """The job stopped for a reason outside the code (a child process killed, e.g. for memory):
    the message says what happened and how to resume; finished work is kept."""
