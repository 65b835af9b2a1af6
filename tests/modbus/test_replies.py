"""Our read-reply classes decode exactly what pymodbus's own do, and a Bus uses them."""

from __future__ import annotations

import struct

import pytest
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.modbus.link import LinkSettings
from drivers.modbus.replies import (
    Coils,
    DiscreteInputs,
    HoldingRegisters,
    InputRegisters,
    decode_registers,
)
from drivers.modbus.transport import Bus

WORDS = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 2304, 0x1234]


def data_of(words: list[int]) -> bytes:
    return bytes([2 * len(words)]) + struct.pack(f">{len(words)}H", *words)


CASES = [
    pytest.param(data_of([]), id="no registers"),
    pytest.param(data_of([0x1234]), id="one"),
    pytest.param(data_of(WORDS), id="mixed"),
    pytest.param(data_of(list(range(0, 65536, 529))[:125]), id="125, the most one read asks"),
    pytest.param(data_of(WORDS) + b"\x00\x07", id="trailing bytes beyond the count"),
    pytest.param(bytes([3]) + b"\x12\x34\x56\x78", id="odd byte count: whole words only"),
]


@pytest.mark.parametrize("data", CASES)
@pytest.mark.parametrize(("ours", "theirs"), [
    (HoldingRegisters, ReadHoldingRegistersResponse),
    (InputRegisters, ReadInputRegistersResponse),
])
def test_registers_decode_as_pymodbus_does(data: bytes, ours: type, theirs: type) -> None:
    mine, stock = ours(), theirs()
    mine.decode(data)
    stock.decode(data)
    assert mine.registers == stock.registers
    assert type(mine.registers) is list


@pytest.mark.parametrize("data", [bytes([4, 0, 1, 0]), bytes([200]) + b"\0" * 10, b"\x02"])
def test_a_byte_count_beyond_the_data_is_refused_like_pymodbus(data: bytes) -> None:
    with pytest.raises(ModbusIOException):
        ReadHoldingRegistersResponse().decode(data)
    with pytest.raises(ModbusIOException, match="byte_count"):
        decode_registers(data, 3)


def test_descriptions_name_the_reply_not_every_value() -> None:
    reply = HoldingRegisters(dev_id=7, transaction_id=42)
    reply.decode(data_of(WORDS))
    assert str(reply) == "HoldingRegisters(dev_id=7, transaction_id=42, 7 values)"
    coils = Coils(dev_id=1)
    coils.decode(b"\x01\x05")
    stock = ReadCoilsResponse()
    stock.decode(b"\x01\x05")
    assert coils.bits == stock.bits
    assert str(coils) == "Coils(dev_id=1, transaction_id=0, 8 values)"


async def test_a_bus_client_decodes_replies_with_our_classes() -> None:
    # pins pymodbus internals: the client's decoder is where register() puts the classes
    bus = Bus(LinkSettings("tcp", "127.0.0.1", port=1))
    # MBAP (transaction 5, length 7, unit 1), FC03, 4 bytes: two registers
    frame = b"\x00\x05\x00\x00\x00\x07\x01\x03\x04\x12\x34\xff\xff"
    decoder = bus._client.ctx.framer.decoder
    for code, cls in [(3, HoldingRegisters), (4, InputRegisters), (1, Coils),
                      (2, DiscreteInputs)]:
        assert decoder.pdu_table[code][1] is cls
    used, pdu = bus._client.ctx.framer.handleFrame(frame, 1, 5)
    assert used == len(frame)
    assert isinstance(pdu, HoldingRegisters)
    assert pdu.registers == [0x1234, 0xFFFF]
    await bus.aclose()


async def test_pymodbus_awaits_replies_without_a_timeout_of_its_own() -> None:
    # pins pymodbus internals: its response timeout is comm_params.timeout_connect, given to
    # asyncio.wait_for, which awaits the future directly when it is None; the Bus bounds
    # every request with asyncio.timeout (the silent-unit tests)
    bus = Bus(LinkSettings("tcp", "127.0.0.1", port=1))
    assert bus._client.ctx.comm_params.timeout_connect is None
    await bus.aclose()
