"""Log output: library tracebacks rendered as text, repeated lines rate-limited."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import structlog

from gateway.logthrottle import LogThrottle, kind_of
from tests.support import ROOT


def _run(code: str) -> list[dict[str, object]]:
    """Run `code` after `logs.configure(fmt="json")` in a fresh process; its JSON lines."""
    script = "from gateway import logs\nlogs.configure('info', 'json')\n" + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_library_exception_keeps_its_traceback() -> None:
    """Found: `"exc_info": [..., "<traceback object at 0x...>"]` instead of the traceback."""
    lines = _run("""
        import logging
        def inner():
            raise ValueError("Invalid file descriptor: -1")
        try:
            inner()
        except ValueError:
            logging.getLogger("asyncio").error("Exception in callback", exc_info=True)
        try:
            inner()
        except ValueError:
            logs.get_logger(component="uplink").exception("ours")
    """)
    assert [e["event"] for e in lines] == ["Exception in callback", "ours"]
    for e in lines:
        text = str(e["exception"])
        assert text.startswith("Traceback (most recent call last):"), e
        assert "in inner" in text and "ValueError: Invalid file descriptor: -1" in text
        assert "exc_info" not in e and "<traceback object" not in json.dumps(e)


def test_a_flood_of_repeated_lines_is_cut_and_counted() -> None:
    """Found: 101k ERROR lines (34 MB) in 30 s from one repeating fault."""
    lines = _run("""
        import logging
        log = logging.getLogger("asyncio")
        for fd in range(5000):
            log.error("socket.accept() out of system resource\\nsocket: <fd=%d>", fd)
        ours = logs.get_logger(component="supervisor")
        for i in range(5000):
            ours.error("poll failed", device="m1", attempt=i)
        ours.error("poll failed", device="m2")  # another device is another kind
        logging.getLogger("paho").warning("something else")
    """)
    accept = [e for e in lines if str(e["event"]).startswith("socket.accept()")]
    polls = [e for e in lines if e["event"] == "poll failed"]
    assert len(accept) == 20 and len(polls) == 21, len(lines)
    assert polls[-1]["device"] == "m2"
    assert lines[-1]["event"] == "something else"


def test_throttle_reports_what_it_dropped_when_the_window_turns() -> None:
    now = [0.0]
    t = LogThrottle(burst=2, window=10.0, clock=lambda: now[0])
    k = kind_of("error", "asyncio", "accept failed on fd=12 at 0x7f00aa")
    assert kind_of("error", "asyncio", "accept failed on fd=99 at 0x7f1234") == k
    assert [t.admit(k) for _ in range(5)] == [0, 0, None, None, None]
    now[0] = 10.0
    assert t.admit(k) == 3  # the first line of the next window says how many went
    assert t.admit(k) == 0
    assert t.admit(kind_of("error", "asyncio", "other")) == 0


def test_throttle_as_a_structlog_processor() -> None:
    t = LogThrottle(burst=1, window=60.0)
    event = {"event": "x", "level": "error"}
    assert t.processor(None, "error", dict(event)) == event
    with pytest.raises(structlog.DropEvent):
        t.processor(None, "error", dict(event))
