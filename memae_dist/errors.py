"""Errors meant for the person at the keyboard.

A ``UserError`` is bad input (a file, a URI, a setting): the CLI prints its message on one line
and exits non-zero without a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user; the message names the offending file, URI or setting."""


class ScratchSpaceError(UserError):
    """This machine's temporary space, not the input, failed: never a reason to skip an input."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stop) ends a command the way Ctrl-C does: its
    cleanup runs, nothing half-written stays, and the same command resumes."""
