"""structlog set-up: JSON lines for journald, console on a terminal, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger, Processor

from gateway.logthrottle import LogThrottle, ThrottleFilter
from gateway.redact import MASK, Masker

SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "bindkey", "key", "api_key"})
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class Redactor:
    """Structlog processors that keep secrets out of log lines.

    `keys` (before rendering) masks the values of secret keys (`password=...`). `rendered`
    (the last processor, after the renderer) masks every known secret value in the line as
    written, in each form it takes there: raw, in a repr, JSON-escaped, inside an
    exception's message or a formatted traceback.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(secrets)
        self.mask = Masker(self.secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too, from the next line on (also in loggers bound earlier)."""
        more = self.secrets | frozenset(secrets)
        if more != self.secrets:
            self.secrets = more
            self.mask = Masker(more)

    def keys(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
             ) -> MutableMapping[str, Any]:
        """Mask the values of keys that name a secret."""
        for key, value in event.items():
            if key in SECRET_KEYS and value is not None:
                event[key] = MASK
        return event

    def rendered(self, _logger: Any, _name: str, line: Any) -> Any:
        """Mask secret values in the rendered line (str or bytes)."""
        if not self.mask:
            return line
        if isinstance(line, bytes):
            return self.mask(line.decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape")
        if isinstance(line, str):
            return self.mask(line)
        return line

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        """Before rendering: secret keys, and secret values in string values (for
        processors that are not followed by `rendered`)."""
        self.keys(logger, name, event)
        if self.mask:
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = self.mask(value)
        return event


# One instance for the process: a bound logger keeps the processors it was bound with, so
# secrets learnt on a reload must reach the object those processors already hold.
_REDACTOR = Redactor()


def add_secrets(secrets: Iterable[str]) -> None:
    """Mask these values in every log line from now on, in every logger."""
    _REDACTOR.add(secrets)


def _render_exc_info(console: bool) -> Processor:
    """exc_info as text for JSON lines; the console renderer prints tracebacks itself."""
    if console:
        return lambda _logger, _name, event: event
    return structlog.processors.format_exc_info


def configure(level: str = "info", fmt: str = "auto", secrets: Iterable[str] = ()) -> None:
    """Configure structlog for the process (logging is process-wide by nature)."""
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if console
                     else structlog.processors.JSONRenderer())
    # Libraries (aiomqtt, paho, pymodbus) log through the standard library: render their
    # records with the same processors, so journald sees JSON lines only.
    throttle = LogThrottle()  # repeated lines: a burst per kind and minute, then counted
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ThrottleFilter(throttle))
    redactor = _REDACTOR
    redactor.add(secrets)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        # a library's exc_info as the formatted traceback text, not `<traceback object>`
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    redactor.keys, _render_exc_info(console), renderer,
                    redactor.rendered]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(LEVELS[level], logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            throttle.processor,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor.keys,
            structlog.processors.format_exc_info,
            renderer,
            redactor.rendered,  # after formatting: tracebacks and reprs are text by now
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> FilteringBoundLogger:
    """A logger bound to `bind`."""
    log: FilteringBoundLogger = structlog.get_logger().bind(**bind)
    return log
