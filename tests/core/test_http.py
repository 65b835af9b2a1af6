"""The metrics HTTP server in-process: the connection cap, every address of a name, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog

from gateway.health import MAX_CONNECTIONS, Heartbeat, HttpServer
from gateway.metrics import Metrics


def _server(listen: str) -> HttpServer:
    metrics = Metrics()
    return HttpServer(listen, metrics, Heartbeat(metrics), lambda: (True, {}),
                      structlog.get_logger())


async def _get(host: str, port: int, path: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_at_most_max_connections_are_served_at_once() -> None:
    server = _server("127.0.0.1:0")
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        idle = [await asyncio.open_connection("127.0.0.1", server.port)
                for _ in range(MAX_CONNECTIONS + 6)]
        await asyncio.sleep(0.3)
        # the server holds MAX_CONNECTIONS of them; the rest wait in the kernel's queue
        served = sum(1 for t in asyncio.all_tasks() if t.get_name() == "http.connection")
        assert served == MAX_CONNECTIONS
        # a request behind the idle ones is answered once they go
        late = asyncio.create_task(_get("127.0.0.1", server.port))
        await asyncio.sleep(0.3)
        assert not late.done()
        for _r, w in idle:
            w.close()
        assert (await asyncio.wait_for(late, 10)).startswith(b"HTTP/1.1 200 OK")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_address_of_a_name_is_served() -> None:
    server = _server("localhost:0")
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        families = {s.family for s in server.sockets}
        if socket.has_ipv6 and len(families) == 2:
            assert (await _get("::1", server.port)).startswith(b"HTTP/1.1 200")
        assert (await _get("127.0.0.1", server.port)).startswith(b"HTTP/1.1 200")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert all(s.fileno() == -1 for s in server.sockets)  # closed on cancel
