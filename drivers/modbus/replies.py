"""pymodbus's read replies, decoded in one call and described without their values.

pymodbus 3.16 decodes a read-registers reply with one `struct.unpack` per register, then
formats the whole reply, every value included, into a debug message whatever the log level
(`DecodePDU.decode` passes `str(pdu)` to `Log.debug`). At 100 meters x 100 registers
those two were a third of pymodbus's CPU per request (bench/modbus.py --profile). The
classes here decode the same bytes into the same `registers` with one `unpack_from`, and
their `str()` names the reply and its size only. Each `Bus` registers them with its client
through `client.register()`, pymodbus's public way to use one's own reply classes, so
other pymodbus users in the process (an emulator in a test) keep the stock ones.
"""

from __future__ import annotations

import struct

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

_WORDS = [struct.Struct(f">{n}H").unpack_from for n in range(128)]
"""Unpackers of n big-endian words by n: a reply's byte count is one byte, so n < 128."""


def decode_registers(data: bytes, function_code: int) -> list[int]:
    """The registers of a read reply's data (byte count, then the words), as pymodbus does.

    Like pymodbus, a byte count not below the data's length raises `ModbusIOException`,
    and an odd byte count yields its whole words (the last byte is not read).
    """
    byte_count = data[0]
    if byte_count >= len(data):
        raise ModbusIOException(f"byte_count {byte_count} > length of packet {len(data)}",
                                function_code=function_code)
    return list(_WORDS[byte_count // 2](data, 1))


def _describe(pdu: ModbusPDU, values: int) -> str:
    return (f"{type(pdu).__name__}(dev_id={pdu.dev_id}, transaction_id={pdu.transaction_id}, "
            f"{values} values)")


class HoldingRegisters(ReadHoldingRegistersResponse):
    """FC03 reply: `registers` from one unpack."""

    def decode(self, data: bytes) -> None:
        """Decode the reply's data (after the function code)."""
        self.registers = decode_registers(data, self.function_code)

    def __str__(self) -> str:
        return _describe(self, len(self.registers))


class InputRegisters(ReadInputRegistersResponse):
    """FC04 reply: `registers` from one unpack."""

    def decode(self, data: bytes) -> None:
        """Decode the reply's data (after the function code)."""
        self.registers = decode_registers(data, self.function_code)

    def __str__(self) -> str:
        return _describe(self, len(self.registers))


class Coils(ReadCoilsResponse):
    """FC01 reply, decoded by pymodbus; only its description is cheaper."""

    def __str__(self) -> str:
        return _describe(self, len(self.bits))


class DiscreteInputs(ReadDiscreteInputsResponse):
    """FC02 reply, decoded by pymodbus; only its description is cheaper."""

    def __str__(self) -> str:
        return _describe(self, len(self.bits))


REPLIES: tuple[type[ModbusPDU], ...] = (HoldingRegisters, InputRegisters, Coils,
                                        DiscreteInputs)
"""What a `Bus` registers with its pymodbus client."""
