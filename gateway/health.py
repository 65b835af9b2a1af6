"""One small HTTP server: /metrics (Prometheus), /healthz (loop alive), /readyz (ready)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from structlog.typing import FilteringBoundLogger

from gateway.metrics import Metrics

MAX_LAG = 5.0
"""/healthz fails when the event loop ran its heartbeat later than this."""


class Heartbeat:
    """Measures how late the event loop runs a periodic wake-up."""

    def __init__(self, metrics: Metrics, period: float = 1.0) -> None:
        self.metrics = metrics
        self.period = period
        self.lag = 0.0
        self.last = time.monotonic()

    async def run(self) -> None:
        """Sleep `period`, record lateness, forever."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lag = max(0.0, loop.time() - expected)
            self.last = time.monotonic()
            self.metrics.loop_lag.set(self.lag)

    def healthy(self) -> bool:
        """The loop ran its heartbeat recently and not too late."""
        return self.lag < MAX_LAG and time.monotonic() - self.last < self.period + MAX_LAG


class HttpServer:
    """Serves GET requests on `listen`; everything runs on the agent's event loop.

    Writing this by hand keeps it on the event loop: if the loop blocks, /healthz stops
    answering, which is exactly what a liveness probe should see. prometheus_client's own
    server would answer from a thread even with the loop stuck.
    """

    def __init__(self, listen: str, metrics: Metrics, heartbeat: Heartbeat,
                 ready: Callable[[], tuple[bool, dict[str, Any]]],
                 log: FilteringBoundLogger) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.ready = ready
        self.log = log
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the socket (so readiness can be signalled only once it is up)."""
        self.server = await asyncio.start_server(self._handle, self.host, self.port,
                                                 reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.log.info("metrics server listening", url=f"http://{self.host}:{self.port}/metrics")

    async def serve(self) -> None:
        """Serve until cancelled."""
        assert self.server is not None
        async with self.server:
            await self.server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    if len(line) > 8192:
                        break
                parts = request.decode("latin-1").split()
                method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
                status, ctype, body = self._route(method, target.split("?")[0])
                head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
                writer.write(head.encode() + (body if method != "HEAD" else b""))
                await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            ok = self.heartbeat.healthy()
            doc = {"status": "ok" if ok else "unhealthy",
                   "loop_lag_seconds": round(self.heartbeat.lag, 4)}
            return ("200 OK" if ok else "503 Service Unavailable", "application/json",
                    json.dumps(doc).encode() + b"\n")
        if path == "/readyz":
            ok, doc = self.ready()
            doc = {"status": "ready" if ok else "not ready", **doc}
            return ("200 OK" if ok else "503 Service Unavailable", "application/json",
                    json.dumps(doc).encode() + b"\n")
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
