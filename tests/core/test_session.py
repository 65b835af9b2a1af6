"""The MQTT session: the default client id, session takeover, and what a disconnect logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiomqtt.exceptions import MqttCodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.session import (
    MAX_CLIENT_ID,
    QuickLosses,
    default_client_id,
    disconnect_code,
    install_id_path,
    install_suffix,
    taken_over,
)
from tests.support import (
    GatewayProcess,
    Mosquitto,
    base_config,
    free_port,
    read_packet,
    scrape,
    wait_metric,
    write_config,
)

SIM = [{"name": "s", "driver": "sim", "interval": "100ms", "points": 5}]


# -- pure parts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "code", "over"), [
    (None, None, False),
    (ValueError("x"), None, False),
    (MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)), 0x8E, True),
    (MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")), 0x80, False),
    (MqttCodeError(7), 7, False),  # 3.1.1: paho's MQTT_ERR_CONN_LOST
    (MqttCodeError(0x8E), 0x8E, True),
])
def test_disconnect_classification(exc: BaseException | None, code: int | None,
                                   over: bool) -> None:
    assert disconnect_code(exc) == code
    assert taken_over(exc) is over


def test_quick_losses_suspect_every_third_in_a_row() -> None:
    q = QuickLosses()
    assert [q.lost(s, 10.0) for s in (1, 2, 3, 4, 5, 6)] == [False, False, True,
                                                             False, False, True]
    assert q.lost(30.0, 10.0) is False  # a session that lasted resets the streak
    assert [q.lost(1, 10.0) for _ in range(3)] == [False, False, True]


def test_default_client_id() -> None:
    assert default_client_id("lijia", "gw01", "0a1b2c3d") == "parkgate-lijia-gw01-0a1b2c3d"
    assert default_client_id("lijia", "gw01", None) == "parkgate-lijia-gw01"
    long_id = default_client_id("s" * 64, "g" * 64, "0a1b2c3d")
    assert len(long_id) <= MAX_CLIENT_ID and long_id.endswith("-0a1b2c3d")
    assert long_id != default_client_id("s" * 64, "h" * 64, "0a1b2c3d")


def test_install_suffix_is_stable_and_per_install(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "buffer.db", tmp_path / "b" / "buffer.db"
    a.parent.mkdir()
    b.parent.mkdir()
    first = install_suffix(a)
    assert first is not None and len(first) == 8
    assert install_suffix(a) == first  # a restart: the same session
    assert install_suffix(b) != first  # another install
    assert install_id_path(a).stat().st_mode & 0o777 == 0o600
    install_id_path(a).write_text("garbage\n")
    assert install_suffix(a) not in (None, first, "garbage")  # damaged: a new one, kept
    assert install_suffix(tmp_path / "missing" / "buffer.db") is None  # cannot write
    (tmp_path / "c").mkdir()
    install_id_path(tmp_path / "c" / "buffer.db").mkdir()  # unreadable: no crash
    assert install_suffix(tmp_path / "c" / "buffer.db") is None
    (tmp_path / "d").mkdir()
    install_id_path(tmp_path / "d" / "buffer.db").symlink_to("/dev/zero")
    assert install_suffix(tmp_path / "d" / "buffer.db") is None  # not followed, not read


# -- a broker that takes the session away ---------------------------------------------------------
class TakeoverBroker:
    """An MQTT 5 broker that accepts, acknowledges, and after `after` seconds disconnects
    the client with DISCONNECT 0x8E Session taken over, as a newer broker does when a
    second client connects with the same client id (Mosquitto 2.0.11 only closes)."""

    def __init__(self, after: float = 0.5) -> None:
        self.after = after
        self.port = free_port()
        self.connections = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self.loop).result(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        kick = self.loop.call_later(self.after, lambda: writer.write(b"\xe0\x01\x8e"))
        try:
            while True:
                head, body = await read_packet(reader)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    writer.write(b"\x20\x03\x00\x00\x00")
                elif kind == 3 and (head >> 1) & 3:  # PUBLISH, QoS 1
                    tlen = int.from_bytes(body[:2], "big")
                    writer.write(b"\x40\x02" + body[2 + tlen:4 + tlen])
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            kick.cancel()
            writer.close()
            self.handlers.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            # every handler ends here: one left to the garbage collector would warn later,
            # in whichever test runs then
            handlers = list(self.handlers)
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for p in procs:
        p.kill()


def _lines(gw: GatewayProcess) -> list[dict[str, object]]:
    out = []
    for line in gw.output().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_disconnect_0x8e_is_named_session_taken_over(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """Found: the log said only "connection lost" while two gateways fought over a session."""
    broker = TakeoverBroker()
    try:
        cfg = base_config(tmp_path, broker.port, SIM)
        cfg["uplink"]["mqtt"].update(client_id="cq-gw01", backoff_max="1s")
        gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
        gateways.append(gw)
        listen = cfg["metrics"]["listen"]
        wait_metric(listen, 'parkgate_uplink_session_takeovers_total{evidence="reason_code"}',
                    lambda v: v >= 2, 20)
        assert scrape(listen)['parkgate_uplink_connect_errors_total{reason="takeover"}'] >= 2
        named = [e for e in _lines(gw) if str(e["event"]).startswith("MQTT session taken over")]
        assert named and named[0]["client_id"] == "cq-gw01", gw.output()[-3000:]
        assert named[0]["level"] == "error"
        assert "never retrieved" not in gw.output()
    finally:
        broker.close()


def test_broker_disconnects_leave_no_unretrieved_future(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """Found: every broker disconnect logged "Future exception was never retrieved:
    MqttCodeError" (aiomqtt's disconnection future, which nobody awaited)."""
    broker = Mosquitto().start()
    try:
        cfg = base_config(tmp_path, broker.port, SIM)
        gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
        gateways.append(gw)
        listen = cfg["metrics"]["listen"]
        wait_metric(listen, "parkgate_uplink_connected", lambda v: v == 1)
        for n in range(2, 5):
            broker.restart()
            deadline = time.monotonic() + 20
            while gw.output().count('"uplink connected"') < n and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.output().count('"uplink connected"') == n, gw.output()[-3000:]
        time.sleep(1.0)  # asyncio reports an unretrieved future when it is collected
        assert gw.stop() == 0
        out = gw.output()
        assert "never retrieved" not in out, out[-3000:]
        assert "Traceback" not in out and "<traceback object" not in out
    finally:
        broker.close()
