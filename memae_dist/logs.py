"""How the product's log records look, in the command's process and in Ray's workers.

Every record passes the redaction of error lines (no AWS secret, no URL's user:password
reaches a terminal or a log file) and carries its time and level, also when it is written by
a Ray Train worker and relayed to the driver's terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from memae_dist.data.redact import redact_text

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Storage clients whose debug records hold each request's signed headers (the access key id,
# a session token): -v leaves them at INFO.
HTTP_CLIENT_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec",
                       "urllib3")
# Libraries whose debug records say nothing about a run (matplotlib's font search alone is
# hundreds of lines): -v leaves them at INFO too.
CHATTY_LOGGERS = ("matplotlib", "PIL")
# Ray's logger of ray.init, whose "View the dashboard at" line is coloured.
RAY_START_LOGGER = "ray._private.worker"
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def setup_logging(verbose: bool) -> None:
    """The command's process: its records, and how Ray relays its workers' lines."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for name in HTTP_CLIENT_LOGGERS + CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Redacting) for f in handler.filters):
            handler.addFilter(Redacting())
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        # Tune's progress table and the lines Ray relays from workers' stdout are printed: a
        # redirected log would get them in 8 KiB blocks, minutes late, or only at exit.
        sys.stdout.reconfigure(line_buffering=True)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Ray colours the "(RayTrainWorker pid=…)" prefix it puts before a worker's lines and
        # the dashboard's address it logs, terminal or not: a log file would hold escape codes.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        logging.getLogger(RAY_START_LOGGER).addFilter(Uncoloured())


def worker_logging() -> None:
    """In a Ray actor (a Train worker): the product's records in the command's format.

    Ray gives a worker's root logger a console handler that writes the bare message, so
    relayed epoch lines and warnings would reach the terminal without time or level. Ours
    writes them instead; they still reach the root's other handlers (Ray Train's worker log
    files). Not in the command's own process (debug mode: records already go its way)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    logger = logging.getLogger("memae_dist")
    if any(isinstance(h, _WorkerHandler) for h in logger.handlers):
        return
    for console in logging.getLogger().handlers:
        if isinstance(console, logging.StreamHandler) and not isinstance(
                console, logging.FileHandler):
            console.addFilter(_NotOurs())
    handler = _WorkerHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(Redacting())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _NotOurs(logging.Filter):
    """On a console that ``worker_logging``'s handler already writes the product's records to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("memae_dist")


class _WorkerHandler(logging.StreamHandler):
    """The handler ``worker_logging`` installs, told apart from others so it is installed once."""


class _Rewriting(logging.Filter):
    """Records whose text ``rewrite`` changes are given the rewritten text."""

    def rewrite(self, text: str) -> str:
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self.rewrite(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


class Redacting(_Rewriting):
    """Secrets masked."""

    def rewrite(self, text: str) -> str:
        return redact_text(text)


class Uncoloured(_Rewriting):
    """Terminal colour codes removed."""

    def rewrite(self, text: str) -> str:
        return _COLOUR.sub("", text) if "\x1b[" in text else text
