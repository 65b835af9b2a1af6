"""The Sparkplug dialect in the real uplink (in-process, in-memory source, real Mosquitto):
DCMD reaches the inbound handler and decodes to a command request, the reply goes out as
NDATA in the session's seq order, device state goes as DDEATH/DBIRTH (not retained)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from gateway import logs
from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.uplink import Incoming, Uplink
from gateway.uplink.dialect import Request
from gateway.uplink.dialects.sparkplug import codec
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb
from gateway.uplink.dialects.sparkplug.dialect import SparkplugDialect
from tests.sparkplug_support import Host, check_seq_order
from tests.support import Mosquitto


def dcmd(point: str, value: float, sig: str | None) -> bytes:
    p = pb.Payload(timestamp=1_764_345_600_123, uuid=f"req-{point}-{value}")
    m = p.metrics.add()
    m.name, m.datatype, m.double_value = point, pb.Double, value
    if sig:
        codec.add_property(m.properties, "sig", codec.STRING, sig)
    return p.SerializeToString()


async def test_dcmd_reply_and_device_state_through_the_uplink(
        tmp_path: Path, shared_broker: Mosquitto) -> None:
    group = f"pg-{uuid.uuid4().hex[:10]}"
    cfg = MqttSection.model_validate({
        "brokers": [shared_broker.url], "client_id": f"pg-{group}",
        "batch": {"max_delay": "50ms"}, "dialect": "sparkplug",
        "sparkplug": {"group": group, "node": "n1"}})
    gw = GatewaySection(id="gw", site="s")
    dialect = SparkplugDialect(cfg, gw, tmp_path / "b.db")
    src = MemorySource()
    up = Uplink(cfg, gw, src, Metrics(), logs.get_logger(), drops=src,
                state_path=tmp_path / "b.db", dialect=dialect)
    requests: list[Request] = []

    async def handler(msg: Incoming) -> None:
        request = dialect.decode(msg)
        if request is None:
            return
        requests.append(request)
        status = "refused" if request.error else "ok"
        doc = {"v": 1, "id": request.document.get("id"), "status": status,
               "error": request.error}
        assert await up.send(dialect.reply(request, doc)) is None

    up.set_inbound(handler)
    host = await asyncio.to_thread(Host, shared_broker.port, group)

    async def scenario() -> None:
        src.store([Reading("plc", "setpoint", 20.0, 1_764_345_600_000, "C")])
        assert await asyncio.to_thread(host.wait, lambda h: len(h.of("DDATA")) == 1, 20)
        topic = f"spBv1.0/{group}/DCMD/n1/plc"
        await asyncio.to_thread(host.send, topic, dcmd("setpoint", 21.5, "c2ln"))
        await asyncio.to_thread(host.send, topic, dcmd("setpoint", 22.0, None))
        assert await asyncio.to_thread(host.wait, lambda h: len(h.of("NDATA")) == 2, 20)
        replies = [json.loads(m.payload.metrics[0].string_value) for m in host.of("NDATA")]
        assert [r["status"] for r in replies] == ["ok", "refused"]
        assert "allow_unsigned_dcmd" in replies[1]["error"]
        assert dict(requests[0].document) == {
            "v": 1, "id": "req-setpoint-21.5", "ts": 1_764_345_600_123, "device": "plc",
            "action": "write", "point": "setpoint", "value": 21.5, "sig": "c2ln"}

        up.set_retained_state("plc", dialect.device_state("plc", {"state": "down"}))
        assert await asyncio.to_thread(host.wait, lambda h: len(h.of("DDEATH")) == 1, 20)
        up.set_retained_state("plc", dialect.device_state("plc", {"state": "up"}))
        assert await asyncio.to_thread(host.wait, lambda h: len(h.of("DBIRTH")) == 2, 20)
        assert not any(m.retain for m in host.messages)
        assert [m.name for m in host.of("DBIRTH")[1].payload.metrics] == ["setpoint"]
        check_seq_order(host.messages)

    task = asyncio.create_task(up.run())
    try:
        await asyncio.wait_for(scenario(), 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        host.close()
