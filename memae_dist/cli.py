"""``memae-dist``: the command line. Thin: parse, call the library, print.

User errors (bad files, URIs, settings) end with one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import re
import signal
import sys
import threading

from memae_dist.data.redact import redact_text
from memae_dist.errors import Terminated, UserError
from memae_dist.logs import setup_logging

# Verb modules under memae_dist.commands, in the order `--help` lists them.
COMMANDS = ("demo", "prepare", "data", "config", "train", "tune", "evaluate", "score", "events",
            "report", "export", "doctor")

# Verbs whose rerun picks up where an interrupted run stopped (imports skip finished videos,
# training and sweeps restore their checkpoints); the others start over.
RESUMABLE = frozenset({"demo", "prepare", "train", "tune"})

# Ray Data's loggers that print an error raised in a read task or actor, with its stack.
RAY_DATA_ERROR_LOGGERS = ("ray.data.exceptions",
                          "ray.data._internal.execution.streaming_executor_state")
# How a UserError ends the traceback text Ray keeps of an error raised in a remote task.
_USER_ERROR_LINE = re.compile(r"^memae_dist\.errors\.UserError: (.+)$", re.MULTILINE)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line too, pointing at ``--help`` instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="memae-dist",
        description="Distributed MemAE training, sweeps and scoring for video anomaly detection",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"memae_dist.commands.{name}").register(sub)
    parser.set_defaults(verbs=sub.choices)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but a stray argument points at the verb's ``--help``, not the top's."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.verbs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    _refuse_empty_values(parser, args)
    return args


def _refuse_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An unset shell variable gives "": as a path that is the working folder (``--dst ""``
    would import into it), and never what was meant for any flag."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._SubParsersAction):
            _refuse_empty_values(action.choices[value], args)
        elif value != action.default and any(
                isinstance(v, str) and not v.strip()
                for v in (value if isinstance(value, list) else [value])):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            parser.error(f"argument {name}: must not be empty")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)  # half a second of imports: a Ctrl-C there is a stop as well
    except KeyboardInterrupt:
        print("memae-dist: interrupted", file=sys.stderr)
        return 130
    setup_logging(args.verbose)
    from memae_dist.data.endpoint import enable_endpoint_probe

    enable_endpoint_probe()
    # Ray Data logs an error raised in a read task or actor with its stack (as a possible Ray
    # bug, unless an actor raised it); when it is ours, the one line below says it all.
    for name in RAY_DATA_ERROR_LOGGERS:
        logging.getLogger(name).addFilter(_not_while_a_user_error_propagates)
    global _SIGTERM_SEEN
    _SIGTERM_SEEN = False
    previous = signal.signal(signal.SIGTERM, _terminated)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_stop_lost_in_a_finalizer, previous_hook)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a pipe's reader that left is found here, not at exit
        return code
    except KeyboardInterrupt as exc:
        # Ray may re-raise the interruption as its own (Train turns it into a plain one).
        term = isinstance(exc, Terminated) or _SIGTERM_SEEN
        what, code = ("terminated", 143) if term else ("interrupted", 130)
        hint = "; rerun the same command to resume" if args.command in RESUMABLE else ""
        print(f"memae-dist: {what}{hint}", file=sys.stderr)
        from memae_dist.runtime import local_ray_gone

        if local_ray_gone():  # our cleanup has run; Ray's at exit would hang, then abort
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except BrokenPipeError:
        # Whoever read our output left (`| head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        user = find_user_error(exc)
        if user is None:
            raise
        # One line: Ray Data appends its retry advice to the message of an error it relays.
        # Redacted: a message may echo what the user typed, an endpoint's password included.
        print(f"memae-dist: error: {redact_text(str(user).splitlines()[0])}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


_SIGTERM_SEEN = False


def _terminated(signum, frame) -> None:
    global _SIGTERM_SEEN
    if _SIGTERM_SEEN:
        # `timeout` and CI runners signal the command, then its whole group: the second one
        # must not cut the first one's cleanup short (or land in main's `finally`).
        return
    _SIGTERM_SEEN = True
    raise Terminated


def _stop_lost_in_a_finalizer(fallback, unraisable) -> None:
    """A stop raised while Python runs a finalizer or weakref callback (a garbage collection
    can start anywhere) is printed and dropped there, and the command would run on to exit 0:
    it is sent again, to land in the command's own code."""
    global _SIGTERM_SEEN
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        fallback(unraisable)
        return
    signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
    if signum == signal.SIGTERM:
        _SIGTERM_SEEN = False
    # From another thread: sent from here it would be handled inside this finalizer again.
    threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()


def _not_while_a_user_error_propagates(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return find_user_error(exc) is None


def find_user_error(exc: BaseException | None) -> UserError | None:
    """Ray wraps errors raised on workers (Train V2 keeps them per rank in ``worker_failures``,
    the controller's in ``controller_failure``); dig out a ``UserError`` if one is there.

    A ``RayTaskError(UserError)`` is a UserError whose message is the whole remote traceback:
    its ``cause`` holds the original. Ray Data's actors wrap a UDF's error in a
    ``UserCodeException`` that keeps only the traceback's text: the error is read from it."""
    seen, todo, texts = set(), [exc], []
    while todo:
        exc = todo.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(exc, UserError) and not isinstance(cause, UserError):
            return exc
        texts.append(str(exc))
        todo += [cause, exc.__cause__, exc.__context__, getattr(exc, "controller_failure", None)]
        todo += list((getattr(exc, "worker_failures", None) or {}).values())
    for text in texts:
        found = list(_USER_ERROR_LINE.finditer(text))
        # Only when it ended the remote traceback: not one handled on the way to another error.
        if found and "Traceback (most recent call last)" not in text[found[-1].end():]:
            return UserError(found[-1].group(1))
    return None

if __name__ == "__main__":
    sys.exit(main())
