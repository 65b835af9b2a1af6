"""systemd notify protocol (sd_notify): READY, RELOADING, STOPPING, STATUS, WATCHDOG.

A few lines over an AF_UNIX datagram socket named by $NOTIFY_SOCKET; a no-op outside
systemd. The agent calls: `from_env()` once, `ready()` when config, buffer and metrics
server are up, `status(text)` on state changes, `reloading()`/`ready()` around SIGHUP,
`stopping()` on shutdown, and runs `watchdog_loop(notifier)` as a task so the ping comes
from the event loop itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time


class SystemdNotifier:
    """Sends notifications to systemd; silent when not started by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        usec: int | None = None
        pid = os.environ.get("WATCHDOG_PID")
        if os.environ.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(os.environ["WATCHDOG_USEC"])
            except ValueError:
                usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to talk to."""
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one datagram; False when not under systemd or the send failed."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        """READY=1: config, buffer and metrics server are up."""
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic timestamp systemd expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        """WATCHDOG=1."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None without a watchdog."""
        if not self.watchdog_usec or not self.enabled:
            return None
        return self.watchdog_usec / 2e6


async def watchdog_loop(notifier: SystemdNotifier) -> None:
    """Ping the watchdog from the event loop; a blocked loop stops the pings."""
    interval = notifier.watchdog_interval()
    if interval is None:
        await asyncio.Event().wait()  # nothing to do; stay alive as a named task
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
