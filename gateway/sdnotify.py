"""systemd notify protocol (sd_notify): READY, RELOADING, STOPPING, STATUS, WATCHDOG.

A few lines over an AF_UNIX datagram socket named by $NOTIFY_SOCKET (a path, or an abstract
name written `@name`); every call is a no-op returning False outside systemd, so the agent
never has to ask where it runs. Written here rather than taken from PyPI: `sdnotify` (last
release 2017) is blocking and has no watchdog helpers, and the protocol is one `sendto()`.
See systemd/README.md.

What `parkgate run` (gateway/agent.py) calls, in order:

    notifier = SystemdNotifier.from_env()              # once, at start-up
    notifier.status("opening buffer")                  # whenever the state changes
    tg.create_task(watchdog_loop(notifier), name="watchdog")   # pings FROM the event loop
    notifier.ready()                                   # config, buffer, metrics server up
    # SIGHUP:
    notifier.reloading(); ...; notifier.ready()        # also after a rejected reload
    # SIGTERM:
    notifier.stopping(); notifier.status("stopping: ...")

Optional: `extend_timeout(seconds)` before a slow start-up step (a long buffer integrity
check) so `TimeoutStartSec` does not kill a gateway that is making progress.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

STATUS_MAX = 200
"""Longest STATUS text sent; `systemctl status` shows one line anyway."""


class SystemdNotifier:
    """Sends notifications to systemd; silent (every method returns False) outside it."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """`address` as in $NOTIFY_SOCKET (`@name` for abstract); None disables."""
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace: leading NUL, no file
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop: if systemd's queue is full a ping is dropped,
            # which is what a stuck manager would do to a blocking sender anyway.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (os.environ by default)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and not address.startswith(("/", "@")):
            address = None  # vsock: and other transports are not ours to speak
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is for; a child that inherited the
        # variables must not ping on its parent's behalf.
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to talk to."""
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; False outside systemd or if it failed."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:  # manager gone, queue full (EAGAIN), socket not there
            return False
        return True

    def ready(self) -> bool:
        """READY=1: config, buffer and metrics server are up (also ends a reload)."""
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, which systemd >= 253 requires for reloads."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: an orderly shutdown has begun."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=...: the one line `systemctl status parkgate` shows."""
        line = " ".join(text.split())[:STATUS_MAX]
        return self.notify("STATUS=" + line)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for `seconds` more to finish starting or stopping."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None without a watchdog."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2e6

    def close(self) -> None:
        """Close the socket; later calls return False."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(notifier: SystemdNotifier) -> None:
    """Ping the watchdog from the event loop, so a blocked loop stops the pings.

    Without a watchdog it waits forever (cancel it like the other agent tasks).
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        await asyncio.Event().wait()
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
