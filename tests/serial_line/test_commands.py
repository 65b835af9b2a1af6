"""Named command templates of a serial device, over a real pty."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from emulators.line_sensor import LineSensor, PtyPort
from pydantic import ValidationError

from drivers.serial_line import SerialDriver, SerialOptions
from drivers.serial_line.commands import parse_template, render
from gateway.errors import DeviceRejected, WriteRefused

COMMANDS = {
    "reset": {"send": "RST\r\n"},
    "set_rate": {"send": "RATE {value:d}\r\n", "expect": "^OK", "write": {"min": 1, "max": 60}},
    "set_offset": {"send": "OFS {value:+.1f}\r\n", "write": {"min": -5, "max": 5}},
    "mode": {"send": "MODE {value}\r\n", "write": {"values": ["AUTO", "MANUAL"]}},
}


def polled(port: PtyPort, **extra: Any) -> dict[str, Any]:
    return {"port": port.path, "mode": "poll", "command": "R\r\n", "interval": "50ms",
            "timeout": "500ms", "framing": {"terminator": "\r\n"},
            "parser": {"type": "kv"}, "commands": COMMANDS, **extra}


def answer(line: bytes) -> bytes | None:
    if line.startswith(b"RATE "):
        return b"OK" if int(line[5:]) <= 50 else b"ERR 3 out of range"
    return None


async def test_commands_are_sent_between_polls_and_replies_checked(
        port: PtyPort, make_driver: Callable[..., SerialDriver]) -> None:
    sensor = await LineSensor(port, command=b"R\r\n").start()
    sensor.responder = answer
    driver = make_driver(polled(port))
    got: list[Any] = []
    await driver.open()
    running = asyncio.create_task(driver.run(got.extend))
    try:
        assert set(driver.writable()) == set(COMMANDS)
        assert driver.writable()["set_rate"].max == 60
        assert driver.writable()["reset"].min is None
        await asyncio.sleep(0.15)
        assert await driver.write("set_rate", 30) is None
        assert await driver.write("set_rate", 12.0) is None
        with pytest.raises(DeviceRejected, match="the device answered 'ERR 3 out of range'"):
            await driver.write("set_rate", 55)
        assert await driver.write("set_offset", -1.25) is None
        assert await driver.write("mode", "AUTO") is None
        assert await driver.write("reset", None) is None
        await asyncio.sleep(0.15)
        assert not running.done()  # polling went on around the commands
        sent = [line for line in sensor.received if line != b"R"]
        assert sent == [b"RATE 30", b"RATE 12", b"RATE 55", b"OFS -1.2", b"MODE AUTO", b"RST"]
        assert sensor.commands >= 4
        assert {r.metric for r in got} == {"T", "H"}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await driver.close()
        await sensor.stop()


@pytest.mark.parametrize(("command", "value", "words"), [
    ("set_rate", 5.5, "takes a whole number"),
    ("set_rate", "5\r\nRST", "takes a number"),
    ("set_rate", True, "takes a number"),
    ("set_offset", float("nan"), "takes a number"),
    ("mode", "AUTO\r\nRST", "would put control, non-ASCII or framing characters"),
    ("mode", "AUTO\nX", "would put control"),
    ("mode", "MANU\u00c5L", "would put control, non-ASCII"),
    ("mode", None, "takes a value"),
    ("nonesuch", 1, "has no such command"),
])
async def test_values_that_cannot_be_sent_safely_are_refused_before_the_port(
        port: PtyPort, make_driver: Callable[..., SerialDriver], command: str, value: Any,
        words: str) -> None:
    sensor = await LineSensor(port, command=b"R\r\n").start()
    driver = make_driver(polled(port))
    await driver.open()
    try:
        with pytest.raises(WriteRefused, match=words):
            await driver.write(command, value)
        await asyncio.sleep(0.05)
        assert sensor.received == []
    finally:
        await driver.close()
        await sensor.stop()


async def test_a_stream_device_takes_commands_without_a_reply(
        port: PtyPort, make_driver: Callable[..., SerialDriver]) -> None:
    sensor = await LineSensor(port, period=0.05).start()
    driver = make_driver({"port": port.path, "parser": {"type": "kv"},
                          "framing": {"terminator": "\r\n"},
                          "commands": {"reset": {"send": "RST\r\n"}}})
    await driver.open()
    try:
        await driver.write("reset", None)
        for _ in range(50):
            if sensor.received:
                break
            await asyncio.sleep(0.01)
        assert sensor.received == [b"RST"]
    finally:
        await driver.close()
        await sensor.stop()


def test_the_framing_terminator_is_refused_in_a_value_even_if_printable() -> None:
    t = parse_template("SET {value};")
    assert render("x", t, "A-1", b";") == b"SET A-1;"
    with pytest.raises(WriteRefused, match="framing characters"):
        render("x", t, "A;B", b";")


@pytest.mark.parametrize(("cmd", "loc", "words"), [
    ({"send": "X {value.__class__}"}, ("commands", "x", "send"), "bad placeholder"),
    ({"send": "X {value[0]}"}, ("commands", "x", "send"), "bad placeholder"),
    ({"send": "X {value!r}", "write": {"max": 1}}, ("commands", "x", "send"), "bad placeholder"),
    ({"send": "X {other}"}, ("commands", "x", "send"), "bad placeholder"),
    ({"send": "X {value} {value}"}, ("commands", "x", "send"), "one {value} placeholder"),
    ({"send": "X {value:{w}}"}, ("commands", "x", "send"), "bad placeholder"),
    ({"send": "X {"}, ("commands", "x", "send"), "bad template"),
    ({"send": "X {value:d}"}, ("commands", "x"), "needs `write:` with min/max or values"),
    ({"send": "X {value:d}", "write": {"verify": False}}, ("commands", "x"),
     "needs `write:` with min/max"),
    ({"send": "X", "expect": "(["}, ("commands", "x", "expect"), "not a valid regular"),
])
def test_unsafe_or_unbounded_templates_are_config_errors(cmd: dict[str, Any],
                                                         loc: tuple[str, ...],
                                                         words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SerialOptions.model_validate({"name": "s", "driver": "serial", "port": "/dev/x",
                                      "parser": {"type": "kv"}, "commands": {"x": cmd}})
    errors = caught.value.errors()
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_expect_in_stream_mode_is_an_error_at_its_key() -> None:
    with pytest.raises(ValidationError) as caught:
        SerialOptions.model_validate({"name": "s", "driver": "serial", "port": "/dev/x",
                                      "parser": {"type": "kv"},
                                      "commands": {"go": {"send": "GO\r\n", "expect": "OK"}}})
    (err,) = caught.value.errors()
    assert err["loc"] == ("commands", "go", "expect")
    assert "needs mode: poll" in err["msg"]
