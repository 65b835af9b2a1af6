"""structlog set-up: JSON lines for journald, console on a terminal, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger, Processor

from gateway.logthrottle import LogThrottle, ThrottleFilter

SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "bindkey", "key", "api_key"})
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class Redactor:
    """A structlog processor that masks secret keys and known secret values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # short values would mask innocent text everywhere; secrets are longer than 3 chars
        self.secrets = tuple(s for s in secrets if len(s) > 3)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key in SECRET_KEYS and value is not None:
                event[key] = "***"
            elif self.secrets and isinstance(value, str):
                text = value
                for secret in self.secrets:
                    if secret in text:
                        text = text.replace(secret, "***")
                event[key] = text
        return event


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
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        # a library's exc_info as the formatted traceback text, not `<traceback object>`
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _render_exc_info(console), Redactor(secrets), renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(LEVELS[level], logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            throttle.processor,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            Redactor(secrets),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> FilteringBoundLogger:
    """A logger bound to `bind`."""
    log: FilteringBoundLogger = structlog.get_logger().bind(**bind)
    return log
