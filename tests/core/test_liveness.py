"""/healthz is a liveness probe of the event loop: it fails while the loop is blocked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from gateway import health, logs
from gateway.health import Heartbeat, HttpServer
from gateway.metrics import Metrics


def probe(port: int, timeout: float) -> tuple[int, dict[str, Any]] | None:
    """GET /healthz like a liveness probe: (status, body), or None when nothing answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (TimeoutError, OSError):
        return None


async def test_healthz_fails_while_the_event_loop_is_blocked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop stuck in blocking code (a driver calling a blocking library) must look dead.

    During the block the probe gets no answer (a server answering from a thread would say
    200 here); right after it /healthz reports 503 with the lag it measured; a heartbeat
    later it is healthy again.
    """
    monkeypatch.setattr(health, "MAX_LAG", 1.0)  # 5 s in the agent; the rule is the same
    metrics = Metrics()
    beat = Heartbeat(metrics, period=0.1)
    server = HttpServer("127.0.0.1:0", metrics, beat, lambda: (True, {}), logs.get_logger())
    await server.start()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(beat.run(), name="heartbeat"),
                 tg.create_task(server.serve(), name="http")]
        await asyncio.sleep(0.3)
        before = await asyncio.to_thread(probe, server.port, 2.0)
        assert before is not None and before[0] == 200, before
        during: list[tuple[int, dict[str, Any]] | None] = []
        # the probe starts 0.2 s into the block and gives up after 0.5 s, as a liveness
        # probe with a timeout does
        prober = threading.Thread(target=lambda: (time.sleep(0.2),
                                                  during.append(probe(server.port, 0.5))))
        prober.start()
        time.sleep(1.5)  # the point: the event loop is blocked for 1.5 s
        prober.join()
        assert during == [None], f"/healthz answered while the event loop was blocked: {during}"
        after = await asyncio.to_thread(probe, server.port, 2.0)
        assert after is not None, "no answer once the loop runs again"
        assert after[0] == 503, after
        assert after[1]["loop_lag_seconds"] >= 1.0, after
        assert metrics.registry.get_sample_value("parkgate_event_loop_lag_seconds") >= 1.0
        await asyncio.sleep(0.3)
        again = await asyncio.to_thread(probe, server.port, 2.0)
        assert again is not None and again[0] == 200, again
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
