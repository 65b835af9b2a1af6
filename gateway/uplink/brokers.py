"""Where the uplink connects: broker URLs, TLS, and paho's log as the cause of a failure."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config import MqttSection

# CONNACK codes that mean "your credentials are wrong" (3.1.1: 4, 5; MQTT 5: 0x86, 0x87).
AUTH_CODES = {4, 5, 0x86, 0x87}


@dataclass(frozen=True, slots=True)
class Broker:
    """One broker from `uplink.mqtt.brokers`."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """`mqtt://host[:port]` or `mqtts://host[:port]`."""
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname or "localhost", parts.port or (8883 if tls else 1883), tls)


class _NamedTLSContext(ssl.SSLContext):
    """Checks the broker's certificate against `tls.server_name` instead of the URL's host.

    paho passes the URL's host to `wrap_socket`; this is the one place to change it.
    """

    server_name: str | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(*args, **kwargs)


def tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """The TLS context for `mqtts://` brokers: verification on unless `verify: false`."""
    tls = cfg.tls
    ctx = _NamedTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = tls.server_name
    if tls.ca:
        ctx.load_verify_locations(cafile=str(tls.ca))
    else:
        ctx.load_default_certs()
    if tls.cert:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class LastError(logging.Handler):
    """Keeps the last warning or error paho logged (the real cause behind a timeout)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()

    def take(self) -> str | None:
        """The last message since the previous call, and forget it."""
        message, self.message = self.message, None
        return message
