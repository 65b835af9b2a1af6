"""One small HTTP server: /metrics (Prometheus), /healthz (loop alive), /readyz (ready)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
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


MAX_CONNECTIONS = 8
"""HTTP connections served at once. A scrape or probe needs one; further callers wait in
the kernel's accept queue (`BACKLOG`), holding none of the agent's file descriptors."""

BACKLOG = 16

FD_RESERVE = 64
"""Descriptors kept free for the uplink, the devices and SQLite: no HTTP connection is
accepted while fewer than this (or a quarter of RLIMIT_NOFILE) are left."""

REQUEST_TIMEOUT = 5.0
"""A request line and headers must arrive within this (an idle connection is closed)."""

MAX_LINE = 8192
"""Longest request line (414 beyond) or header line (431 beyond)."""

MAX_HEADERS = 100
"""Most header lines (431 beyond)."""

_LINGER_BYTES = 1 << 20


def spare_descriptors() -> int | None:
    """Descriptors this process may still open beyond its reserve (None: cannot tell).

    The reserve is `FD_RESERVE`, or a quarter of a lower limit so a small `ulimit -n`
    still leaves the metrics server room.
    """
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - used - min(FD_RESERVE, soft // 4)


class _TooLarge(Exception):
    """A request line or header block over the limits: answered with `status`."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class HttpServer:
    """Serves GET requests on `listen`; everything runs on the agent's event loop.

    Writing this by hand keeps it on the event loop: if the loop blocks, /healthz stops
    answering, which is exactly what a liveness probe should see. prometheus_client's own
    server would answer from a thread even with the loop stuck.

    The accept loop is ours too (not `asyncio.start_server`): it accepts only while fewer
    than `MAX_CONNECTIONS` are open and `FD_RESERVE` descriptors are left, so a flood of
    connections can never take the descriptors the uplink needs to reconnect.
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
        self.sockets: list[socket.socket] = []
        self._short = False

    async def start(self) -> None:
        """Bind the socket (so readiness can be signalled only once it is up)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        # every address of the name, as asyncio.start_server does ("localhost": ::1 and
        # 127.0.0.1); an explicit port 0 becomes the first socket's port for the rest
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], self.port, *addr[2:]))
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                for s in self.sockets:
                    s.close()
                self.sockets = []
                raise
            self.sockets.append(sock)
            self.port = sock.getsockname()[1]
        self.log.info("metrics server listening", url=f"http://{self.host}:{self.port}/metrics")

    async def serve(self) -> None:
        """Serve until cancelled."""
        assert self.sockets
        slots = asyncio.Semaphore(MAX_CONNECTIONS)  # shared by every listening socket
        try:
            async with asyncio.TaskGroup() as tg:
                for sock in self.sockets:
                    tg.create_task(self._accept(sock, slots, tg),
                                   name=f"http.accept[{sock.getsockname()[0]}]")
        finally:
            for sock in self.sockets:
                sock.close()

    async def _accept(self, sock: socket.socket, slots: asyncio.Semaphore,
                      tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()
            try:
                await self._wait_for_descriptors()
                conn, _addr = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE: the descriptors went elsewhere meanwhile
                slots.release()
                self.log.warning("metrics server cannot accept a connection now",
                                 error=str(exc))
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                slots.release()
                raise
            tg.create_task(self._connection(conn, slots), name="http.connection")

    async def _wait_for_descriptors(self) -> None:
        """Hold off accepting while only the reserve of descriptors is left."""
        while (spare := spare_descriptors()) is not None and spare < 1:
            if not self._short:
                self._short = True
                self.log.warning("few file descriptors left: the metrics server accepts no "
                                 "connections until some are free (the uplink and devices "
                                 "come first)")
            await asyncio.sleep(1.0)
        if self._short:
            self._short = False
            self.log.info("metrics server accepts connections again")

    async def _connection(self, conn: socket.socket, slots: asyncio.Semaphore) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_LINE)
        except OSError:
            conn.close()
            slots.release()
            return
        try:
            await self._handle(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                await writer.wait_closed()
            slots.release()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    method, target = await self._read_request(reader)
            except _TooLarge as exc:
                await self._refuse(reader, writer, exc.status)
                return
            status, ctype, body = self._route(method, target.split("?")[0])
            async with asyncio.timeout(REQUEST_TIMEOUT):
                writer.write(self._head(status, ctype, len(body))
                             + (body if method != "HEAD" else b""))
                await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
        """Method and target; raises `_TooLarge` past `MAX_LINE` or `MAX_HEADERS`."""
        try:
            request = await reader.readline()
        except ValueError:  # asyncio's limit: the line is longer than MAX_LINE
            raise _TooLarge("414 URI Too Long") from None
        for _ in range(MAX_HEADERS + 1):
            try:
                line = await reader.readline()
            except ValueError:
                raise _TooLarge("431 Request Header Fields Too Large") from None
            if line in (b"\r\n", b"\n", b""):
                break
        else:
            raise _TooLarge("431 Request Header Fields Too Large")
        parts = request.decode("latin-1").split()
        return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      status: str) -> None:
        """Answer `status`, then read and discard what the client still sends for a moment:
        closing with unread data would reset the connection and lose the answer."""
        body = f"{status.split(' ', 1)[1]}\n".encode()
        async with asyncio.timeout(REQUEST_TIMEOUT):
            writer.write(self._head(status, "text/plain", len(body)) + body)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError, ValueError):
            async with asyncio.timeout(1.0):
                discarded = 0
                while discarded < _LINGER_BYTES and (data := await reader.read(65536)):
                    discarded += len(data)

    @staticmethod
    def _head(status: str, ctype: str, length: int) -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()

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
