"""The uplink's reconnect policy (gateway/reconnect.py) against real sockets."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import structlog

from gateway.reconnect import STABLE_S, Reconnect, tcp_probe
from tests.support import free_port

LOG = structlog.get_logger()


async def _listen(port: int) -> asyncio.Server:
    return await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", port)


async def test_tcp_probe_tells_a_listener_from_a_closed_port() -> None:
    server = await _listen(0)
    port = server.sockets[0].getsockname()[1]
    assert await tcp_probe("127.0.0.1", port, 1.0)
    server.close()
    await server.wait_closed()
    assert not await tcp_probe("127.0.0.1", port, 1.0)
    assert not await tcp_probe("host.invalid", port, 1.0)  # no address: refused, no raise


def test_only_a_stable_session_resets_the_backoff_and_every_session_restarts_the_outage(
) -> None:
    r = Reconnect(cap=15.0, rng=random.Random(1))
    for _ in range(5):
        r.backoff.next_delay()
    assert not r.ended(None, 100.0)  # a failed attempt: the outage goes on
    assert r.backoff.attempts == 5
    assert not r.ended(95.0, 100.0)  # dropped 5 s after CONNACK: keeps its backoff
    assert r.backoff.attempts == 5
    assert r.down_since == 100.0
    assert r.ended(200.0 - STABLE_S, 200.0)
    assert r.backoff.attempts == 0
    assert r.down_since == 200.0
    assert 7.5 <= r.refused_credentials() <= 15.0  # bad credentials: at the cap at once


@pytest.mark.alone  # reconnect within 0.8 s
async def test_a_broker_that_comes_back_is_tried_at_once() -> None:
    """Gone for 3 s: probed every 0.25-0.51 s, tried within a probe interval of its return,
    with no handshake backoff on top (a full-jitter backoff would have reached 4 s)."""
    port = free_port()
    r = Reconnect(cap=15.0, rng=random.Random(2))
    r.down_since = time.monotonic()
    waiter = asyncio.create_task(r.wait([("127.0.0.1", free_port()), ("127.0.0.1", port)], LOG))
    await asyncio.sleep(3.0)
    assert not waiter.done()
    server = await _listen(port)
    back = time.monotonic()
    try:
        assert await asyncio.wait_for(waiter, 2.0) == 1  # the second broker of the list
        took = time.monotonic() - back
        assert took < 0.8, took
        assert r.backoff.attempts == 0
        assert r.probes >= 2 * 6  # both brokers, about every 0.4 s
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broker_that_never_went_away_gets_the_growing_backoff() -> None:
    """Accepting TCP at the first probe: the handshake failed on a broker that is up (busy,
    refusing), so each failure waits longer, with full jitter up to the cap."""
    server = await _listen(0)
    port = server.sockets[0].getsockname()[1]
    r = Reconnect(cap=15.0, rng=random.Random(3))
    try:
        for n in range(3):
            t0 = time.monotonic()
            assert await r.wait([("127.0.0.1", port)], LOG) == 0
            assert time.monotonic() - t0 <= 0.5 * 2**n + 0.2
            assert r.backoff.attempts == n + 1
    finally:
        server.close()
        await server.wait_closed()
